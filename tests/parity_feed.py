"""A history fed to a scoring server the way a backend feeds it, for the serving-parity
tests: transactions in time order, each fraud label reported through ReportOutcome once it
becomes known (one label delay after its transaction, as `fraud-train evaluate` replays it).

Two ways to reach the server: one long ScoreStream (`OneStream`), or several connections
taking the calls in turn (`RotatingChannels`), as a pool of clients spreads its calls over
the worker processes sharing a port, each batch of transactions sent over a ScoreStream of
its own or as one ScoreBatch call, in turn. And a crash as a client lives it: a server killed with
a call in flight (`kill_while_scoring`), whose transactions are then sent again
(`retry_one_by_one`).
"""

from __future__ import annotations

import csv
import itertools
import queue
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, Self

import grpc

from benchmarks.load.history_requests import request_from_row
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_outcome_request
from tests.server_process import ServerProcess

CALL_TIMEOUT = 60.0  # generous: the machine is shared; no check relies on it running out
STREAM_TIMEOUT = 300.0
# Without it, channels to one target share one connection (grpc's global subchannel pool),
# and every call would reach the same worker.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


@dataclass
class Batch:
    """Transactions sent together, after the outcomes that became known before the first."""

    outcomes: list[scoring_pb2.OutcomeRequest] = field(default_factory=list)
    requests: list[scoring_pb2.ScoreRequest] = field(default_factory=list)


class Link(Protocol):
    """A client's way to one server: each call returns once the server has answered."""

    def report(self, outcome: scoring_pb2.OutcomeRequest) -> None: ...

    def score(
        self, requests: Sequence[scoring_pb2.ScoreRequest]
    ) -> list[scoring_pb2.ScoreResponse]: ...


def history_rows(history: Path) -> list[dict[str, str]]:
    with history.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def batches(rows: Iterable[dict[str, str]], label_delay: timedelta) -> Iterator[Batch]:
    """The history in (timestamp, transaction_id) order, cut wherever a fraud label becomes
    known: at or before a transaction's event time, it is reported before that transaction."""
    unknown: deque[tuple[datetime, str]] = deque()  # (reported_at, transaction_id), in order
    batch = Batch()
    for row in sorted(rows, key=_history_order):
        when = datetime.fromisoformat(row["timestamp"])
        known = []
        while unknown and unknown[0][0] <= when:
            reported_at, transaction_id = unknown.popleft()
            known.append(build_outcome_request(transaction_id, True, reported_at))
        if known and batch.requests:
            yield batch
            batch = Batch()
        batch.outcomes += known
        batch.requests.append(request_from_row(row))
        if row["is_fraud"] == "1":
            unknown.append((when + label_delay, row["transaction_id"]))
    yield batch


def split(whole: Iterable[Batch], size: int) -> Iterator[Batch]:
    """`whole` cut into batches of at most `size` transactions: the outcomes of each go
    with its first piece, so they still precede exactly the same transactions."""
    for batch in whole:
        for start in range(0, len(batch.requests), size):
            outcomes = batch.outcomes if start == 0 else []
            yield Batch(outcomes, batch.requests[start : start + size])


def feed(link: Link, fed: Iterable[Batch]) -> dict[str, float]:
    """Model scores by transaction id; each batch's outcomes are reported, then its
    transactions answered, before the next batch is sent."""
    scores: dict[str, float] = {}
    for batch in fed:
        for outcome in batch.outcomes:
            link.report(outcome)
        scores |= model_scores(link.score(batch.requests))
    return scores


def model_scores(responses: Iterable[scoring_pb2.ScoreResponse]) -> dict[str, float]:
    """Scores by transaction id; fails on a fallback answer, which would prove nothing."""
    scores: dict[str, float] = {}
    for response in responses:
        assert response.decision_source == scoring_pb2.DECISION_SOURCE_MODEL, (
            f"{response.transaction_id}: fallback {response.fallback_reason!r}"
        )
        scores[response.transaction_id] = response.score
    return scores


class OneStream:
    """One channel and one ScoreStream for every transaction; outcomes on the same channel."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = scoring_pb2_grpc.FraudScoringStub(self._channel)
        self._pending: queue.Queue[scoring_pb2.ScoreRequest | None] = queue.Queue()
        self._responses = self._stub.ScoreStream(
            iter(self._pending.get, None), timeout=STREAM_TIMEOUT
        )

    def report(self, outcome: scoring_pb2.OutcomeRequest) -> None:
        self._stub.ReportOutcome(outcome, timeout=CALL_TIMEOUT)  # raises unless OK

    def score(
        self, requests: Sequence[scoring_pb2.ScoreRequest]
    ) -> list[scoring_pb2.ScoreResponse]:
        for request in requests:
            self._pending.put(request)
        return [next(self._responses) for _ in requests]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self._pending.put(None)
        self._channel.close()


class RotatingChannels:
    """`count` channels to `target`, each with a connection of its own; every call goes
    over the next one, each batch a ScoreStream of its own and a ScoreBatch call in turn
    (`calls` counts each)."""

    def __init__(self, target: str, count: int) -> None:
        self._channels = [
            grpc.insecure_channel(target, options=[OWN_CONNECTION]) for _ in range(count)
        ]
        stubs = [scoring_pb2_grpc.FraudScoringStub(channel) for channel in self._channels]
        self._stubs = itertools.cycle(stubs)
        self._rpcs = itertools.cycle(("ScoreStream", "ScoreBatch"))
        self.calls: Counter[str] = Counter()

    def next_stub(self) -> scoring_pb2_grpc.FraudScoringStub:
        return next(self._stubs)

    def report(self, outcome: scoring_pb2.OutcomeRequest) -> None:
        self.next_stub().ReportOutcome(outcome, timeout=CALL_TIMEOUT)  # raises unless OK

    def score(
        self, requests: Sequence[scoring_pb2.ScoreRequest]
    ) -> list[scoring_pb2.ScoreResponse]:
        rpc = next(self._rpcs)
        self.calls[rpc] += 1
        stub = self.next_stub()
        if rpc == "ScoreBatch":
            batch = scoring_pb2.ScoreBatchRequest(transactions=requests)
            return list(stub.ScoreBatch(batch, timeout=CALL_TIMEOUT).results)
        return list(stub.ScoreStream(iter(requests), timeout=CALL_TIMEOUT))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        for channel in self._channels:
            channel.close()


def kill_while_scoring(
    server: ServerProcess,
    stub: scoring_pb2_grpc.FraudScoringStub,
    requests: Sequence[scoring_pb2.ScoreRequest],
) -> list[scoring_pb2.ScoreResponse]:
    """Send `requests` in one ScoreStream, all at once, and SIGKILL `server` as soon as
    the first is answered; the answers that arrived before it died.

    The server works through a stream's transactions one by one: by then the next few may
    be answered, counted but not yet answered, or not yet counted."""
    answers: list[scoring_pb2.ScoreResponse] = []
    failures: list[grpc.RpcError] = []
    first_answered = threading.Event()

    def call() -> None:
        try:
            for response in stub.ScoreStream(iter(requests), timeout=CALL_TIMEOUT):
                answers.append(response)
                first_answered.set()
        except grpc.RpcError as error:  # the server died under the call
            failures.append(error)
        finally:
            first_answered.set()  # or there is none to wait for

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert first_answered.wait(timeout=CALL_TIMEOUT), "the first transaction got no answer"
    server.kill()
    caller.join(timeout=CALL_TIMEOUT)
    assert not caller.is_alive(), "the call outlived its server"
    assert all(_code(error) is grpc.StatusCode.UNAVAILABLE for error in failures), failures
    return answers


def retry_one_by_one(
    link: RotatingChannels, requests: Sequence[scoring_pb2.ScoreRequest]
) -> list[scoring_pb2.ScoreResponse]:
    """Each of `requests` sent again, alone, as a client retries a failed call; the model's
    answers.

    A transaction counted but never answered (killed in between) gets the fallback answer
    "state_unavailable": left out, since it says nothing of the features. Any other
    fallback, or an error, fails."""
    answers = []
    for request in requests:
        answer = link.next_stub().Score(request, timeout=CALL_TIMEOUT)
        if answer.decision_source == scoring_pb2.DECISION_SOURCE_FALLBACK:
            assert answer.fallback_reason == "state_unavailable", answer
            continue
        answers.append(answer)
    return answers


def _history_order(row: dict[str, str]) -> tuple[datetime, str]:
    return datetime.fromisoformat(row["timestamp"]), row["transaction_id"]


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.Call) else None
