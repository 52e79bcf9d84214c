"""What one load-client process saw, counted once its run is over.

Latency is recorded for `Score` answers only (OK status), from each call's due time; every
call's final status is counted by gRPC status code name, `Score` and `ReportOutcome`
apart. UNANSWERED is the client's own: a stream message never answered, because the stream
ended first or the run's drain time ran out. (CANCELLED comes from gRPC: a server that
gives up on a call past its deadline resets it, and the client may see that before its
own DEADLINE_EXCEEDED.)
"""

from __future__ import annotations

from collections import Counter

from benchmarks.load.histograms import LatencyRecorder
from service.grpc_api._proto.fraud.v1 import scoring_pb2

OK = "OK"
UNANSWERED = "UNANSWERED"
_DECISIONS = {
    number: name.removeprefix("DECISION_") for name, number in scoring_pb2.Decision.items()
}


class Tally:
    """Counts and latencies of one client process; `start` is the run's `perf_counter()` zero."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.latency = LatencyRecorder()
        self.statuses: Counter[str] = Counter()
        self.outcome_statuses: Counter[str] = Counter()
        self.decisions: Counter[str] = Counter()
        self.fallbacks = 0
        self.last_answer = 0.0

    def score_answered(
        self, response: scoring_pb2.ScoreResponse, due: float, answered: float
    ) -> None:
        """A `Score` answer for the call due at `due` came at `answered` (both
        `perf_counter()` values)."""
        self.answer_timed(due, answered)
        self.decisions[_DECISIONS.get(response.decision, str(response.decision))] += 1
        self.fallbacks += response.decision_source == scoring_pb2.DECISION_SOURCE_FALLBACK

    def answer_timed(self, due: float, answered: float) -> None:
        """An OK answer for the call due at `due` came at `answered`, not read: a peer
        server's, which has no decision to count."""
        at = answered - self.start
        self.latency.record(answered - due, at)
        self.last_answer = max(self.last_answer, at)
        self.statuses[OK] += 1

    def score_failed(self, code: str) -> None:
        """A `Score` call ended with status `code`."""
        self.statuses[code] += 1

    def outcome_done(self, code: str) -> None:
        """A `ReportOutcome` call ended with status `code` (OK included)."""
        self.outcome_statuses[code] += 1
