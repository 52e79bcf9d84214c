"""The retrain loop (`fraud-train retrain --watch`): look at the triggers, retrain when one
fires, then consider promoting the challenger; again every `check_seconds`.

One look, each step logged through `say`:

1. read every server's `/metrics` (`training.server_metrics`), when some are configured;
2. measure the champion's live precision from the decision and outcome logs, when that
   trigger is on;
3. ask the triggers (`training.triggers`); the first that fires starts a retrain
   (`training.retrain`), its detail recorded as the retrain's trigger;
4. count the challenger's shadow comparisons and apply the promotion policy
   (`training.promotion`).

A step that fails (unreadable logs, a corrupt registry, a retrain that raises) is logged
and the look goes on without it, the loop with the next look: a watch loop is meant to run
for months, and the next look may find the problem gone. A retrain that raised did not
answer its trigger, which fires again at the next look; one stopped by a quality gate
(`GateFailure`) did: it recorded its decline like any other. The loop ends after `max_checks`
looks, or when `stop` is set (the CLI sets it on SIGTERM and SIGINT); waiting between looks
wakes at once when it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from service.features import FEATURES
from service.registry import CHALLENGER, CHAMPION, Registry
from training.config import TrainSettings
from training.feedback import read_decision_log, read_outcomes
from training.gates import GateFailure
from training.promotion import ShadowTracker, consider_promotion
from training.retrain import RetrainResult, retrain
from training.server_metrics import MetricsLook, read_servers
from training.triggers import Fired, LivePrecision, Triggers, live_precision

Say = Callable[[str], None]
_T = TypeVar("_T")


class RetrainFn(Protocol):
    """What the loop calls to retrain: `training.retrain.retrain` or a stand-in."""

    def __call__(
        self,
        registry_root: Path,
        decisions_dir: Path,
        outcomes_dir: Path,
        settings: TrainSettings,
        *,
        history: Path | None = ...,
        trigger: str | None = ...,
        say: Say = ...,
    ) -> RetrainResult: ...


def _quiet(_message: str) -> None:
    """A `say` that says nothing."""


def watch(
    registry_root: Path,
    decisions_dir: Path,
    outcomes_dir: Path,
    settings: TrainSettings,
    *,
    history: Path | None = None,
    max_checks: int | None = None,
    retrain_fn: RetrainFn = retrain,
    say: Say = _quiet,
    sleep: Callable[[float], object] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Look, retrain and promote until `max_checks` looks (None: until `stop` is set);
    the number of retrains that published a challenger.

    `sleep` waits between looks; by default, on `stop`, so that setting it ends the wait.
    `history` is passed on to every retrain.
    """
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    watcher = _Watcher(
        registry_root, decisions_dir, outcomes_dir, settings, history, retrain_fn, say
    )
    published = checks = 0
    while not stop.is_set():
        checks += 1
        published += watcher.look(checks)
        if max_checks is not None and checks >= max_checks:
            break
        wait(settings.triggers.check_seconds)
    say(f"watch ended: {checks} looks, {published} challengers published")
    return published


class _Watcher:
    """One look's steps, and what the triggers and the shadow count keep between looks."""

    def __init__(
        self,
        registry_root: Path,
        decisions_dir: Path,
        outcomes_dir: Path,
        settings: TrainSettings,
        history: Path | None,
        retrain_fn: RetrainFn,
        say: Say,
    ) -> None:
        self._registry = Registry(registry_root)
        self._decisions_dir = decisions_dir
        self._outcomes_dir = outcomes_dir
        self._settings = settings
        self._history = history
        self._retrain_fn = retrain_fn
        self._say = say
        self._triggers = Triggers(settings.triggers)
        self._shadow = ShadowTracker()

    def look(self, number: int) -> bool:
        """Look once; whether a retrain published a challenger."""
        self._say(f"look {number}")
        metrics = self._read_metrics()
        fired = self._attempt("triggers", partial(self._check_triggers, metrics))
        published = fired is not None and bool(
            self._attempt("retrain", partial(self._retrain, fired))
        )
        self._attempt("promotion", partial(self._consider_promotion, metrics))
        return published

    def _read_metrics(self) -> MetricsLook | None:
        urls = self._settings.triggers.metrics_urls
        if not urls:
            return None
        metrics = read_servers(urls)
        for url, reason in metrics.unreachable.items():
            self._say(f"metrics of {url} unread: {reason}")
        return metrics

    def _check_triggers(self, metrics: MetricsLook | None) -> Fired | None:
        fired = self._triggers.check(
            history=self._registry.history(),
            now=datetime.now(UTC),
            metrics=metrics,
            precision=self._attempt("precision", self._measure_precision),
        )
        for detail in self._triggers.details:
            self._say(detail)
        return fired

    def _measure_precision(self) -> LivePrecision | None:
        champion = self._registry.alias(CHAMPION)
        if self._settings.triggers.precision_floor == 0 or champion is None:
            return None
        return live_precision(
            read_decision_log(self._decisions_dir, feature_count=len(FEATURES)),
            read_outcomes(self._outcomes_dir),
            champion=champion,
            window_days=self._settings.triggers.precision_window_days,
            label_delay_ns=round(self._settings.features.label_delay_seconds * 1e9),
        )

    def _retrain(self, fired: Fired) -> bool:
        self._say(f"{fired.name} trigger fired: retraining")
        try:
            result = self._retrain_fn(
                self._registry.root,
                self._decisions_dir,
                self._outcomes_dir,
                self._settings,
                history=self._history,
                trigger=fired.detail,
                say=self._say,
            )
        except GateFailure as failure:
            # The retrain ran to its end and recorded its decline: the evidence is answered.
            self._triggers.retrained()
            self._say(f"retrain declined: {failure}")
            return False
        self._triggers.retrained()
        outcome = f"published challenger {result.version}" if result.published else "declined"
        self._say(f"retrain {outcome}: {result.reason}")
        return result.published

    def _consider_promotion(self, metrics: MetricsLook | None) -> None:
        challenger = self._registry.alias(CHALLENGER)
        shadow = (
            None
            if metrics is None or challenger is None
            else self._shadow.counts(metrics, challenger)
        )
        verdict = consider_promotion(
            self._registry.root, self._settings, shadow, now=datetime.now(UTC)
        )
        self._say(f"promotion: {verdict.reason}")

    def _attempt(self, step: str, action: Callable[[], _T]) -> _T | None:
        """`action()`, or None once its failure is logged: one step's failure ends no look."""
        try:
            return action()
        except Exception as error:
            self._say(f"{step} failed: {type(error).__name__}: {error}")
            return None
