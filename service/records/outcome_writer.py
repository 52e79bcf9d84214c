"""The log of valid outcomes of transactions the feature state holds, kept for retraining: a
`RecordLog` of kind "outcomes".

    Scorer.report_outcome → OutcomeLogWriter.on_outcome (an `OutcomeListener`): a tuple
      queued, nothing else, when the state holds the transaction (`OutcomeFate.held`)
    → the log's writer thread: one `OutcomeLine` an outcome, as JSON lines in "outcomes"
      segments

What a line holds, its fields' names and the segments' names are `service.records.schema`'s
(`OutcomeLine`, `OUTCOME_SCHEMA`), which training's reader reads by too. Outcomes carry no
card data, so none reaches these files. Segments, rotation, retention and what happens when
the disk fails are `service.records.segment_log`'s.

Only outcomes of held transactions come here, every report of one kept beside the others
(a reversal too, whether it changed the label or not), each with its caller and the
caller's rank. An outcome of a transaction the state does not hold goes to the quarantine
(`service.records.quarantine_writer`), whose budget is its own: made-up ids, however many,
never make this log's retention delete a genuine outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from service.core.callers import current_caller
from service.core.domain import Outcome, OutcomeFate
from service.records.schema import OutcomeLine, iso_utc
from service.records.segment_log import DEFAULT_LIMITS, FLUSH_SECONDS, LogLimits, RecordLog

# transaction_id, is_fraud, reported_at and received_at in Unix seconds, the caller and
# its rank.
_Outcome = tuple[str, bool, float, float, str, int]


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
        self,
        transaction_id: str,
        is_fraud: bool,
        reported_at: float,
        caller: str = "",
        caller_rank: int = 0,
    ) -> None:
        """Queue one valid outcome (`reported_at` in Unix seconds) reported by `caller` of
        rank `caller_rank`; never blocks or raises."""
        self.append((transaction_id, is_fraud, reported_at, self._clock(), caller, caller_rank))

    def on_outcome(self, outcome: Outcome, fate: OutcomeFate, rank: int) -> None:
        """Log every valid outcome of a transaction the feature state holds
        (`service.core.ports.OutcomeListener`), whatever it did to the label. The line
        names the caller of the call being served (`service.core.callers`) and its rank."""
        if fate.held:
            self.record(
                outcome.transaction_id,
                outcome.is_fraud,
                outcome.reported_at,
                current_caller(),
                rank,
            )


def _encode(outcomes: Sequence[_Outcome], _written_at: float) -> bytes:
    return b"".join(orjson.dumps(outcome_line(*outcome)) + b"\n" for outcome in outcomes)


def outcome_line(
    transaction_id: str,
    is_fraud: bool,
    reported_at: float,
    received_at: float,
    caller: str,
    caller_rank: int,
) -> OutcomeLine:
    return {
        "transaction_id": transaction_id,
        "is_fraud": is_fraud,
        "reported_at": iso_utc(reported_at),
        "received_at": iso_utc(received_at),
        "caller": caller,
        "caller_rank": caller_rank,
    }
