"""Tests for service.model.shadow: the challenger scores the champion's decisions later, on real
models loaded from a copy of the trained registry.

The schedule only records the drain callbacks, so each test decides when the drain runs, as
the event loop would after the answer is sent. Metrics live on the process-wide registry:
every check compares values before and after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.core.card_tokens import CardTokenizer
from service.core.domain import Decision, DecisionSource
from service.core.scoring import FallbackPolicy, Scorer, decision_for
from service.core.validation import ScoringLimits
from service.features import FeatureEngine
from service.model.loading import LoadedModel
from service.model.registry import CHALLENGER
from service.model.shadow import ShadowScorer
from service.model.store import ModelStore
from service.observability.logs import RequestLogSampler
from tests.conftest import TrainedModel
from tests.factories import raw_transaction
from tests.process_metrics import sample_value
from tests.service.registry_copies import (
    copy_registry,
    point_alias,
    publish_copy,
    remove_alias,
    set_thresholds,
)

DECLINER = "20990102T000000Z-4567cdef"  # the champion's model, declining every score
TWIN = "20990104T000000Z-0a1b2c3d"  # the champion's model and thresholds, another version

Drain = Callable[[], None]
# The shadow's counters: comparisons by agreement, skips by reason.
COUNTERS = {
    "agree": ("fraud_shadow_comparisons_total", {"agreement": "agree"}),
    "disagree": ("fraud_shadow_comparisons_total", {"agreement": "disagree"}),
    "backlog_full": ("fraud_shadow_skipped_total", {"reason": "backlog_full"}),
    "challenger_error": ("fraud_shadow_skipped_total", {"reason": "challenger_error"}),
    "scores": ("fraud_shadow_score_count", {}),
    "differences": ("fraud_shadow_score_difference_count", {}),
    # Every challenger here runs the champion's model: the scores never differ.
    "difference_sum": ("fraud_shadow_score_difference_sum", {}),
}


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """The trained registry with two challengers published: DECLINER and TWIN."""
    root = copy_registry(trained_model, tmp_path / "registry")
    set_thresholds(publish_copy(root, DECLINER), review=0.0, decline=0.0)
    publish_copy(root, TWIN)
    return root


@pytest.fixture
def scheduled() -> list[Drain]:
    """The drains the shadow asked to run, in order; none runs until the test calls it."""
    return []


def _store(registry: Path, challenger: str | None) -> ModelStore:
    """The registry's champion, and `challenger` if given, loaded."""
    if challenger is not None:
        point_alias(registry, CHALLENGER, challenger)
    store = ModelStore(registry)
    store.refresh()
    return store


def _champion(store: ModelStore) -> LoadedModel:
    assert store.current is not None
    return store.current


def _shadow(store: ModelStore, scheduled: list[Drain], **options: int) -> ShadowScorer:
    return ShadowScorer(store, scheduled.append, log_sampler=RequestLogSampler(0.0), **options)


def _approvals(champion: LoadedModel) -> Iterator[tuple[list[float], float]]:
    """Golden rows the champion approves, with its score."""
    for row in champion.manifest.golden_sample.features:
        score = champion.scorer.score_one(row)
        if decision_for(score, champion.thresholds) is Decision.APPROVE:
            yield row, score


def _submit_approvals(shadow: ShadowScorer, champion: LoadedModel, count: int) -> None:
    """Hand the shadow `count` transactions the champion approved."""
    rows = _approvals(champion)
    for number in range(count):
        features, score = next(rows)
        shadow.submit(f"tx-{number}", features, champion, score, Decision.APPROVE)


def _counters() -> dict[str, float]:
    return {key: sample_value(name, labels) or 0.0 for key, (name, labels) in COUNTERS.items()}


def _moved(before: dict[str, float]) -> dict[str, float]:
    """The counters that moved since `before`, by how much."""
    after = _counters()
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


def _drain_all(scheduled: list[Drain]) -> None:
    """Run the drains scheduled so far, as the event loop would."""
    while scheduled:
        scheduled.pop(0)()


def test_submit_only_queues_and_the_drain_compares(registry: Path, scheduled: list[Drain]) -> None:
    """Nothing is scored until the one scheduled drain runs; then every transaction is."""
    store = _store(registry, DECLINER)
    shadow = _shadow(store, scheduled)
    before = _counters()
    _submit_approvals(shadow, _champion(store), 3)
    assert len(scheduled) == 1
    assert _moved(before) == {}
    _drain_all(scheduled)
    assert _moved(before) == {"disagree": 3, "scores": 3, "differences": 3}


def test_a_submit_after_a_drain_schedules_another(registry: Path, scheduled: list[Drain]) -> None:
    """The drain is scheduled once per backlog, and again for what arrives after it ran."""
    store = _store(registry, DECLINER)
    shadow = _shadow(store, scheduled)
    _submit_approvals(shadow, _champion(store), 2)
    _drain_all(scheduled)
    before = _counters()
    _submit_approvals(shadow, _champion(store), 1)
    assert len(scheduled) == 1
    _drain_all(scheduled)
    assert _moved(before)["disagree"] == 1


def test_a_challenger_deciding_like_the_champion_agrees(
    registry: Path, scheduled: list[Drain]
) -> None:
    """The same model and thresholds under another version agree, with no score difference."""
    store = _store(registry, TWIN)
    shadow = _shadow(store, scheduled)
    before = _counters()
    _submit_approvals(shadow, _champion(store), 3)
    _drain_all(scheduled)
    assert _moved(before) == {"agree": 3, "scores": 3, "differences": 3}


def test_beyond_the_backlog_limit_transactions_are_skipped_and_counted(
    registry: Path, scheduled: list[Drain]
) -> None:
    """With the backlog full, a new transaction is dropped as "backlog_full", not queued."""
    store = _store(registry, DECLINER)
    shadow = _shadow(store, scheduled, backlog_limit=2)
    before = _counters()
    _submit_approvals(shadow, _champion(store), 3)
    assert _moved(before) == {"backlog_full": 1}
    _drain_all(scheduled)
    assert _moved(before)["disagree"] == 2


def test_without_a_challenger_nothing_is_queued(registry: Path, scheduled: list[Drain]) -> None:
    """No challenger alias: submit neither queues nor schedules anything."""
    store = _store(registry, None)
    shadow = _shadow(store, scheduled)
    before = _counters()
    _submit_approvals(shadow, _champion(store), 2)
    assert scheduled == []
    assert _moved(before) == {}


def test_a_challenger_on_the_champions_version_is_not_compared(
    registry: Path, scheduled: list[Drain]
) -> None:
    """Comparing a model with itself says nothing: nothing is queued."""
    champion_version = _champion(_store(registry, None)).version
    store = _store(registry, champion_version)
    shadow = _shadow(store, scheduled)
    before = _counters()
    _submit_approvals(shadow, _champion(store), 2)
    assert scheduled == []
    assert _moved(before) == {}


def test_a_challenger_retired_before_the_drain_drops_the_backlog(
    registry: Path, scheduled: list[Drain]
) -> None:
    """The drain finds no challenger: the backlog is dropped, not kept for a later one."""
    store = _store(registry, DECLINER)
    shadow = _shadow(store, scheduled)
    before = _counters()
    _submit_approvals(shadow, _champion(store), 2)
    remove_alias(registry, CHALLENGER)
    store.refresh()
    _drain_all(scheduled)
    point_alias(registry, CHALLENGER, DECLINER)
    store.refresh()
    shadow.drain()
    assert _moved(before) == {}


def test_a_challenger_moved_onto_the_champions_version_before_the_drain_compares_nothing(
    registry: Path, scheduled: list[Drain]
) -> None:
    """Transactions queued for another challenger are not compared with the champion itself."""
    store = _store(registry, DECLINER)
    shadow = _shadow(store, scheduled)
    champion = _champion(store)
    before = _counters()
    _submit_approvals(shadow, champion, 2)
    point_alias(registry, CHALLENGER, champion.version)
    store.refresh()
    _drain_all(scheduled)
    assert _moved(before) == {}


def test_a_row_the_challenger_cannot_score_is_skipped_and_counted(
    registry: Path, scheduled: list[Drain]
) -> None:
    """A failing challenger costs a "challenger_error" count, and the next rows still score."""
    store = _store(registry, DECLINER)
    shadow = _shadow(store, scheduled)
    champion = _champion(store)
    before = _counters()
    shadow.submit("tx-short", [1.0, 2.0], champion, 0.01, Decision.APPROVE)
    _submit_approvals(shadow, champion, 1)
    _drain_all(scheduled)
    assert _moved(before) == {
        "challenger_error": 1,
        "disagree": 1,
        "scores": 1,
        "differences": 1,
    }


def test_the_scorer_hands_the_shadow_model_decisions_only(
    registry: Path, scheduled: list[Drain]
) -> None:
    """Model answers reach the challenger; fallback answers (budget spent) do not."""
    store = _store(registry, DECLINER)
    engine = FeatureEngine(_champion(store).manifest.feature_config)
    scorer = Scorer(
        engine,
        store,
        tokenizer=CardTokenizer(b"test key"),
        limits=ScoringLimits(),
        fallback=FallbackPolicy(),
        answer_listeners=[_shadow(store, scheduled)],
    )
    before = _counters()
    answered = [
        scorer.score(raw_transaction(1)),
        scorer.score(raw_transaction(2), deadline=time.monotonic() - 1),
        scorer.score(raw_transaction(3)),
    ]
    assert [result.source for result in answered] == [
        DecisionSource.MODEL,
        DecisionSource.FALLBACK,
        DecisionSource.MODEL,
    ]
    assert len(scheduled) == 1
    _drain_all(scheduled)
    moved = _moved(before)
    assert moved.get("agree", 0) + moved.get("disagree", 0) == 2
    assert moved["scores"] == 2
