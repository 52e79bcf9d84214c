"""Tests for training.retraining.promotion: the manual and automatic policies, on real
registries."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.model.artifact import Lineage
from service.model.registry import CHALLENGER, CHAMPION, VERSIONS_DIR, HistoryEntry, Registry
from tests.conftest import TrainedModel
from tests.service.registry_copies import copy_registry, edit_manifest
from training.config import PromotionConfig, TrainSettings, TriggerConfig
from training.registry.publishing import promote
from training.retraining.promotion import (
    WITHHELD,
    PromotionVerdict,
    ShadowTracker,
    consider_promotion,
    named_challenger_at,
)
from training.retraining.server_scrape import MetricsLook, ServerMetrics, ShadowCounts

AUTOMATIC = PromotionConfig(
    mode="automatic",
    shadow_hours=24,
    min_comparisons=100,
    min_agreement=0.9,
    min_average_precision=0.0,
)
METRICS_URL = "http://127.0.0.1:9464/metrics"
SETTINGS = TrainSettings(promotion=AUTOMATIC, triggers=TriggerConfig(metrics_urls=[METRICS_URL]))
AGREEING = ShadowCounts(agree=190, disagree=10)


@pytest.fixture
def registry(tmp_path: Path, trained_model: TrainedModel, other_model: TrainedModel) -> Path:
    """The trained champion's registry, with the other model published there as challenger."""
    root = copy_registry(trained_model, tmp_path / "registry")
    shutil.copytree(
        other_model.registry / VERSIONS_DIR / other_model.version,
        root / VERSIONS_DIR / other_model.version,
    )
    promote(root, other_model.version, alias=CHALLENGER, reason="retrain: test challenger")
    return root


def shadowed_for(root: Path, hours: float) -> datetime:
    """The wall time `hours` after the challenger was named."""
    named_at = named_challenger_at(Registry(root).history(), Registry(root).alias(CHALLENGER) or "")
    assert named_at is not None
    return named_at + timedelta(hours=hours)


def consider(
    root: Path,
    shadow: ShadowCounts | None = AGREEING,
    *,
    hours: float = 25,
    settings: TrainSettings = SETTINGS,
) -> PromotionVerdict:
    """The automatic policy's verdict `hours` after the challenger was named."""
    return consider_promotion(root, settings, shadow, now=shadowed_for(root, hours))


def withheld_entries(root: Path) -> list[HistoryEntry]:
    """The history's records of a withheld automatic promotion."""
    return [entry for entry in Registry(root).history() if entry.reason.startswith(WITHHELD)]


def with_policy(**changes: Any) -> TrainSettings:
    """SETTINGS with the promotion policy changed."""
    return SETTINGS.model_copy(update={"promotion": AUTOMATIC.model_copy(update=changes)})


def test_manual_mode_never_promotes_and_says_who_must(registry, trained_model):
    """Manual: conditions all met, still no promotion; the reason names the command."""
    settings = with_policy(mode="manual")
    history_before = Registry(registry).history()

    verdict = consider(registry, settings=settings)

    assert not verdict.promoted
    assert "fraud-train registry promote challenger" in verdict.reason
    assert Registry(registry).alias(CHAMPION) == trained_model.version
    assert Registry(registry).history() == history_before


def test_without_a_challenger_in_shadow_nothing_happens(tmp_path, trained_model):
    """A registry whose only model is the champion has nothing to promote."""
    root = copy_registry(trained_model, tmp_path / "registry")

    verdict = consider_promotion(root, SETTINGS, AGREEING, now=datetime.now(UTC))

    assert verdict == PromotionVerdict(False, "no challenger in shadow")


def test_a_challenger_meeting_every_condition_is_promoted_with_the_evidence(registry, other_model):
    """Automatic: promoted, and the history says so with every figure behind it."""
    verdict = consider(registry)

    assert verdict.promoted
    assert Registry(registry).alias(CHAMPION) == other_model.version
    last = Registry(registry).history()[-1]
    assert (last.action, last.alias, last.version) == ("promote", CHAMPION, other_model.version)
    assert last.reason.startswith("automatic: ")
    for evidence in ("average precision", "in shadow 25.0 h", "200 comparisons, agreement 0.950"):
        assert evidence in last.reason


def test_a_challenger_not_long_enough_in_shadow_waits_unrecorded(registry, trained_model):
    """Two hours of a 24-hour shadow period: no promotion, nothing written to the history."""
    history_before = Registry(registry).history()

    verdict = consider(registry, hours=2)

    assert not verdict.promoted
    assert "waits: in shadow 2.0 h (24 needed)" in verdict.reason
    assert Registry(registry).history() == history_before
    assert Registry(registry).alias(CHAMPION) == trained_model.version


def test_too_few_comparisons_wait_unrecorded(registry):
    """Fifty comparisons of the hundred needed: waiting, not a judgement to record."""
    verdict = consider(registry, ShadowCounts(agree=50))

    assert not verdict.promoted
    assert "waits: 50 comparisons" in verdict.reason
    assert withheld_entries(registry) == []


def test_no_server_shadowing_the_challenger_waits(registry):
    """Without shadow counts (no server reported it) the policy waits."""
    verdict = consider(registry, None)

    assert "waits: no server answered" in verdict.reason
    assert withheld_entries(registry) == []


def test_low_agreement_is_withheld_and_recorded_once(registry, trained_model, other_model):
    """Agreement 0.5 withholds the promotion; the refusal is recorded once, not at every look."""
    disagreeing = ShadowCounts(agree=100, disagree=100)

    first = consider(registry, disagreeing)
    second = consider(registry, disagreeing, hours=30)

    assert not first.promoted
    assert not second.promoted
    assert WITHHELD in first.reason
    [entry] = withheld_entries(registry)
    assert (entry.action, entry.alias, entry.version) == ("refuse", CHAMPION, other_model.version)
    assert "agreement 0.500" in entry.reason
    assert Registry(registry).alias(CHAMPION) == trained_model.version


def test_a_low_average_precision_is_recorded_without_waiting_for_the_shadow(registry):
    """A challenger below the quality floor is withheld at once: waiting cannot fix it."""
    verdict = consider(registry, hours=1, settings=with_policy(min_average_precision=1.0))

    assert not verdict.promoted
    [entry] = withheld_entries(registry)
    assert "average precision" in entry.reason
    assert "(1 needed)" in entry.reason


def test_without_metrics_urls_the_shadow_cannot_vouch_for_the_challenger(registry):
    """No metrics configured: the agreement is unmeasured, the promotion withheld and recorded."""
    settings = SETTINGS.model_copy(update={"triggers": TriggerConfig()})

    verdict = consider(registry, None, settings=settings)

    assert not verdict.promoted
    [entry] = withheld_entries(registry)
    assert "no metrics_urls" in entry.reason


def test_the_retrain_comparison_is_preferred_to_the_test_metrics(registry, other_model):
    """A challenger with a lineage is judged on its retrain evaluation window's average
    precision, not on the test metrics of its manifest."""
    artifact_dir = Registry(registry).artifact_dir(other_model.version)
    edit_manifest(artifact_dir, lambda manifest: manifest.update(lineage=lineage(0.123)))

    verdict = consider(registry, settings=with_policy(min_average_precision=0.2))

    assert not verdict.promoted
    [entry] = withheld_entries(registry)
    assert "average precision 0.123 on its retrain evaluation window" in entry.reason


def lineage(candidate_average_precision: float) -> dict[str, Any]:
    """A retrain lineage whose comparison gives the candidate this average precision."""
    moment = datetime(2026, 9, 1, tzinfo=UTC)
    return Lineage(
        kind="retrain",
        data_start=moment,
        data_end=moment,
        parent_version=None,
        sources=[],
        gates=[],
        comparison={
            "champion": {"average_precision": 0.9},
            "candidate": {"average_precision": candidate_average_precision},
        },
    ).model_dump(mode="json")


CHALLENGER_A = "20260902T000000Z-bbbbbbbb"
CHALLENGER_B = "20260903T000000Z-cccccccc"


def shadowing(
    url: str, challenger: str, agree: int, disagree: int = 0, *, started_at: float | None = None
) -> ServerMetrics:
    """A server shadowing `challenger`, its counters at (agree, disagree), started at
    `started_at` (None: it does not say)."""
    return ServerMetrics(
        url, {}, None, ShadowCounts(agree, disagree), {CHALLENGER: challenger}, started_at
    )


def test_shadow_counts_start_at_the_first_look_at_each_server():
    """Comparisons before the first look (maybe another challenger's) are not counted."""
    tracker = ShadowTracker()

    first = tracker.counts(MetricsLook((shadowing("a", CHALLENGER_A, 1_000, 500),)), CHALLENGER_A)
    later = tracker.counts(MetricsLook((shadowing("a", CHALLENGER_A, 1_090, 510),)), CHALLENGER_A)

    assert first == ShadowCounts()
    assert later == ShadowCounts(90, 10)


def test_shadow_counts_add_up_over_servers_shadowing_the_challenger_only():
    """Two servers on the challenger add up; one still shadowing the old one is left out."""
    tracker = ShadowTracker()
    servers = [("a", CHALLENGER_A, 0), ("b", CHALLENGER_A, 0), ("c", CHALLENGER_B, 0)]
    tracker.counts(MetricsLook(tuple(shadowing(*server) for server in servers)), CHALLENGER_A)
    servers = [("a", CHALLENGER_A, 30), ("b", CHALLENGER_A, 40), ("c", CHALLENGER_B, 500)]

    counts = tracker.counts(
        MetricsLook(tuple(shadowing(*server) for server in servers)), CHALLENGER_A
    )

    assert counts == ShadowCounts(70, 0)


def test_a_restarted_server_starts_a_new_baseline():
    """Counters that went down mean a restart: counting resumes from the new values."""
    tracker = ShadowTracker()
    for agree in (100, 150, 20, 45):
        counts = tracker.counts(MetricsLook((shadowing("a", CHALLENGER_A, agree),)), CHALLENGER_A)

    assert counts == ShadowCounts(25, 0)


def test_a_server_restarted_past_its_old_counts_starts_a_new_baseline():
    """A new start time means a new process, even when its counters already exceed the old
    baseline: only what the new process counted after its first look counts."""
    tracker = ShadowTracker()
    for agree, started_at in ((100, 1_000.0), (150, 1_000.0), (400, 2_000.0), (430, 2_000.0)):
        server = shadowing("a", CHALLENGER_A, agree, started_at=started_at)
        counts = tracker.counts(MetricsLook((server,)), CHALLENGER_A)

    assert counts == ShadowCounts(30, 0)


def test_a_new_challenger_starts_a_new_count():
    """The same server moving to another challenger counts from then on."""
    tracker = ShadowTracker()
    tracker.counts(MetricsLook((shadowing("a", CHALLENGER_A, 0),)), CHALLENGER_A)
    tracker.counts(MetricsLook((shadowing("a", CHALLENGER_A, 100),)), CHALLENGER_A)

    moved = tracker.counts(MetricsLook((shadowing("a", CHALLENGER_B, 120),)), CHALLENGER_B)
    later = tracker.counts(MetricsLook((shadowing("a", CHALLENGER_B, 130),)), CHALLENGER_B)

    assert (moved, later) == (ShadowCounts(), ShadowCounts(10, 0))


def test_no_server_shadowing_the_challenger_gives_no_counts():
    """Servers that shadow nothing, or another version, say nothing of this challenger."""
    tracker = ShadowTracker()
    look = MetricsLook((shadowing("a", CHALLENGER_B, 10),), {"b": "refused"})

    assert tracker.counts(look, CHALLENGER_A) is None
