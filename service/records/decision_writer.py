"""The log of every decision the server gave, kept for retraining: a `RecordLog` of kind
"decisions".

    Scorer.score → DecisionLogWriter.on_answer (an `AnswerListener`): a tuple queued,
      nothing else
    → the log's writer thread: one `DecisionLine` a decision, as JSON lines in "decisions"
      segments

What a line holds, its fields' names and the segments' names are `service.records.schema`'s
(`DecisionLine`, `DECISION_SCHEMA`), which training's reader reads by too. `card` is the
HMAC token the server keeps, never a card number: the `Transaction` holds no other.
`feature_config` is `FeatureConfig.fingerprint`, the settings the features were computed
with. Segments, rotation, retention and what happens when the disk fails are
`service.records.segment_log`'s.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson

from service.core.callers import current_caller
from service.core.domain import ScoreResult, Transaction
from service.features import FEATURE_ENGINE_VERSION, FeatureConfig
from service.records.schema import DecisionLine, iso_utc
from service.records.segment_log import DEFAULT_LIMITS, FLUSH_SECONDS, LogLimits, RecordLog

# The transaction, its features (None: not computed), the answer, the caller who asked.
_Decision = tuple[Transaction, Sequence[float] | None, ScoreResult, str]


class DecisionLogWriter(RecordLog[_Decision]):
    """Durable JSON-lines log of the server's decisions, written by its own daemon thread."""

    def __init__(
        self,
        directory: Path,
        limits: LogLimits = DEFAULT_LIMITS,
        *,
        feature_config: FeatureConfig,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Log into `directory` (created when first written to) within `limits`, writing
        every `flush_seconds`, each line marked with `feature_config`'s fingerprint (the
        settings the features were computed with); `clock` gives the wall time."""
        encode = functools.partial(_encode, feature_config.fingerprint)
        super().__init__(
            directory, "decisions", encode, limits, flush_seconds=flush_seconds, clock=clock
        )

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: object,
    ) -> None:
        """Queue every answer, whoever gave it (`service.core.ports.AnswerListener`); never
        blocks or raises. `features` must not change afterwards (the writer thread reads them
        later); None when none were computed. The line names the deciding model by
        `result.model_version`, and the caller of the call being served
        (`service.core.callers`)."""
        # `append` inlined: every scored transaction comes here, and a second call would
        # cost as much again as this whole body.
        if len(self._pending) < self._room:
            self._pending.append((tx, features, result, current_caller()))
        else:
            self._drop()


def _encode(feature_config: str, decisions: Sequence[_Decision], written_at: float) -> bytes:
    logged_at = iso_utc(written_at)
    return b"".join(
        orjson.dumps(_line(*decision, feature_config, logged_at)) + b"\n" for decision in decisions
    )


def _line(
    tx: Transaction,
    features: Sequence[float] | None,
    result: ScoreResult,
    caller: str,
    feature_config: str,
    logged_at: str,
) -> DecisionLine:
    # A dict display checked against `DecisionLine` by mypy: building it costs no more than
    # an untyped one, and this runs for every decision.
    return {
        "transaction_id": tx.transaction_id,
        # orjson writes it as ISO 8601, microseconds only when not 0, far cheaper than
        # formatting it here.
        "event_time": datetime.fromtimestamp(tx.timestamp, UTC),
        "card": tx.card_id,
        "terminal_id": tx.terminal_id,
        "merchant_id": tx.merchant_id,
        "amount": tx.amount,
        "currency": tx.currency,
        "mcc": tx.mcc,
        "entry_mode": int(tx.entry_mode),
        "card_present": tx.card_present,
        "country": tx.country,
        "score": result.score,
        "decision": result.decision.name,
        "source": result.source.name,
        # None when the model decided, written ""; a `FallbackReason` is written as its value.
        "fallback_reason": result.fallback_reason or "",
        "model_version": result.model_version,
        # This process's engine computed every logged vector.
        "feature_engine_version": FEATURE_ENGINE_VERSION,
        "feature_config": feature_config,
        # orjson writes NaN, which is not JSON, as null.
        "features": features,
        "logged_at": logged_at,
        "caller": caller,
        "rule_id": result.rule_id,
        "rules_version": result.rules_version,
    }
