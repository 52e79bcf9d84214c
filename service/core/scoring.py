"""The scoring use case: a raw transaction in, a decision out, within the caller's budget.

    validate → already answered? same answer → budget gone? fallback "deadline"
    → feature state → ONNX score → thresholds → reasons (REVIEW and DECLINE only)
    → drift statistics (`service.observability.drift`) → the challenger's shadow, if one is set
    (scored
      after the answer: `service.model.shadow`) → the decision sink

Threading: a `Scorer` is NOT thread-safe. The feature engine's state and the ONNX scorer's
bound buffers belong to one thread: the server calls the scorer from its asyncio event-loop
thread, one call at a time (a call never awaits and takes tens of microseconds).

Choices made for the caller, to whom a late answer costs more than a conservative one:

- Deadline: a request whose deadline has passed when work would start is answered by the
  fallback policy ("deadline") and does NOT update the feature state. It was not worked on,
  so a retry is scored exactly as this attempt would have been. The check is made once,
  before the work: once the work has started, its answer is ready sooner than any retry.
- Idempotency: the answers of the last `answers_kept` transactions that updated the feature
  state are kept; the same transaction_id again gets the same answer, whatever the rest of
  the request says, and is not counted twice. An older repeat is counted again.
- No model loaded: the transaction still updates the feature state, so features are exact
  when a model arrives, and the fallback answers ("model_unavailable").
- Inference fails (or scores outside [0, 1]): logged, and the fallback answers
  ("model_error").
- Fallback disabled: ModelUnavailable instead of a fallback answer. With no model it is
  raised before the state is touched; after a failed inference the transaction stays
  counted, and a repeat raises ModelUnavailable again rather than counting it twice.

Stage timings (`fraud_stage_duration_seconds`): one call in `stage_timing_every` has its
feature state, inference (score and decision) and reasons stages timed
(`service.observability.metrics`
says why a sample); reasons are timed only when computed, for REVIEW and DECLINE.

Decisions: every answer but a repeat's goes to the `decisions` sink (the decision log kept
for retraining, in the server) with the transaction and its features, or None for a
"deadline" answer, which computed none. Such a transaction is not counted, so a retry is
answered, and logged, again: readers keep its first line that has features.

Outcomes feed the same engine: an outcome reported before its transaction's event time
counts from that event time (the engine clamps it), as one reported right then would.
Every valid outcome also goes, as reported, to the `outcome_sink` (the outcome log kept
for retraining, in the server), even one the engine cannot use: its transaction may have
been scored before a restart or by another worker, and a late chargeback is still a label.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Literal, Protocol

import structlog

from service.core.card_tokens import CardTokenizer
from service.core.domain import Transaction
from service.core.errors import ModelUnavailable, UnknownTransaction
from service.core.validation import ScoringLimits, to_outcome, to_transaction
from service.features import FeatureEngine
from service.model.artifact import Thresholds
from service.model.store import LoadedModel
from service.observability.drift_bins import DriftReference
from service.observability.metrics import (
    FEATURES_STAGE,
    INFERENCE_STAGE,
    REASONS_STAGE,
    STAGE_TIMING_EVERY,
    StageSampler,
)
from service.scoring_types import (
    Decision,
    DecisionSource,
    ModelSummary,
    RawOutcome,
    RawTransaction,
    ScoreResult,
)

FallbackMode = Literal["amount_floor", "decline", "disabled"]
FALLBACK_MODES: tuple[FallbackMode, ...] = ("amount_floor", "decline", "disabled")
DEFAULT_ANSWERS_KEPT = 100_000

# Receives each accepted outcome: transaction id, is_fraud, reported_at in Unix seconds.
OutcomeSink = Callable[[str, bool, float], None]

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """How to decide when the model cannot; the composition root maps settings onto it.

    "amount_floor": APPROVE below `approve_below_minor` (minor units of the request's own
    currency), REVIEW from there up. "decline": DECLINE everything. "disabled": answer
    nothing (ModelUnavailable).
    """

    mode: FallbackMode = "amount_floor"
    approve_below_minor: int = 5_000

    def __post_init__(self) -> None:
        if self.mode not in FALLBACK_MODES:
            raise ValueError(f"fallback mode {self.mode!r} is not one of {FALLBACK_MODES}")
        if self.approve_below_minor < 0:
            raise ValueError("approve_below_minor must be 0 or more")


class ShadowSink(Protocol):
    """Takes each transaction the champion decided, for the challenger (`ShadowScorer`)."""

    def submit(
        self,
        transaction_id: str,
        features: Sequence[float],
        champion: LoadedModel,
        score: float,
        decision: Decision,
    ) -> None:
        """Queue the comparison; must be quick and not raise."""


class DriftSink(Protocol):
    """Takes each transaction the champion decided, for drift statistics (`DriftCollector`)."""

    def record(
        self,
        reference: DriftReference | None,
        features: Sequence[float],
        score: float,
        decision: Decision,
    ) -> None:
        """Add the transaction to the window of the model whose reference is `reference`."""


class DecisionSink(Protocol):
    """Takes each answered and counted transaction, for retraining (`DecisionLog`)."""

    def record(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
    ) -> None:
        """Queue the decision; must be quick, not raise, and not change `features`."""


class ModelSource(Protocol):
    """Where the scorer finds the model deciding now: a `ModelStore` in the server."""

    @property
    def current(self) -> LoadedModel | None:
        """The model deciding now; None when none is loaded."""


class Scorer:
    """Scores transactions, records outcomes and describes the model. One thread only."""

    def __init__(
        self,
        engine: FeatureEngine,
        store: ModelSource,
        *,
        tokenizer: CardTokenizer,
        limits: ScoringLimits,
        fallback: FallbackPolicy,
        answers_kept: int = DEFAULT_ANSWERS_KEPT,
        outcome_sink: OutcomeSink | None = None,
        shadow: ShadowSink | None = None,
        drift: DriftSink | None = None,
        decisions: DecisionSink | None = None,
        stage_timing_every: int = STAGE_TIMING_EVERY,
    ) -> None:
        """Score with `engine`'s state and `store`'s current model.

        `answers_kept` bounds the memory of recent answers that makes retries idempotent.
        `outcome_sink` gets every outcome the engine accepts; it must be quick and not raise.
        `shadow` and `drift` get every transaction the model decided, with its features;
        `decisions` every answer given to a transaction counted (not to repeats), with the
        features when they were computed.
        One call in `stage_timing_every` has its stages timed.
        """
        model = store.current
        if model is not None and model.manifest.feature_config != engine.config:
            raise ValueError(
                "the feature engine's config is not the one the model was trained with"
            )
        self._engine = engine
        self._store = store
        self._tokenizer = tokenizer
        self._limits = limits
        self._fallback = fallback
        self._answers_kept = answers_kept
        self._outcome_sink = outcome_sink
        self._shadow = shadow
        self._drift = drift
        self._decisions = decisions
        self._stage_sampler = StageSampler(stage_timing_every)
        # Transaction id to its answer; None when it was counted but could not be answered.
        self._answers: OrderedDict[str, ScoreResult | None] = OrderedDict()

    def score(self, raw: RawTransaction, *, deadline: float | None = None) -> ScoreResult:
        """The decision for `raw`; `deadline` is the `time.monotonic()` value to answer by.

        InvalidRequest for bad input (the state is untouched), ModelUnavailable when neither
        the model nor the fallback may answer.
        """
        tx = to_transaction(
            raw, now_ns=time.time_ns(), limits=self._limits, tokenizer=self._tokenizer
        )
        transaction_id = tx.transaction_id
        if transaction_id in self._answers:
            return self._repeat(transaction_id)
        if deadline is not None and time.monotonic() >= deadline:
            result = self._fall_back(transaction_id, raw.amount_minor, "deadline")
            if self._decisions is not None:
                self._decisions.record(tx, None, result)
            return result
        model = self._store.current
        if model is None and self._fallback.mode == "disabled":
            raise ModelUnavailable("no model is loaded and the fallback is disabled")
        timed = self._stage_sampler.due()
        started = perf_counter()
        features = self._engine.observe(tx)
        if timed:
            FEATURES_STAGE.observe(perf_counter() - started)
        try:
            result = self._decide(model, transaction_id, raw.amount_minor, features, timed)
        except BaseException:
            self._remember(transaction_id, None)  # counted all the same
            raise
        self._remember(transaction_id, result)
        if self._decisions is not None:
            self._decisions.record(tx, features, result)
        return result

    def report_outcome(self, raw: RawOutcome) -> None:
        """Count a confirmed label from its report time on, and keep it for retraining.

        InvalidRequest for bad input (nothing kept). UnknownTransaction when the feature
        state does not hold the transaction (scored before a restart, by another worker, or
        too long ago to change any feature): the outcome is kept for retraining all the
        same, since a late chargeback is still a label.
        """
        outcome = to_outcome(raw, now_ns=time.time_ns(), limits=self._limits)
        if self._outcome_sink is not None:
            self._outcome_sink(outcome.transaction_id, outcome.is_fraud, outcome.reported_at)
        known = self._engine.report_outcome(
            outcome.transaction_id, outcome.is_fraud, outcome.reported_at
        )
        if not known:
            raise UnknownTransaction(
                "transaction_id unknown to this server's features, or too old to affect any; "
                "the outcome is kept for retraining"
            )

    def model_summary(self) -> ModelSummary:
        """The model deciding now; ModelUnavailable when none is loaded."""
        model = self._store.current
        if model is None:
            raise ModelUnavailable("no model is loaded")
        return model.summary()

    def _decide(
        self,
        model: LoadedModel | None,
        transaction_id: str,
        amount_minor: int,
        features: Sequence[float],
        timed: bool,
    ) -> ScoreResult:
        if model is None:
            return self._fall_back(transaction_id, amount_minor, "model_unavailable")
        # Any failure of a verified model is unexpected: answer by the rules, keep the trace.
        try:
            started = perf_counter()
            score = model.scorer.score_one(features)
            decision = decision_for(score, model.thresholds)
            inferred = perf_counter()
            reasons = () if decision is Decision.APPROVE else model.explainer.explain(features)
        except Exception:
            _log.exception("model_error", model_version=model.version)
            return self._fall_back(transaction_id, amount_minor, "model_error")
        if timed:  # reasons first: their clock is still running
            if decision is not Decision.APPROVE:
                REASONS_STAGE.observe(perf_counter() - inferred)
            INFERENCE_STAGE.observe(inferred - started)
        if self._drift is not None:
            self._drift.record(model.manifest.drift_reference, features, score, decision)
        if self._shadow is not None:
            self._shadow.submit(transaction_id, features, model, score, decision)
        return ScoreResult(
            transaction_id, score, decision, reasons, model.version, DecisionSource.MODEL, ""
        )

    def _fall_back(self, transaction_id: str, amount_minor: int, reason: str) -> ScoreResult:
        mode = self._fallback.mode
        if mode == "disabled":
            raise ModelUnavailable(f"the model could not answer ({reason}); fallback disabled")
        if mode == "decline":
            decision = Decision.DECLINE
        elif amount_minor < self._fallback.approve_below_minor:
            decision = Decision.APPROVE
        else:
            decision = Decision.REVIEW
        return ScoreResult(transaction_id, 0.0, decision, (), "", DecisionSource.FALLBACK, reason)

    def _repeat(self, transaction_id: str) -> ScoreResult:
        earlier = self._answers[transaction_id]
        if earlier is None:
            raise ModelUnavailable("this transaction was counted but could not be answered")
        return earlier

    def _remember(self, transaction_id: str, result: ScoreResult | None) -> None:
        answers = self._answers
        answers[transaction_id] = result
        if len(answers) > self._answers_kept:
            answers.popitem(last=False)


def decision_for(score: float, thresholds: Thresholds) -> Decision:
    """DECLINE at or above the decline threshold, REVIEW at or above review, else APPROVE."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score {score!r} is not a probability")
    if score >= thresholds.decline:
        return Decision.DECLINE
    if score >= thresholds.review:
        return Decision.REVIEW
    return Decision.APPROVE
