"""Tests for training.retraining.watch: the loop of looks, retrains and promotions, bounded by
max_checks."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.features import FeatureConfig
from service.model.registry import (
    CHALLENGER,
    CHAMPION,
    HISTORY_FILE,
    VERSIONS_DIR,
    Registry,
    RegistryError,
)
from tests.conftest import TrainedModel
from tests.service.registry_copies import copy_registry, remove_alias
from tests.training.retraining.test_server_scrape import MetricsEndpoint
from tests.training.retraining.test_triggers import decision, outcome, write_segment
from training.config import PromotionConfig, TrainSettings, TriggerConfig
from training.model_build.gates import GateFailure
from training.registry.publishing import decline, promote
from training.retraining.feedback import FeedbackError
from training.retraining.retrain import RetrainResult
from training.retraining.retrain import retrain as real_retrain
from training.retraining.watch import RetrainFn, watch

QUIET = TriggerConfig(schedule_hours=0, precision_floor=0, check_seconds=60)
SCHEDULE = QUIET.model_copy(update={"schedule_hours": 168})
PRECISION = QUIET.model_copy(update={"precision_floor": 0.5, "min_labelled_alerts": 10})
GATE_FAILURE = GateFailure([])


class FakeRetrain:
    """Stands in for `training.retraining.retrain.retrain`: records each call, then does `then`
    (record a decline, publish a challenger, raise)."""

    def __init__(self, then: Callable[[Path], RetrainResult]) -> None:
        self.triggers: list[str | None] = []
        self._then = then

    def __call__(
        self,
        registry_root: Path,
        decisions_dir: Path,
        outcomes_dir: Path,
        settings: TrainSettings,
        *,
        history: Path | None = None,
        trigger: str | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> RetrainResult:
        self.triggers.append(trigger)
        return self._then(registry_root)


def declines(root: Path) -> RetrainResult:
    """Decline as a real retrain does, recording it in the history."""
    decline(root, reason="retrain: nothing new to learn")
    return RetrainResult(False, None, "nothing new to learn", {}, "")


def waits_for_labels(root: Path) -> RetrainResult:
    """Decline for want of new fraud reports, recording it, as a real retrain does."""
    decline(root, reason="retrain: 2 new fraud reports, 10 needed")
    return RetrainResult(
        False, None, "2 new fraud reports, 10 needed", {}, "", waiting_for_labels=True
    )


def fails_gate(root: Path) -> RetrainResult:
    """Record the decline, then raise the gate failure, as a real retrain does."""
    decline(root, reason="retrain: quality gate failed")
    raise GATE_FAILURE


def crashes(_root: Path) -> RetrainResult:
    raise RuntimeError("disk full")


@pytest.fixture
def registry(tmp_path: Path, trained_model: TrainedModel) -> Path:
    """A copy of the trained registry: a champion, published moments ago."""
    return copy_registry(trained_model, tmp_path / "registry")


@pytest.fixture
def never_retrained(registry: Path) -> Path:
    """The registry with its history emptied: no publication, so the schedule is due."""
    (registry / HISTORY_FILE).write_text("", encoding="utf-8")
    return registry


@pytest.fixture
def low_precision_logs(tmp_path: Path, trained_model: TrainedModel) -> tuple[Path, Path]:
    """Logs in which the champion's labelled alerts are 3 frauds in 10 (label delay 7 days)."""
    alerts = [decision(f"w{n}", 10, model_version=trained_model.version) for n in range(10)]
    frauds = [outcome(f"w{n}", 11) for n in range(3)] + [outcome("w9", 20, is_fraud=False)]
    return (
        write_segment(tmp_path / "decisions", "decisions", alerts),
        write_segment(tmp_path / "outcomes", "outcomes", frauds),
    )


@pytest.fixture
def endpoint() -> Iterator[MetricsEndpoint]:
    """A metrics endpoint on 127.0.0.1, stopped after the test."""
    served = MetricsEndpoint()
    yield served
    served.close()


class Run:
    """One `watch` run's messages and waits."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def said_line(self, start: str) -> list[str]:
        return [line for line in self.said if line.startswith(start)]


def run_watch(
    root: Path,
    triggers: TriggerConfig,
    retrain_fn: RetrainFn,
    *,
    checks: int,
    logs: tuple[Path, Path] | None = None,
    promotion: PromotionConfig | None = None,
    sleep: Callable[[float], object] | None = None,
    settings: TrainSettings | None = None,
) -> tuple[int, Run]:
    """`watch` for `checks` looks with the given settings (by default, `triggers` and
    `promotion`; log directories without logs); its result and what it said."""
    run = Run()
    decisions, outcomes = logs or empty_log_dirs(root.parent)
    settings = settings or TrainSettings(
        triggers=triggers, promotion=promotion or PromotionConfig()
    )
    published = watch(
        root,
        decisions,
        outcomes,
        settings,
        max_checks=checks,
        retrain_fn=retrain_fn,
        say=run.said.append,
        sleep=sleep or run.sleep,
    )
    return published, run


def empty_log_dirs(parent: Path) -> tuple[Path, Path]:
    """Decision and outcome log directories under `parent`, holding no log yet."""
    decisions, outcomes = parent / "empty-decisions", parent / "empty-outcomes"
    for directory in (decisions, outcomes):
        directory.mkdir(exist_ok=True)
    return decisions, outcomes


def test_a_due_schedule_retrains_once_and_its_decline_quiets_it(never_retrained):
    """Three looks: the first retrains (trigger detail passed on), the decline quiets the rest."""
    retrain = FakeRetrain(declines)

    published, run = run_watch(never_retrained, SCHEDULE, retrain, checks=3)

    assert published == 0
    assert len(retrain.triggers) == 1
    assert (retrain.triggers[0] or "").startswith("schedule: no publication")
    assert run.waits == [60, 60]
    assert run.said_line("retrain declined: nothing new to learn")
    assert len(run.said_line("look ")) == 3


def test_published_retrains_are_counted_and_the_manual_policy_said(never_retrained, other_model):
    """A retrain that names a challenger counts; the manual policy then says a person decides."""

    def publishes(root: Path) -> RetrainResult:
        shutil.copytree(
            other_model.registry / VERSIONS_DIR / other_model.version,
            root / VERSIONS_DIR / other_model.version,
        )
        promote(root, other_model.version, alias=CHALLENGER, reason="retrain: better")
        return RetrainResult(True, other_model.version, "better", {}, "")

    published, run = run_watch(never_retrained, SCHEDULE, FakeRetrain(publishes), checks=1)

    assert published == 1
    assert run.said_line(f"retrain published challenger {other_model.version}")
    [verdict] = run.said_line("promotion: ")
    assert "a person must" in verdict


def test_a_retrain_that_raises_is_reported_and_tried_again(never_retrained):
    """A crash ends neither the look nor the loop; the trigger, unanswered, fires again."""
    retrain = FakeRetrain(crashes)

    published, run = run_watch(never_retrained, SCHEDULE, retrain, checks=2)

    assert published == 0
    assert len(retrain.triggers) == 2
    assert run.said_line("retrain failed: RuntimeError: disk full")
    assert len(run.said_line("promotion: ")) == 2


def test_unreadable_logs_are_reported_and_the_other_triggers_still_judged(never_retrained):
    """No decision logged yet: the precision step fails and says so; the schedule still fires."""
    retrain = FakeRetrain(declines)
    triggers = SCHEDULE.model_copy(update={"precision_floor": 0.5})

    _, run = run_watch(never_retrained, triggers, retrain, checks=1)

    assert len(retrain.triggers) == 1
    [failure] = run.said_line("precision failed: FeedbackError")
    assert "holds no decisions-*.jsonl segment" in failure


def test_low_live_precision_triggers_a_retrain(registry, low_precision_logs):
    """The champion's precision of 0.3 under a 0.5 floor starts a retrain with the figures."""
    retrain = FakeRetrain(declines)

    run_watch(registry, PRECISION, retrain, checks=1, logs=low_precision_logs)

    [trigger] = retrain.triggers
    assert (trigger or "").startswith("precision: precision 0.300 (3 frauds in 10 labelled")


def test_a_gate_failure_answers_its_trigger_and_a_crash_does_not(registry, low_precision_logs):
    """Two looks at lasting low precision: a gate failure retrains once, a crash twice."""
    gated, crashed = FakeRetrain(fails_gate), FakeRetrain(crashes)

    _, run = run_watch(registry, PRECISION, gated, checks=2, logs=low_precision_logs)
    run_watch(registry, PRECISION, crashed, checks=2, logs=low_precision_logs)

    assert (len(gated.triggers), len(crashed.triggers)) == (1, 2)
    assert run.said_line("retrain declined: quality gate failed")


def test_a_retrain_waiting_for_labels_runs_again_once_new_reports_arrive(
    registry, low_precision_logs
):
    """Lasting low precision: a retrain waiting for fraud reports leaves the trigger armed,
    and the next retrain runs once the outcome log has grown (here, a report arriving during
    each of the first two); the first that declines on its merits quiets the trigger."""
    _, outcomes = low_precision_logs

    def reported_meanwhile(root: Path) -> RetrainResult:
        with (outcomes / "outcomes-20260902T000000000000Z-100-0.jsonl").open("a") as segment:
            segment.write(json.dumps(outcome(f"late-{len(retrain.triggers)}", 21)) + "\n")
        return waits_for_labels(root)

    then = iter([reported_meanwhile, reported_meanwhile, declines])
    retrain = FakeRetrain(lambda root: next(then)(root))
    recorded = len(Registry(registry).history())

    _, run = run_watch(registry, PRECISION, retrain, checks=4, logs=low_precision_logs)

    assert len(retrain.triggers) == 3
    actions = [entry.action for entry in Registry(registry).history()[recorded:]]
    assert actions == ["decline"] * 3
    assert len(run.said_line("retrain waits for new fraud reports")) == 2


def test_a_retrain_waiting_for_labels_is_not_repeated_until_the_outcome_log_grows(
    registry, low_precision_logs
):
    """With no report arriving, the real retrain declines once (one history entry); later
    looks say they still wait instead of recording the same decline again."""
    recorded = len(Registry(registry).history())

    _, run = run_watch(registry, PRECISION, real_retrain, checks=3, logs=low_precision_logs)

    [declined] = Registry(registry).history()[recorded:]
    assert declined.action == "decline"
    assert "nothing new to learn" in declined.reason
    assert len(run.said_line("retrain waits for new fraud reports")) == 1
    assert len(run.said_line("still waiting for new fraud reports")) == 2


def test_lasting_drift_on_a_servers_metrics_retrains_once(registry, endpoint):
    """Amount PSI 0.5 on every look, two needed: the second look retrains, the third does not."""
    endpoint.body = '# TYPE fraud_drift_psi gauge\nfraud_drift_psi{feature="amount"} 0.5\n'
    triggers = QUIET.model_copy(update={"metrics_urls": [endpoint.url], "drift_checks": 2})
    retrain = FakeRetrain(declines)

    _, run = run_watch(registry, triggers, retrain, checks=3)

    [trigger] = retrain.triggers
    assert run.said.index("drift trigger fired: retraining") > run.said.index("look 2")
    assert (trigger or "").startswith("drift: PSI 0.500 of amount")


def test_an_unreachable_server_is_reported_and_the_loop_goes_on(registry, endpoint):
    """A server that stopped answering is named in the log at every look."""
    triggers = QUIET.model_copy(update={"metrics_urls": [endpoint.url]})
    endpoint.close()

    _, run = run_watch(registry, triggers, FakeRetrain(declines), checks=2)

    assert len(run.said_line(f"metrics of {endpoint.url} unread")) == 2


def test_the_automatic_policy_promotes_once_the_shadow_has_agreed(
    registry, endpoint, trained_model, other_model
):
    """First look: the shadow count starts; by the second, 200 agreeing comparisons promote."""
    shutil.copytree(
        other_model.registry / VERSIONS_DIR / other_model.version,
        registry / VERSIONS_DIR / other_model.version,
    )
    promote(registry, other_model.version, alias=CHALLENGER, reason="retrain: better")
    endpoint.body = shadow_text(other_model.version, agree=1_000)
    triggers = QUIET.model_copy(update={"metrics_urls": [endpoint.url]})
    automatic = PromotionConfig(
        mode="automatic", shadow_hours=0, min_comparisons=100, min_average_precision=0
    )

    def comparisons_arrive(_seconds: float) -> None:
        endpoint.body = shadow_text(other_model.version, agree=1_200)

    _, run = run_watch(
        registry,
        triggers,
        FakeRetrain(declines),
        checks=2,
        promotion=automatic,
        sleep=comparisons_arrive,
    )

    first, second = run.said_line("promotion: ")
    assert "waits: 0 comparisons" in first
    assert second.startswith(f"promotion: promoted challenger {other_model.version}")
    assert Registry(registry).alias(CHAMPION) == other_model.version


def test_setting_stop_ends_the_loop_without_max_checks(registry, tmp_path):
    """With no bound on looks, the loop ends once `stop` is set (here, while it waits)."""
    stop = threading.Event()
    run = Run()
    decisions, outcomes = empty_log_dirs(tmp_path)

    published = watch(
        registry,
        decisions,
        outcomes,
        TrainSettings(triggers=QUIET),
        retrain_fn=FakeRetrain(declines),
        say=run.said.append,
        sleep=lambda _seconds: stop.set(),
        stop=stop,
    )

    assert published == 0
    assert len(run.said_line("look ")) == 1
    assert run.said[-1] == "watch ended: 1 looks, 0 challengers published"


def shadow_text(challenger: str, *, agree: int) -> str:
    """A server's metrics: shadowing `challenger`, `agree` agreeing comparisons so far."""
    return (
        "# TYPE fraud_model_info gauge\n"
        f'fraud_model_info{{alias="challenger",version="{challenger}"}} 1.0\n'
        "# TYPE fraud_shadow_comparisons_total counter\n"
        f'fraud_shadow_comparisons_total{{agreement="agree"}} {agree}.0\n'
    )


def test_a_registry_without_a_champion_is_refused_before_any_look(registry):
    """No champion to compare with: RegistryError at once, instead of a failed retrain per look."""
    remove_alias(registry, CHAMPION)
    retrain = FakeRetrain(declines)

    with pytest.raises(RegistryError, match="no champion"):
        run_watch(registry, SCHEDULE, retrain, checks=1)

    assert retrain.triggers == []


def test_a_champion_reading_other_features_is_refused_before_any_look(registry):
    """A champion built with another feature configuration could never be retrained here."""
    settings = TrainSettings(triggers=SCHEDULE, features=FeatureConfig(label_delay_days=3))
    retrain = FakeRetrain(declines)

    with pytest.raises(RegistryError, match="reads other features"):
        run_watch(registry, SCHEDULE, retrain, checks=1, settings=settings)

    assert retrain.triggers == []


@pytest.mark.parametrize("missing", ["decisions", "outcomes"])
def test_a_missing_log_directory_is_refused_before_any_look(registry, tmp_path, missing):
    """A log directory that does not exist (a wrong path) is named at once."""
    logs = dict(zip(("decisions", "outcomes"), empty_log_dirs(tmp_path), strict=True))
    logs[missing] = logs[missing].with_name("typo")
    retrain = FakeRetrain(declines)

    with pytest.raises(FeedbackError, match=f"{missing[:-1]} log directory .*typo does not exist"):
        run_watch(registry, SCHEDULE, retrain, checks=1, logs=(logs["decisions"], logs["outcomes"]))

    assert retrain.triggers == []
