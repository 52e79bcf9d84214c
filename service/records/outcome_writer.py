"""The log of valid outcomes, kept for retraining: a `RecordLog` of kind "outcomes".

    Scorer.report_outcome → OutcomeLogWriter.on_outcome (an `OutcomeListener`): a tuple
      queued, nothing else
    → the log's writer thread: one `OutcomeLine` an outcome, as JSON lines in "outcomes"
      segments

What a line holds, its fields' names and the segments' names are `service.records.schema`'s
(`OutcomeLine`, `OUTCOME_SCHEMA`), which training's reader reads by too. Outcomes carry no
card data, so none reaches these files. Segments, rotation, retention and what happens when
the disk fails are `service.records.segment_log`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from service.core.callers import current_caller
from service.core.domain import Outcome
from service.records.schema import OutcomeLine, iso_utc
from service.records.segment_log import DEFAULT_LIMITS, FLUSH_SECONDS, LogLimits, RecordLog

# transaction_id, is_fraud, reported_at and received_at in Unix seconds, the caller.
_Outcome = tuple[str, bool, float, float, str]


class OutcomeLogWriter(RecordLog[_Outcome]):
    """Durable JSON-lines log of valid outcomes, written by its own daemon thread."""

    def __init__(
        self,
        directory: Path,
        limits: LogLimits = DEFAULT_LIMITS,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Log into `directory` (created when first written to) within `limits`, writing
        every `flush_seconds`; `clock` gives the wall time."""
        super().__init__(
            directory, "outcomes", _encode, limits, flush_seconds=flush_seconds, clock=clock
        )

    def record(
        self, transaction_id: str, is_fraud: bool, reported_at: float, caller: str = ""
    ) -> None:
        """Queue one valid outcome (`reported_at` in Unix seconds) reported by `caller`;
        never blocks or raises."""
        self.append((transaction_id, is_fraud, reported_at, self._clock(), caller))

    def on_outcome(self, outcome: Outcome, applied: bool) -> None:
        """Log every valid outcome (`service.core.ports.OutcomeListener`), `applied` to the
        feature state or not: a retrain labels transactions this process no longer holds,
        or never scored (another worker did, or the server before a restart). The line names
        the caller of the call being served (`service.core.callers`)."""
        self.record(outcome.transaction_id, outcome.is_fraud, outcome.reported_at, current_caller())


def _encode(outcomes: Sequence[_Outcome], _written_at: float) -> bytes:
    return b"".join(orjson.dumps(_line(*outcome)) + b"\n" for outcome in outcomes)


def _line(
    transaction_id: str, is_fraud: bool, reported_at: float, received_at: float, caller: str
) -> OutcomeLine:
    return {
        "transaction_id": transaction_id,
        "is_fraud": is_fraud,
        "reported_at": iso_utc(reported_at),
        "received_at": iso_utc(received_at),
        "caller": caller,
    }
