"""The log of valid outcomes, kept for retraining: a `RecordLog` of kind "outcomes".

    Scorer.report_outcome → OutcomeLog.record: a tuple queued, nothing else
    → the log's writer thread: JSON lines in `outcomes-<opened at>-<pid>-<seq>.jsonl`

Each line is one JSON object: `transaction_id`, `is_fraud`, `reported_at` (as the caller
reported it) and `received_at` (when the server accepted it), both ISO 8601 in UTC with
microseconds. Outcomes carry no card data, so none reaches these files. Segments, rotation,
retention and what happens when the disk fails are `service.records.segment_log`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from service.records.segment_log import DEFAULT_LIMITS, FLUSH_SECONDS, LogLimits, RecordLog, iso_utc

# transaction_id, is_fraud, reported_at and received_at in Unix seconds.
_Outcome = tuple[str, bool, float, float]


class OutcomeLog(RecordLog[_Outcome]):
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

    def record(self, transaction_id: str, is_fraud: bool, reported_at: float) -> None:
        """Queue one valid outcome (`reported_at` in Unix seconds); never blocks or raises."""
        self.append((transaction_id, is_fraud, reported_at, self._clock()))


def _encode(outcomes: Sequence[_Outcome], _written_at: float) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "transaction_id": transaction_id,
                "is_fraud": is_fraud,
                "reported_at": iso_utc(reported_at),
                "received_at": iso_utc(received_at),
            }
        )
        + b"\n"
        for transaction_id, is_fraud, reported_at, received_at in outcomes
    )
