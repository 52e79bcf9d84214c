"""Tests for service.core.scoring: the scoring use case on a trained model and real feature
state."""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
import pytest

from service.core.callers import CURRENT_CALLER
from service.core.card_tokens import CardTokenizer
from service.core.domain import (
    NANOS_PER_SECOND,
    Admitted,
    Decision,
    DecisionSource,
    EarlierAttempt,
    FallbackReason,
    Outcome,
    OutcomeFate,
    RawOutcome,
    RawTransaction,
    ScoreResult,
    Transaction,
)
from service.core.errors import (
    ConflictingRepeat,
    InvalidRequest,
    ModelUnavailable,
    StateUnavailable,
    UnknownTransaction,
)
from service.core.ports import FeatureState
from service.core.scoring import FallbackPolicy, Scorer, decision_for
from service.core.validation import ScoringLimits
from service.features import FEATURES, FeatureEngine, MemoryStore
from service.model.artifact import Thresholds
from service.model.loading import LoadedModel
from service.model.onnx_scorer import OnnxScorer
from service.model.store import ModelStore
from service.observability.metrics import SampledStageTimer
from tests.conftest import TrainedModel
from tests.factories import T0_NS
from tests.factories import raw_transaction as _raw
from tests.process_metrics import sample_value
from training.data.loading import load_transactions
from training.data.replay import replay_features, transactions
from training.model_build.export import export_onnx

Decide = Callable[[Sequence[float]], ScoreResult | None]

NAMES = [feature.name for feature in FEATURES]
TOKENIZER = CardTokenizer(b"test key")
DAY_NS = 86_400 * NANOS_PER_SECOND
PAN = "4111111111111111"
REPLAYED_DAYS = 10
STAGES = ("features", "inference", "reasons")
# Scorer answers for a stretch of history, and the scores training's replay gives it.
Replayed = tuple[list[ScoreResult], npt.NDArray[np.float64]]


@dataclasses.dataclass(frozen=True)
class OneModel:
    """A model source that always offers the same model (or none)."""

    current: LoadedModel | None


@pytest.fixture(scope="module")
def store(trained_model: TrainedModel) -> ModelStore:
    store = ModelStore(trained_model.registry)
    store.load_champion()
    return store


@pytest.fixture(scope="module")
def model(store: ModelStore) -> LoadedModel:
    assert store.current is not None
    return store.current


@pytest.fixture
def engine(model: LoadedModel) -> FeatureEngine:
    return FeatureEngine(model.manifest.feature_config)


@pytest.fixture
def scorer(engine: FeatureEngine, store: ModelStore) -> Scorer[LoadedModel]:
    return _scorer(engine, store)


def _scorer(
    engine: FeatureState, store: Any, *, stage_timing_every: int | None = None, **options: Any
) -> Scorer[LoadedModel]:
    """A scorer over `engine` and `store`; `stage_timing_every` times the stages of one call
    in that many, in the server's stage histograms."""
    options.setdefault("fallback", FallbackPolicy())
    if stage_timing_every is not None:
        options["stage_timer"] = SampledStageTimer(stage_timing_every)
    return Scorer(engine, store, tokenizer=TOKENIZER, limits=ScoringLimits(), **options)


_PROBES = itertools.count()


def _probe(engine: FeatureEngine, card_id: str = "card-1", **changes: Any) -> dict[str, float]:
    """The features of one more transaction a day after T0: shows what the state holds."""
    fields: dict[str, Any] = {
        "transaction_id": f"probe-{next(_PROBES)}",
        "timestamp": (T0_NS + DAY_NS // 2) / NANOS_PER_SECOND,
        "card_id": card_id,
        "terminal_id": "term-1",
        "amount": 10.0,
    }
    fields.update(changes)
    return dict(zip(NAMES, engine.observe(Transaction(**fields)), strict=True))


def _card_count(engine: FeatureEngine, card_id: str = "card-1") -> float:
    """How many transactions the state holds for the card, the probe included."""
    return _probe(engine, card_id)["card_tx_count_1d"]


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, Decision.APPROVE),
        (0.2999, Decision.APPROVE),
        (0.3, Decision.REVIEW),
        (0.7999, Decision.REVIEW),
        (0.8, Decision.DECLINE),
        (1.0, Decision.DECLINE),
    ],
)
def test_decisions_turn_at_each_threshold_inclusive(score: float, expected: Decision) -> None:
    """A score equal to a threshold takes that threshold's decision."""
    thresholds = Thresholds(review=0.3, decline=0.8, policy="fixed for the test")
    assert decision_for(score, thresholds) is expected


@pytest.mark.parametrize("score", [-0.01, 1.01, float("nan")])
def test_a_score_outside_zero_to_one_has_no_decision(score: float) -> None:
    """A broken model's score is an error, never a decision."""
    thresholds = Thresholds(review=0.3, decline=0.8, policy="fixed for the test")
    with pytest.raises(ValueError, match="not a probability"):
        decision_for(score, thresholds)


def test_a_scored_transaction_has_every_field(
    scorer: Scorer[LoadedModel], model: LoadedModel
) -> None:
    """A model answer carries the id, a probability, its decision and the model version."""
    result = scorer.score(_raw(1))
    assert result.transaction_id == "tx-1"
    assert 0.0 <= result.score <= 1.0
    assert result.decision == decision_for(result.score, model.thresholds)
    assert result.model_version == model.version
    assert result.source is DecisionSource.MODEL
    assert result.fallback_reason is None


@pytest.fixture(scope="module")
def replayed(trained_model: TrainedModel, model: LoadedModel) -> Replayed:
    """The first days of the training history scored by the Scorer, outcomes reported as
    training feeds them, next to training's own replay of the same rows through ONNX."""
    frame = load_transactions(trained_model.history).frame
    first_day_ns = int(frame["timestamp_ns"].iloc[0])
    frame = frame[frame["timestamp_ns"] < first_day_ns + REPLAYED_DAYS * DAY_NS]
    config = model.manifest.feature_config
    expected = model.scorer.score_batch(replay_features(frame, config))
    scorer = _scorer(FeatureEngine(config), OneModel(model))
    delay_ns = round(config.label_delay_seconds * NANOS_PER_SECOND)
    results = []
    rows = zip(
        transactions(frame), frame["timestamp_ns"].tolist(), frame["is_fraud"].tolist(), strict=True
    )
    for tx, timestamp_ns, is_fraud in rows:
        results.append(scorer.score(_raw_from(tx, timestamp_ns)))
        if is_fraud:
            scorer.report_outcome(RawOutcome(tx.transaction_id, True, timestamp_ns + delay_ns))
    return results, expected


def _raw_from(tx: Transaction, timestamp_ns: int) -> RawTransaction:
    """The request a terminal would send for a history row (two-decimal currencies)."""
    return RawTransaction(
        tx.transaction_id,
        tx.card_id,
        tx.terminal_id,
        tx.merchant_id,
        round(tx.amount * 100),
        tx.currency,
        timestamp_ns,
        max(tx.mcc, 0),
        int(tx.entry_mode),
        tx.card_present,
        tx.country,
    )


def test_scores_match_the_training_replay(replayed: Replayed) -> None:
    """Scoring a history online, outcomes reported when known, gives training's scores."""
    results, expected = replayed
    assert len(results) > 1_000
    assert all(result.source is DecisionSource.MODEL for result in results)
    scores = np.array([result.score for result in results])
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_decisions_follow_the_thresholds_with_reasons_only_when_needed(
    replayed: Replayed, model: LoadedModel
) -> None:
    """APPROVE has no reasons; REVIEW and DECLINE have one to three, strongest first."""
    results, _ = replayed
    # This model reviews what it declines (review == decline): REVIEW is tested below.
    assert {Decision.APPROVE, Decision.DECLINE} <= {result.decision for result in results}
    for result in results:
        assert result.decision == decision_for(result.score, model.thresholds)
        if result.decision is Decision.APPROVE:
            assert result.reasons == ()
        else:
            contributions = [reason.contribution for reason in result.reasons]
            assert 1 <= len(contributions) <= 3
            assert contributions == sorted(contributions, reverse=True)


def test_scores_between_the_thresholds_are_reviewed_with_reasons(
    engine: FeatureEngine, model: LoadedModel
) -> None:
    """With review at 0 and decline at 1, a swipe is reviewed and explained."""
    thresholds = Thresholds(review=0.0, decline=1.0, policy="review everything")
    scorer = _scorer(engine, OneModel(dataclasses.replace(model, thresholds=thresholds)))
    result = scorer.score(_raw(1))
    assert result.decision is Decision.REVIEW
    assert 1 <= len(result.reasons) <= 3


def test_a_repeated_transaction_is_answered_again_but_counted_once(
    scorer: Scorer[LoadedModel], engine: FeatureEngine
) -> None:
    """The same id with the same content gets the same answer and one place in the state."""
    first = scorer.score(_raw(1))
    assert scorer.score(_raw(1)) is first
    assert _card_count(engine) == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        # The case: a huge amount on another card under a known id.
        ({"card_id": "card-2", "amount_minor": 10_000_000_000}, "transaction.card_id"),
        ({"amount_minor": 2_501}, "transaction.amount_minor"),
        ({"timestamp_ns": T0_NS + 61 * NANOS_PER_SECOND}, "transaction.timestamp"),
        ({"card_present": None}, "transaction.card_present"),
        ({"country": "DE"}, "transaction.country"),
    ],
)
def test_a_known_id_with_other_content_is_refused_naming_the_first_differing_field(
    scorer: Scorer[LoadedModel],
    engine: FeatureEngine,
    change: dict[str, Any],
    field: str,
) -> None:
    """Another transaction under a known id never gets the first one's answer and changes
    no state; the error names the first field that differs, never a value."""
    first = scorer.score(_raw(1))
    with pytest.raises(ConflictingRepeat) as refused:
        scorer.score(_raw(1, **change))
    assert refused.value.field == field
    assert not any(str(value) in str(refused.value) for value in change.values())
    assert _card_count(engine) == 2
    assert scorer.score(_raw(1)) is first


def test_a_card_number_and_its_token_are_the_same_content(engine: FeatureEngine) -> None:
    """A retry compares what was sent: the same card number again is the same request."""
    scorer = _scorer(engine, OneModel(None))
    first = scorer.score(_raw(1, card_id=PAN))
    assert scorer.score(_raw(1, card_id=PAN)) is first


def test_the_memory_of_answers_is_the_state_s_bound(model: LoadedModel, store: ModelStore) -> None:
    """Once the state's bound has dropped a transaction's record, a repeat is counted again."""
    engine = FeatureEngine(model.manifest.feature_config, MemoryStore(max_records=2))
    scorer = _scorer(engine, store)
    for number in (1, 2, 3, 1):
        scorer.score(_raw(number))
    assert _card_count(engine) == 5


def test_a_passed_deadline_gets_the_fallback_and_leaves_the_state(
    scorer: Scorer[LoadedModel], engine: FeatureEngine
) -> None:
    """A request already late is answered by the rules, not counted, and scored on retry."""
    late = scorer.score(_raw(1), deadline=time.monotonic() - 1.0)
    assert late == ScoreResult(
        "tx-1", 0.0, Decision.APPROVE, (), "", DecisionSource.FALLBACK, FallbackReason.DEADLINE
    )
    retry = scorer.score(_raw(1), deadline=time.monotonic() + 10.0)
    assert retry.source is DecisionSource.MODEL
    assert _card_count(engine) == 2


def test_no_model_falls_back_but_keeps_counting(engine: FeatureEngine) -> None:
    """Without a model the rules answer and the state still learns the transaction."""
    result = _scorer(engine, OneModel(None)).score(_raw(1))
    assert (result.source, result.fallback_reason) == (DecisionSource.FALLBACK, "model_unavailable")
    assert result.model_version == ""
    assert _card_count(engine) == 2


class BrokenState:
    """A feature state whose store fails on every call, as a full disk makes LMDB's."""

    def admit(
        self, tx: Transaction, decide: Decide, *, previous_card_id: str | None = None
    ) -> Admitted:
        raise OSError(27, "File too large")

    def record_answer(self, transaction_id: str, answer: ScoreResult) -> None:
        raise OSError(27, "File too large")

    def report_outcome(
        self, transaction_id: str, is_fraud: bool, reported_at: float, rank: int
    ) -> OutcomeFate:
        raise OSError(27, "File too large")


def test_a_failing_state_store_gets_the_fallback_and_refuses_outcomes(store: ModelStore) -> None:
    """A store that fails answers by the rules ("state_unavailable"), never an exception;
    an outcome it cannot count is StateUnavailable, yet its listeners heard it."""
    heard: list[tuple[Outcome, OutcomeFate]] = []

    class Ears:
        def on_outcome(self, outcome: Outcome, fate: OutcomeFate, rank: int) -> None:
            heard.append((outcome, fate))

    scorer = Scorer(
        BrokenState(), store, tokenizer=TOKENIZER, limits=ScoringLimits(),
        fallback=FallbackPolicy(), outcome_listeners=[Ears()],
    )  # fmt: skip
    result = scorer.score(_raw(1))
    assert (result.source, result.fallback_reason) == (
        DecisionSource.FALLBACK,
        FallbackReason.STATE_UNAVAILABLE,
    )
    with pytest.raises(StateUnavailable):
        scorer.report_outcome(RawOutcome("tx-1", True, T0_NS))
    assert [(outcome.transaction_id, fate) for outcome, fate in heard] == [
        ("tx-1", OutcomeFate.STATE_UNAVAILABLE)
    ]


class ForgetfulState:
    """A feature state that counts transactions but keeps no answer, as a state written by
    an earlier version (which kept the answer apart) may hold them."""

    def __init__(self, engine: FeatureEngine) -> None:
        self.engine = engine

    def admit(
        self, tx: Transaction, decide: Decide, *, previous_card_id: str | None = None
    ) -> Admitted | EarlierAttempt:
        admitted = self.engine.admit(tx)
        if isinstance(admitted, EarlierAttempt):
            return admitted
        return Admitted(admitted.features, decide(admitted.features))

    def record_answer(self, transaction_id: str, answer: ScoreResult) -> None:
        raise OSError(5, "Input/output error")

    def report_outcome(
        self, transaction_id: str, is_fraud: bool, reported_at: float, rank: int
    ) -> OutcomeFate:
        return self.engine.report_outcome(transaction_id, is_fraud, reported_at, rank)


def test_a_repeat_of_a_counted_but_unanswered_transaction_gets_the_fallback_kept(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """A retry of a transaction counted whose answer was lost is answered by the rules
    ("state_unavailable"), once and for good, not refused until the record expires
    (found by review: every retry got UNAVAILABLE)."""
    lost = Scorer(
        ForgetfulState(engine), store, tokenizer=TOKENIZER, limits=ScoringLimits(),
        fallback=FallbackPolicy(),
    )  # fmt: skip
    lost.score(_raw(1))  # counted; its answer is not kept
    scorer = _scorer(engine, store)  # the process restarted on the same state
    retry = scorer.score(_raw(1))
    assert (retry.source, retry.fallback_reason) == (
        DecisionSource.FALLBACK,
        FallbackReason.STATE_UNAVAILABLE,
    )
    assert scorer.score(_raw(1)) == retry
    assert _card_count(engine) == 2  # counted once, and the probe


class AnswerlessState:
    """A feature state on which only `admit` may keep an answer."""

    def __init__(self, engine: FeatureEngine) -> None:
        self.engine = engine

    def admit(
        self, tx: Transaction, decide: Decide, *, previous_card_id: str | None = None
    ) -> Admitted | EarlierAttempt:
        return self.engine.admit(tx, decide, previous_card_id=previous_card_id)

    def record_answer(self, transaction_id: str, answer: ScoreResult) -> None:
        raise AssertionError("the answer is kept by admit, in the transaction's session")

    def report_outcome(
        self, transaction_id: str, is_fraud: bool, reported_at: float, rank: int
    ) -> OutcomeFate:
        return self.engine.report_outcome(transaction_id, is_fraud, reported_at, rank)


def test_the_answer_is_kept_with_the_count_in_one_session(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """The model decides inside the state's session, so the transaction and its answer are
    kept together: a retry (after a restart) gets the model's answer, never a fallback."""
    first = _scorer(AnswerlessState(engine), store).score(_raw(1))
    retry = _scorer(AnswerlessState(engine), store).score(_raw(1))
    assert first.source is DecisionSource.MODEL
    assert retry == first
    assert _card_count(engine) == 2  # counted once, and the probe


def test_no_model_and_no_fallback_is_unavailable_without_counting(engine: FeatureEngine) -> None:
    """With the fallback disabled and no model, ModelUnavailable and the state is untouched."""
    scorer = _scorer(engine, OneModel(None), fallback=FallbackPolicy(mode="disabled"))
    with pytest.raises(ModelUnavailable):
        scorer.score(_raw(1))
    assert _card_count(engine) == 1


@pytest.mark.parametrize(
    ("policy", "amount_minor", "decision"),
    [
        (FallbackPolicy(approve_below_minor=5_000), 4_999, Decision.APPROVE),
        (FallbackPolicy(approve_below_minor=5_000), 5_000, Decision.REVIEW),
        (FallbackPolicy(approve_below_minor=0), 0, Decision.REVIEW),
        (FallbackPolicy(mode="decline"), 1, Decision.DECLINE),
    ],
)
def test_fallback_policies(
    engine: FeatureEngine, policy: FallbackPolicy, amount_minor: int, decision: Decision
) -> None:
    """Amount floor approves below the floor and reviews from it; decline declines."""
    scorer = _scorer(engine, OneModel(None), fallback=policy)
    assert scorer.score(_raw(1, amount_minor=amount_minor)).decision is decision


def test_an_unknown_fallback_mode_is_refused() -> None:
    """A typo in the policy fails at start-up, not on the first fallback."""
    with pytest.raises(ValueError, match="fallback mode"):
        FallbackPolicy(mode="approve")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def broken_model(model: LoadedModel) -> LoadedModel:
    """The champion with an ONNX graph of the wrong width: every inference raises."""
    rows = np.random.default_rng(0).normal(size=(200, 2))
    params = {"objective": "binary", "verbose": -1, "num_threads": 1}
    booster = lightgbm.train(params, lightgbm.Dataset(rows, rows[:, 0] > 0), num_boost_round=2)
    scorer = OnnxScorer(export_onnx(booster, ["x0", "x1"]), 2)
    return dataclasses.replace(model, scorer=scorer)


def test_an_inference_error_falls_back(engine: FeatureEngine, broken_model: LoadedModel) -> None:
    """A model that raises is answered by the rules ("model_error"), the swipe counted once."""
    scorer = _scorer(engine, OneModel(broken_model))
    result = scorer.score(_raw(1))
    assert (result.source, result.fallback_reason) == (DecisionSource.FALLBACK, "model_error")
    assert scorer.score(_raw(1)) is result
    assert _card_count(engine) == 2


def test_an_inference_error_without_fallback_is_unavailable_and_counted_once(
    engine: FeatureEngine, broken_model: LoadedModel
) -> None:
    """With the fallback disabled a failing model gives ModelUnavailable, retries included."""
    policy = FallbackPolicy(mode="disabled")
    scorer = _scorer(engine, OneModel(broken_model), fallback=policy)
    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            scorer.score(_raw(1))
    assert _card_count(engine) == 2


def test_invalid_requests_leave_the_state_untouched(
    scorer: Scorer[LoadedModel], engine: FeatureEngine
) -> None:
    """A request refused on its last field has not been counted."""
    with pytest.raises(InvalidRequest, match=r"transaction\.country"):
        scorer.score(_raw(1, country="france"))
    assert _card_count(engine) == 1


def test_card_numbers_are_one_card_under_their_token(
    scorer: Scorer[LoadedModel], engine: FeatureEngine
) -> None:
    """A card number, plain or formatted, is counted under its token and nowhere else."""
    scorer.score(_raw(1, card_id=PAN))
    scorer.score(_raw(2, card_id="4111 1111 1111 1111"))
    assert _card_count(engine, TOKENIZER.token(PAN)) == 3
    assert _card_count(engine, PAN) == 1


def test_a_reported_fraud_raises_the_terminal_risk(
    scorer: Scorer[LoadedModel], engine: FeatureEngine
) -> None:
    """Once the label delay has passed, a reported fraud counts in the terminal's risk."""
    scorer.score(_raw(0, timestamp_ns=T0_NS))
    scorer.report_outcome(RawOutcome("tx-0", True, T0_NS + DAY_NS))
    delay = engine.config.label_delay_seconds
    later = T0_NS / NANOS_PER_SECOND + delay + 43_200.0
    features = _probe(engine, timestamp=later)
    assert features["terminal_tx_count_1d_delayed"] == 1
    assert features["terminal_risk_1d"] == 1.0


def _reported_by(scorer: Scorer[LoadedModel], caller: str, outcome: RawOutcome) -> None:
    """`outcome` reported in a call of `caller`'s, as the transport identifies it."""

    def call() -> None:
        CURRENT_CALLER.set(caller)
        scorer.report_outcome(outcome)

    contextvars.copy_context().run(call)


def test_a_lower_ranked_reversal_is_heard_but_keeps_the_label(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """The chargeback feed's fraud stands against a portal's later "genuine" (outranked,
    heard with the portal's rank); the feed's own reversal, or an equal's, changes it."""
    outcomes = RecordedOutcomes()
    ranks = {"chargebacks": 2, "case-tool": 2, "portal": 0}
    scorer = _scorer(engine, store, outcome_listeners=[outcomes], caller_ranks=ranks)
    scorer.score(_raw(0, timestamp_ns=T0_NS))
    later = T0_NS / NANOS_PER_SECOND + engine.config.label_delay_seconds + 43_200.0

    _reported_by(scorer, "chargebacks", RawOutcome("tx-0", True, T0_NS + DAY_NS))
    _reported_by(scorer, "portal", RawOutcome("tx-0", False, T0_NS + 2 * DAY_NS))
    assert _probe(engine, timestamp=later)["terminal_risk_1d"] == 1.0
    _reported_by(scorer, "case-tool", RawOutcome("tx-0", False, T0_NS + 3 * DAY_NS))
    assert _probe(engine, timestamp=later)["terminal_risk_1d"] == 0.0
    assert [(fate, rank) for *_, fate, rank in outcomes.heard] == [
        (OutcomeFate.COUNTED, 2),
        (OutcomeFate.OUTRANKED, 0),
        (OutcomeFate.COUNTED, 2),
    ]


def test_with_equal_ranks_the_latest_report_decides(
    scorer: Scorer[LoadedModel], engine: FeatureEngine
) -> None:
    """Without ranks (the default) any caller's reversal changes the label, as before."""
    scorer.score(_raw(0, timestamp_ns=T0_NS))
    later = T0_NS / NANOS_PER_SECOND + engine.config.label_delay_seconds + 43_200.0
    _reported_by(scorer, "chargebacks", RawOutcome("tx-0", True, T0_NS + DAY_NS))
    _reported_by(scorer, "portal", RawOutcome("tx-0", False, T0_NS + 2 * DAY_NS))
    assert _probe(engine, timestamp=later)["terminal_risk_1d"] == 0.0


def test_without_outcome_the_terminal_risk_stays_zero(
    scorer: Scorer[LoadedModel], engine: FeatureEngine
) -> None:
    """The same transaction with no outcome reported counts as genuine."""
    scorer.score(_raw(0, timestamp_ns=T0_NS))
    later = T0_NS / NANOS_PER_SECOND + engine.config.label_delay_seconds + 43_200.0
    features = _probe(engine, timestamp=later)
    assert features["terminal_tx_count_1d_delayed"] == 1
    assert features["terminal_risk_1d"] == 0.0


def test_an_outcome_for_an_unknown_transaction_is_refused(scorer: Scorer[LoadedModel]) -> None:
    """An outcome naming a transaction the state does not hold raises UnknownTransaction."""
    with pytest.raises(UnknownTransaction):
        scorer.report_outcome(RawOutcome("never-seen", True, T0_NS))


def test_an_outcome_without_report_time_is_invalid(scorer: Scorer[LoadedModel]) -> None:
    """reported_at is required."""
    scorer.score(_raw(1))
    with pytest.raises(InvalidRequest, match="reported_at: required"):
        scorer.report_outcome(RawOutcome("tx-1", True, None))


class RecordedOutcomes:
    """An outcome listener that keeps what it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, bool, float, OutcomeFate, int]] = []

    def on_outcome(self, outcome: Outcome, fate: OutcomeFate, rank: int) -> None:
        self.heard.append((*outcome, fate, rank))


def test_every_valid_outcome_reaches_the_outcome_listeners(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """The listeners hear each valid outcome, as reported, with what the state made of it,
    even one the state does not hold (a made-up id, or a transaction scored before a restart
    of an in-memory state): the quarantine keeps it. Invalid ones never."""
    outcomes = RecordedOutcomes()
    scorer = _scorer(engine, store, outcome_listeners=[outcomes])
    scorer.score(_raw(0, timestamp_ns=T0_NS))
    scorer.report_outcome(RawOutcome("tx-0", True, T0_NS + DAY_NS))
    with pytest.raises(UnknownTransaction):
        scorer.report_outcome(RawOutcome("before-a-restart", True, T0_NS + DAY_NS))
    with pytest.raises(InvalidRequest):
        scorer.report_outcome(RawOutcome("tx-0", False, None))
    reported = (T0_NS + DAY_NS) / NANOS_PER_SECOND
    assert outcomes.heard == [
        ("tx-0", True, reported, OutcomeFate.COUNTED, 0),
        ("before-a-restart", True, reported, OutcomeFate.NOT_HELD, 0),
    ]


class RecordedAnswers:
    """An answer listener that keeps what it hears, as the decision log would queue it."""

    def __init__(self) -> None:
        self.heard: list[
            tuple[Transaction, Sequence[float] | None, ScoreResult, LoadedModel | None]
        ] = []

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: LoadedModel | None,
    ) -> None:
        self.heard.append((tx, features, result, model))


def test_every_answer_but_a_repeat_reaches_the_listeners(
    engine: FeatureEngine, store: ModelStore, model: LoadedModel, broken_model: LoadedModel
) -> None:
    """Model and fallback answers are heard with the tokenised transaction and its features
    (None for a late request, which computed none), and the deciding model (None when the
    fallback answered); a repeat's answer is not heard again."""
    answers = RecordedAnswers()
    scorer = _scorer(engine, store, answer_listeners=[answers])
    late = scorer.score(_raw(1, card_id=PAN), deadline=time.monotonic() - 1.0)
    answer = scorer.score(_raw(1, card_id=PAN))
    assert scorer.score(_raw(1, card_id=PAN)) is answer
    failed = _scorer(engine, OneModel(broken_model), answer_listeners=[answers]).score(_raw(2))

    assert [heard[2] for heard in answers.heard] == [late, answer, failed]
    assert [heard[0].card_id for heard in answers.heard[:2]] == [TOKENIZER.token(PAN)] * 2
    assert answers.heard[0][1] is None
    assert [len(heard[1] or ()) for heard in answers.heard[1:]] == [len(FEATURES)] * 2
    assert [heard[3] for heard in answers.heard] == [None, model, None]


def test_listeners_hear_in_the_order_given(engine: FeatureEngine, store: ModelStore) -> None:
    """The composition root relies on the order: metrics first, the decision log last."""
    order: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_answer(self, *_heard: object) -> None:
            order.append(self.name)

    _scorer(engine, store, answer_listeners=[Named("first"), Named("second")]).score(_raw(1))
    assert order == ["first", "second"]


def test_model_summary_describes_the_current_model(
    scorer: Scorer[LoadedModel], model: LoadedModel
) -> None:
    """GetModelInfo's summary is the deciding model's."""
    assert scorer.model_summary() == model.summary()


def test_model_summary_without_model_is_unavailable(engine: FeatureEngine) -> None:
    """With no model loaded there is nothing to describe."""
    with pytest.raises(ModelUnavailable):
        _scorer(engine, OneModel(None)).model_summary()


def test_a_store_without_champion_gets_rule_answers(tmp_path: Path, engine: FeatureEngine) -> None:
    """An empty registry gives a store without model: the scorer still answers by the rules."""
    result = _scorer(engine, ModelStore(tmp_path)).score(_raw(1))
    assert result.fallback_reason is FallbackReason.MODEL_UNAVAILABLE


def _stage_counts() -> dict[str, float]:
    return {
        stage: sample_value("fraud_stage_duration_seconds_count", {"stage": stage}) or 0.0
        for stage in STAGES
    }


def _stages_timed(scorer: Scorer[LoadedModel], *raws: RawTransaction) -> dict[str, float]:
    """How many timings of each stage scoring `raws` adds."""
    before = _stage_counts()
    for raw in raws:
        scorer.score(raw)
    after = _stage_counts()
    return {stage: after[stage] - before[stage] for stage in STAGES}


def _with_thresholds(model: LoadedModel, review: float, decline: float) -> OneModel:
    thresholds = Thresholds(review=review, decline=decline, policy="fixed for the test")
    return OneModel(dataclasses.replace(model, thresholds=thresholds))


def test_a_timed_call_times_reasons_only_when_it_computes_them(
    engine: FeatureEngine, model: LoadedModel
) -> None:
    """Timing every call: a reviewed swipe times its three stages, an approved one two."""
    reviewing = _scorer(engine, _with_thresholds(model, 0.0, 1.0), stage_timing_every=1)
    assert _stages_timed(reviewing, _raw(1)) == {"features": 1, "inference": 1, "reasons": 1}
    approving = _scorer(engine, _with_thresholds(model, 1.0, 1.0), stage_timing_every=1)
    assert _stages_timed(approving, _raw(2)) == {"features": 1, "inference": 1, "reasons": 0}


def test_one_call_in_n_has_its_stages_timed(engine: FeatureEngine, store: ModelStore) -> None:
    """One call in 4: of 9 calls, the 1st, 5th and 9th are timed."""
    scorer = _scorer(engine, store, stage_timing_every=4)
    timed = _stages_timed(scorer, *(_raw(number) for number in range(1, 10)))
    assert (timed["features"], timed["inference"]) == (3, 3)


def test_a_call_without_a_model_times_its_features_only(engine: FeatureEngine) -> None:
    """The rules answer: the feature state was updated and timed, no inference ran."""
    scorer = _scorer(engine, OneModel(None), stage_timing_every=1)
    assert _stages_timed(scorer, _raw(1)) == {"features": 1, "inference": 0, "reasons": 0}


class RecordedClockSkew:
    """A clock skew listener that keeps what it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, float]] = []

    def on_clock_skew(self, time: str, seconds_ahead: float) -> None:
        self.heard.append((time, seconds_ahead))


def test_an_event_time_beyond_the_skew_gets_the_fallback_uncounted(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """Ten minutes ahead of the server's clock (the skew allows five): the rules answer
    ("clock_skew"), the state is untouched, the listeners hear it without features, and the
    skew listener hears how far ahead it was; four minutes ahead, the model answers."""
    answers, skews = RecordedAnswers(), RecordedClockSkew()
    scorer = _scorer(engine, store, answer_listeners=[answers], clock_skew_listener=skews)
    ahead = _raw(1, timestamp_ns=time.time_ns() + 600 * NANOS_PER_SECOND)
    answer = scorer.score(ahead)
    assert answer == ScoreResult(
        "tx-1", 0.0, Decision.APPROVE, (), "", DecisionSource.FALLBACK, FallbackReason.CLOCK_SKEW
    )
    assert scorer.score(ahead) == answer  # a retry: not counted either, answered alike
    assert _card_count(engine) == 1
    assert [heard[1:3] for heard in answers.heard] == [(None, answer)] * 2
    assert [time_ for time_, _ in skews.heard] == ["event_time"] * 2
    assert all(599.0 < seconds <= 600.0 for _, seconds in skews.heard)

    in_time = scorer.score(_raw(2, timestamp_ns=time.time_ns() + 240 * NANOS_PER_SECOND))
    assert in_time.source is DecisionSource.MODEL
    assert len(skews.heard) == 2


def test_an_event_time_beyond_the_skew_without_fallback_is_unavailable(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """With the fallback disabled nothing may answer: ModelUnavailable, nothing counted."""
    scorer = _scorer(engine, store, fallback=FallbackPolicy("disabled"))
    with pytest.raises(ModelUnavailable, match="clock_skew"):
        scorer.score(_raw(1, timestamp_ns=time.time_ns() + 3_600 * NANOS_PER_SECOND))
    assert _card_count(engine) == 1


def test_a_report_time_beyond_the_skew_is_counted_and_heard(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """An outcome from a clock a day ahead is applied (from the latest time allowed) and
    kept; the skew listener hears it."""
    outcomes, skews = RecordedOutcomes(), RecordedClockSkew()
    scorer = _scorer(engine, store, outcome_listeners=[outcomes], clock_skew_listener=skews)
    before = time.time_ns()
    scorer.score(_raw(0, timestamp_ns=before - 60 * NANOS_PER_SECOND))
    scorer.report_outcome(RawOutcome("tx-0", True, before + DAY_NS))
    ((_, _, reported_at, fate, _),) = outcomes.heard
    assert fate is OutcomeFate.COUNTED
    assert reported_at <= time.time() + ScoringLimits().max_future_skew_seconds
    ((skewed_time, seconds),) = skews.heard
    assert skewed_time == "reported_at"
    assert 86_000.0 < seconds <= 86_400.0


NEW_KEY = b"the key rotated in"


def test_a_rotation_carries_a_card_s_history_over_to_its_new_token(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """With the previous key held, a card first seen under its new token continues the
    history kept under its old one; the new token keeps it from then on."""
    _scorer(engine, store).score(_raw(1, card_id=PAN))
    rotating = CardTokenizer(NEW_KEY, "k2", previous_key=b"test key", previous_key_id="k1")
    scorer = Scorer(
        engine, store, tokenizer=rotating, limits=ScoringLimits(), fallback=FallbackPolicy()
    )
    scorer.score(_raw(2, card_id=PAN))
    scorer.score(_raw(3, card_id="4111 1111 1111 1111"))
    new_token = rotating.token(PAN)
    assert new_token.startswith("k2:")
    assert _card_count(engine, new_token) == 4


def test_without_the_previous_key_a_new_key_starts_every_card_afresh(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """The control: a new key alone gives the card a new token with an empty history."""
    _scorer(engine, store).score(_raw(1, card_id=PAN))
    renamed = CardTokenizer(NEW_KEY, "k2")
    scorer = Scorer(
        engine, store, tokenizer=renamed, limits=ScoringLimits(), fallback=FallbackPolicy()
    )
    scorer.score(_raw(2, card_id=PAN))
    assert _card_count(engine, renamed.token(PAN)) == 2
    with pytest.raises(ConflictingRepeat, match=r"transaction\.card_id"):
        scorer.score(_raw(1, card_id=PAN))


def test_a_retry_across_a_rotation_is_the_same_transaction(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """A transaction scored under the previous key, retried after the rotation, gets its
    first answer and is not counted again; other content is still a conflict."""
    first = _scorer(engine, store).score(_raw(1, card_id=PAN))
    rotating = CardTokenizer(NEW_KEY, "k2", previous_key=b"test key", previous_key_id="k1")
    scorer = Scorer(
        engine, store, tokenizer=rotating, limits=ScoringLimits(), fallback=FallbackPolicy()
    )
    assert scorer.score(_raw(1, card_id=PAN)) == first
    assert _card_count(engine, TOKENIZER.token(PAN)) == 2
    with pytest.raises(ConflictingRepeat, match=r"transaction\.amount_minor"):
        scorer.score(_raw(1, card_id=PAN, amount_minor=9_999))


def test_the_upgrade_from_tokens_without_key_ids_keeps_every_history(
    engine: FeatureEngine, store: ModelStore
) -> None:
    """Tokens of releases before key ids ("tok_...") are the previous key's under the id
    "tok": the same key renamed k1 carries each card's history over."""
    legacy = CardTokenizer(b"test key", "tok")
    Scorer(
        engine, store, tokenizer=legacy, limits=ScoringLimits(), fallback=FallbackPolicy()
    ).score(_raw(1, card_id=PAN))
    assert legacy.token(PAN).startswith("tok_")
    renamed = CardTokenizer(b"test key", "k1", previous_key=b"test key", previous_key_id="tok")
    scorer = Scorer(
        engine, store, tokenizer=renamed, limits=ScoringLimits(), fallback=FallbackPolicy()
    )
    scorer.score(_raw(2, card_id=PAN))
    assert _card_count(engine, TOKENIZER.token(PAN)) == 3
