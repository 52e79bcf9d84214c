"""A simulated history sent to a real server as a card-reader backend would: swipes in time
order on `ScoreStream`, and each fraud reported through `ReportOutcome` once the traffic's
clock has passed its report time (event time plus the label delay), as a chargeback
arrives days after the purchase.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import grpc
import pandas as pd

from benchmarks.load.history_requests import request_from_row
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_outcome_request

CALL_TIMEOUT = 60.0
CHUNK = 256  # swipes per ScoreStream call: every answer is back before outcomes are sent


@dataclass
class Answers:
    """What the server answered, keyed by transaction id."""

    scores: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    outcomes_sent: int = 0


@dataclass(order=True)
class _DueOutcome:
    reported_at: datetime
    transaction_id: str = field(compare=False)


class TrafficReplay:
    """Sends a history's rows to one server, keeping the outcomes not yet due between calls."""

    def __init__(self, target: str, label_delay: timedelta) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = scoring_pb2_grpc.FraudScoringStub(self._channel)
        self._label_delay = label_delay
        self._due: list[_DueOutcome] = []

    def send(self, rows: pd.DataFrame) -> Answers:
        """Score `rows` (the history file's text columns, time-sorted) and report their frauds."""
        answers = Answers()
        records = [
            {str(column): str(value) for column, value in record.items()}
            for record in rows.to_dict("records")
        ]
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            answers.outcomes_sent += self._report_due(datetime.fromisoformat(chunk[0]["timestamp"]))
            for response in self._stub.ScoreStream(_requests(chunk), timeout=CALL_TIMEOUT):
                answers.scores[response.transaction_id] = response.score
                answers.versions[response.transaction_id] = response.model_version
            for row in chunk:
                if row["is_fraud"] == "1":
                    moment = datetime.fromisoformat(row["timestamp"]) + self._label_delay
                    heapq.heappush(self._due, _DueOutcome(moment, row["transaction_id"]))
        return answers

    def close(self) -> None:
        self._channel.close()

    def _report_due(self, now: datetime) -> int:
        sent = 0
        while self._due and self._due[0].reported_at <= now:
            due = heapq.heappop(self._due)
            request = build_outcome_request(due.transaction_id, True, due.reported_at)
            self._stub.ReportOutcome(request, timeout=CALL_TIMEOUT)
            sent += 1
        return sent


def _requests(rows: Sequence[dict[str, str]]) -> Iterator[scoring_pb2.ScoreRequest]:
    for row in rows:
        yield request_from_row(row)
