"""The quarantine: valid outcomes of transactions the feature state does not hold, kept apart
from the outcome log, a `RecordLog` of kind "quarantine".

    Scorer.report_outcome → QuarantineWriter.on_outcome (an `OutcomeListener`): a tuple
      queued, nothing else, when the state does not hold the transaction
    → the log's writer thread: one `QuarantineLine` an outcome, as JSON lines in
      "quarantine" segments, in the outcome log's directory

Why apart: anyone holding the `report` role can send outcomes for ids never scored, as
many as its rate limit lets through. Logged with the genuine outcomes, they would fill the
outcome log's byte budget and its retention would delete the real chargebacks; here they
fill a budget of their own (`outcome_quarantine.max_bytes`), and retention deletes only
quarantined lines. Which outcomes come here, and why (`reason`):

    unknown_transaction   the state holds no such transaction: a made-up id, or one it has
                          forgotten (past the state horizon, dropped by a bound, scored
                          before a restart of a server keeping its state in memory): a late
                          chargeback is a real label, which retraining reads from here
    state_unavailable     the store failed, so whether it holds the transaction is unknown;
                          the caller got UNAVAILABLE and retries, and its retry finds its place

A line is an outcome line (`service.records.schema.QuarantineLine`: the same fields, caller
and rank included) with its reason. Segments, rotation, retention and what happens when the
disk fails are `service.records.segment_log`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from service.core.callers import current_caller
from service.core.domain import Outcome, OutcomeFate
from service.observability.metrics import QuarantineReason
from service.records.outcome_writer import outcome_line
from service.records.schema import QuarantineLine
from service.records.segment_log import FLUSH_SECONDS, LogLimits, RecordLog

QUARANTINE_REASONS: dict[OutcomeFate, QuarantineReason] = {
    OutcomeFate.NOT_HELD: "unknown_transaction",
    OutcomeFate.STATE_UNAVAILABLE: "state_unavailable",
}
"""The fates whose outcomes are quarantined, and the reason each line gives."""

# transaction_id, is_fraud, reported_at and received_at in Unix seconds, the caller, its
# rank, why it is here.
_Quarantined = tuple[str, bool, float, float, str, int, QuarantineReason]


class QuarantineWriter(RecordLog[_Quarantined]):
    """Durable JSON-lines quarantine of outcomes whose transaction the state does not hold,
    written by its own daemon thread."""

    def __init__(
        self,
        directory: Path,
        limits: LogLimits,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Keep quarantined outcomes in `directory` (the outcome log's, created when first
        written to) within `limits`, writing every `flush_seconds`; `clock` gives the wall
        time."""
        super().__init__(
            directory, "quarantine", _encode, limits, flush_seconds=flush_seconds, clock=clock
        )

    def on_outcome(self, outcome: Outcome, fate: OutcomeFate, rank: int) -> None:
        """Keep a valid outcome of a transaction the state does not hold, or could not say
        (`service.core.ports.OutcomeListener`); never blocks or raises."""
        reason = QUARANTINE_REASONS.get(fate)
        if reason is not None:
            self.append(
                (
                    outcome.transaction_id,
                    outcome.is_fraud,
                    outcome.reported_at,
                    self._clock(),
                    current_caller(),
                    rank,
                    reason,
                )
            )


def _encode(outcomes: Sequence[_Quarantined], _written_at: float) -> bytes:
    return b"".join(orjson.dumps(_line(*outcome)) + b"\n" for outcome in outcomes)


def _line(
    transaction_id: str,
    is_fraud: bool,
    reported_at: float,
    received_at: float,
    caller: str,
    caller_rank: int,
    reason: QuarantineReason,
) -> QuarantineLine:
    outcome = outcome_line(transaction_id, is_fraud, reported_at, received_at, caller, caller_rank)
    return {**outcome, "reason": reason}
