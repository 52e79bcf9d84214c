"""The traffic a run sends: card swipes from a simulated history, in time order, over all
its cards and terminals, with outcome reports mixed in.

The history is the CSV `fraud-train simulate` writes (columns as in
`benchmarks.load.history_requests`). Each row becomes a `Score` call; a share of the rows
labelled fraud (`is_fraud` 1) also become a `ReportOutcome` call, `lag` calls after the
swipe, reported at the event time the history has reached by then, as a chargeback
arriving while the card keeps being used would be.

Transaction ids get a run-id prefix (`<run id>-<id>`): the server answers an id it has
already scored from memory, without scoring it again, so two runs against one server
must not share ids. Calls are serialized once here, so that the load clients (often in
other processes) send bytes without building messages on the hot path.
"""

from __future__ import annotations

import csv
import itertools
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.load.history_requests import request_from_row
from benchmarks.load.settings import NO_OUTCOMES as NO_OUTCOMES
from benchmarks.load.settings import OutcomeMix as OutcomeMix
from service.grpc_api._proto.fraud.v1 import scoring_pb2


class CallKind(IntEnum):
    """Which RPC a call is for."""

    SCORE = 0
    OUTCOME = 1
    BATCH = 2  # ScoreBatch: several swipes (`benchmarks.load.batches`)


class Call(NamedTuple):
    """One call of a run: its RPC, its serialized request and the transactions it scores."""

    kind: CallKind
    payload: bytes
    transactions: int = 1


@dataclass(frozen=True)
class History:
    """Score requests for consecutive history rows (ids unprefixed) and their fraud labels."""

    requests: list[scoring_pb2.ScoreRequest]
    is_fraud: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.requests)


def new_run_id() -> str:
    """A fresh random run id, short enough to leave room for the transaction id."""
    return secrets.token_hex(4)


def load_history(path: Path, count: int, skip: int = 0) -> History:
    """Requests for rows `skip` to `skip + count` of the CSV history at `path`.

    ValueError if the file holds fewer rows, or a row cannot become a request.
    """
    requests: list[scoring_pb2.ScoreRequest] = []
    labels: list[bool] = []
    with path.open(newline="") as file:
        for row in itertools.islice(csv.DictReader(file), skip, skip + count):
            requests.append(request_from_row(row))
            labels.append(row["is_fraud"] == "1")
    if len(requests) < count:
        raise ValueError(f"{path} has {skip + len(requests)} rows, the run needs {skip + count}")
    return History(requests, np.array(labels, dtype=np.bool_))


def build_calls(
    history: History, run_id: str, mix: OutcomeMix, start: int = 0, count: int | None = None
) -> list[Call]:
    """The calls for history rows `start` to `start + count` (all the rest by default):
    one `Score` per row, in order, and the outcome reports `mix` asks for after their swipe.
    """
    stop = len(history) if count is None else start + count
    if not 0 <= start <= stop <= len(history):
        raise ValueError(f"rows {start} to {stop} are not in a history of {len(history)}")
    reports = _reports_by_position(history, start, stop, mix)
    calls: list[Call] = []
    for position in range(start, stop):
        request = history.requests[position]
        calls.append(Call(CallKind.SCORE, _prefixed(request, run_id).SerializeToString()))
        for reported in reports.get(position, ()):
            outcome = _outcome(history.requests[reported], run_id, request.transaction.timestamp)
            calls.append(Call(CallKind.OUTCOME, outcome.SerializeToString()))
    return calls


def _reports_by_position(
    history: History, start: int, stop: int, mix: OutcomeMix
) -> dict[int, list[int]]:
    """For each row position, the fraud rows whose outcome is reported right after it."""
    frauds = start + np.flatnonzero(history.is_fraud[start:stop])
    chosen = frauds[np.random.default_rng(mix.seed).random(frauds.size) < mix.share]
    reports: dict[int, list[int]] = {}
    for fraud in chosen[chosen + mix.lag < stop].tolist():
        reports.setdefault(fraud + mix.lag, []).append(fraud)
    return reports


def _prefixed(request: scoring_pb2.ScoreRequest, run_id: str) -> scoring_pb2.ScoreRequest:
    copy = scoring_pb2.ScoreRequest()
    copy.CopyFrom(request)
    copy.transaction.transaction_id = f"{run_id}-{request.transaction.transaction_id}"
    return copy


def _outcome(
    request: scoring_pb2.ScoreRequest, run_id: str, reported_at: Timestamp
) -> scoring_pb2.OutcomeRequest:
    outcome = scoring_pb2.OutcomeRequest(
        transaction_id=f"{run_id}-{request.transaction.transaction_id}", is_fraud=True
    )
    outcome.reported_at.CopyFrom(reported_at)
    return outcome
