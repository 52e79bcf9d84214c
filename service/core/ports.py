"""What the scoring core asks of the layers around it, as small protocols.

The core names what it needs ("feature state that observes a transaction", "a model that
scores a row", "someone who hears each answer") and nothing about who provides it, so it
imports no model loader, no metrics and no transport. The composition root
(`service.app.create_app`) plugs in the real ones:

    FeatureState        service.features.FeatureEngine (a BatchFeatureState)
    ModelSource         service.model.store.ModelStore (models: LoadedModel)
    AnswerListener      decision metrics, drift statistics, the challenger's shadow,
                        the decision log
    OutcomeListener     outcome metrics, the outcome log and its quarantine
    StageTimer          the sampled stage histograms (service.observability.metrics)
    ClockSkewListener   the clock skew histogram (service.observability.metrics)
    RuleSource          service.model.rule_store.RuleStore (lists and analyst rules)

Listeners are told after the answer is decided, on the scoring thread, in the order given:
each must be quick, must not raise and must not change what it is handed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol, TypeVar, get_args, runtime_checkable

from service.core.domain import (
    Admitted,
    EarlierAttempt,
    ModelSummary,
    Outcome,
    OutcomeFate,
    Reason,
    ScoreResult,
    Transaction,
)
from service.core.rules import RuleBook


class FeatureState(Protocol):
    """The per-card, per-terminal and per-merchant history the features are computed from,
    and what it keeps of each transaction for outcomes and retries."""

    def admit(
        self,
        tx: Transaction,
        decide: Callable[[Sequence[float]], ScoreResult | None],
        *,
        previous_card_id: str | None = None,
    ) -> Admitted | EarlierAttempt:
        """Count `tx`, compute its feature vector (in the model's feature order), and keep
        `decide(features)` with it as its answer, atomically; or, when its transaction_id
        was counted already, return that attempt, counting nothing.

        `previous_card_id` is the card's token under the token key being rotated out: the
        history kept under it is carried over when `tx.card_id` has none."""
        ...

    def record_answer(self, transaction_id: str, answer: ScoreResult) -> None:
        """Keep an answer for a transaction `admit` counted without one, for its retries."""
        ...

    def report_outcome(
        self, transaction_id: str, is_fraud: bool, reported_at: float, rank: int
    ) -> OutcomeFate:
        """Count a label from `reported_at` on, reported by a caller of `rank`, unless an
        earlier report by a higher-ranked caller holds the label
        (`service.core.label_conflicts`); what became of it."""
        ...


@runtime_checkable
class BatchFeatureState(FeatureState, Protocol):
    """A feature state that also counts a stream's batch of transactions at once."""

    def admit_many(
        self,
        transactions: Sequence[Transaction],
        decide: Callable[[Sequence[tuple[int, list[float]]]], Sequence[ScoreResult | None]],
        *,
        previous_card_ids: Sequence[str | None],
        go_on: Callable[[int, EarlierAttempt], bool],
    ) -> list[Admitted | EarlierAttempt]:
        """`admit` of each transaction in turn, each seeing those before it counted, with
        one `decide` for all of those counted (each as its position and features, in
        order; an answer for each). A repeat of one counted earlier in the batch is an
        EarlierAttempt of it without its answer; `go_on(position, attempt)` is asked of
        each repeat, and on False nothing after it is counted (the list ends with it)."""
        ...


class RowScorer(Protocol):
    """Scores one feature vector, or several in one call."""

    def score_one(self, features: Sequence[float]) -> float:
        """The probability of fraud for `features`."""
        ...

    def score_batch(self, matrix: Sequence[Sequence[float]]) -> Iterable[float]:
        """The probability of fraud for each row of `matrix`, in one call, each equal to
        `score_one` of the row."""
        ...


class RowExplainer(Protocol):
    """Explains one feature vector's score."""

    def explain(self, features: Sequence[float]) -> tuple[Reason, ...]:
        """The strongest reasons, strongest first."""
        ...


class DecisionThresholds(Protocol):
    """The scores from which a transaction is reviewed and declined."""

    @property
    def review(self) -> float: ...

    @property
    def decline(self) -> float: ...


class DecidingModel(Protocol):
    """A verified model that may decide: its scorer, explainer, thresholds and version."""

    @property
    def version(self) -> str: ...

    @property
    def scorer(self) -> RowScorer: ...

    @property
    def explainer(self) -> RowExplainer: ...

    @property
    def thresholds(self) -> DecisionThresholds: ...

    def summary(self) -> ModelSummary:
        """The model as callers see it."""
        ...


ModelT = TypeVar("ModelT", bound=DecidingModel)
ModelT_co = TypeVar("ModelT_co", bound=DecidingModel, covariant=True)
ModelT_contra = TypeVar("ModelT_contra", contravariant=True)


class ModelSource(Protocol[ModelT_co]):
    """Where the scorer finds the model deciding now."""

    @property
    def current(self) -> ModelT_co | None:
        """The model deciding now; None when none is loaded."""
        ...


class RuleSource(Protocol):
    """Where the scorer finds the lists and rules deciding now."""

    @property
    def current(self) -> RuleBook | None:
        """The rule book deciding now; None when there are no lists or rules."""
        ...


class AnswerListener(Protocol[ModelT_contra]):
    """Hears every answer given to a transaction the feature state counted.

    A repeat answered from the idempotency cache is not heard again.
    """

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: ModelT_contra | None,
    ) -> None:
        """`features` is None when none were computed (an answer due before the work could
        start); `model` is the model that decided, None when the fallback answered."""
        ...


class OutcomeListener(Protocol):
    """Hears every valid outcome, whether or not the feature state held its transaction."""

    def on_outcome(self, outcome: Outcome, fate: OutcomeFate, rank: int) -> None:
        """`fate`: what the feature state made of it; `rank`: its caller's rank."""
        ...


class StageTimer(Protocol):
    """Times the stages of the scoring calls it chooses (a sample keeps the cost down)."""

    def due(self) -> bool:
        """Whether this call's stages are timed."""
        ...

    def features(self, seconds: float) -> None:
        """The feature state's update took `seconds`."""
        ...

    def inference(self, seconds: float) -> None:
        """The model's score and the decision took `seconds`."""
        ...

    def reasons(self, seconds: float) -> None:
        """The reasons (REVIEW and DECLINE only) took `seconds`."""
        ...


SkewedTime = Literal["event_time", "reported_at"]
"""Which request time was ahead of the server's clock: a transaction's or an outcome's."""
SKEWED_TIMES: tuple[SkewedTime, ...] = get_args(SkewedTime)


class ClockSkewListener(Protocol):
    """Hears each request time further ahead of the server's clock than the allowed skew."""

    def on_clock_skew(self, time: SkewedTime, seconds_ahead: float) -> None:
        """A transaction's event time or an outcome's report time was `seconds_ahead` of
        the server's clock."""
        ...
