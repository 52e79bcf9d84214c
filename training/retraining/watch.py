"""The retrain loop (`fraud-train retrain --watch`): look at the triggers, retrain when one
fires, then consider promoting the challenger; again every `check_seconds`.

One look, each step logged through `say`:

1. read every server's `/metrics` (`training.retraining.server_scrape`), when some are configured;
2. measure the champion's live precision from the decision and outcome logs, when that
   trigger is on;
3. ask the triggers (`training.retraining.triggers`); the first that fires starts a retrain
   (`training.retraining.retrain`), its detail recorded as the retrain's trigger;
4. count the challenger's shadow comparisons and apply the promotion policy
   (`training.retraining.promotion`).

A look reads the decision and outcome logs at most once, and only when the precision
trigger or a retrain needs them; the retrain is given them as read.

Before the first look, `check_ready` refuses what would fail every look: a registry without
a champion reading the features this installation computes (`RegistryError`), a log
directory that does not exist (`FeedbackError`, most often a wrong path).

A step that fails at a look (unreadable logs, a corrupt registry, a retrain that raises) is
logged and the look goes on without it, the loop with the next look: a watch loop is meant
to run for months, and the next look may find the problem gone. A retrain that raised did
not answer its trigger, which fires again at the next look; one stopped by a quality gate
(`GateFailure`) did: it recorded its decline like any other. Every decline answers but one:
a retrain waiting for fraud reports (`RetrainResult.waiting_for_labels`). Drift and live
precision usually show before the reports of the frauds behind them arrive; such a decline
leaves drift and precision armed, and the next retrain runs once the outcome log has
changed (before that it would only record the same decline again).

The loop ends after `max_checks` looks, or when `stop` is set (the CLI sets it on SIGTERM
and SIGINT); waiting between looks wakes at once when it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Protocol, TypeVar

from service.features import FEATURES
from service.model.registry import CHALLENGER, CHAMPION, Registry
from service.records.schema import RecordKind, segment_glob
from training.config import TrainSettings
from training.model_build.gates import GateFailure
from training.retraining.feedback import (
    FeedbackError,
    LoggedDecisions,
    LoggedOutcomes,
    SegmentMap,
    read_decision_log,
    read_outcomes,
)
from training.retraining.log_compaction import compact
from training.retraining.log_reading import IN_PROCESS, LogReading
from training.retraining.promotion import ShadowTracker, consider_promotion
from training.retraining.retrain import (
    RetrainResult,
    comparable_champion,
    decision_log_name,
    retrain_from_logs,
)
from training.retraining.server_scrape import MetricsLook, read_servers
from training.retraining.triggers import Fired, LivePrecision, Triggers, live_precision

Say = Callable[[str], None]
_T = TypeVar("_T")


class RetrainFn(Protocol):
    """What the loop may call to retrain instead of its own
    (`training.retraining.retrain.retrain`, or a stand-in), given the log directories."""

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
    retrain_fn: RetrainFn | None = None,
    say: Say = _quiet,
    sleep: Callable[[float], object] | None = None,
    stop: threading.Event | None = None,
    reading: LogReading = IN_PROCESS,
    compact: bool = False,
) -> int:
    """Look, retrain and promote until `max_checks` looks (None: until `stop` is set);
    the number of retrains that published a challenger.

    `check_ready` first: RegistryError or FeedbackError, before any look, when the registry
    or the logs could never be retrained from. `sleep` waits between looks; by default, on
    `stop`, so that setting it ends the wait. `history` is passed on to every retrain;
    `retrain_fn` replaces `training.retraining.retrain.retrain_from_logs`, which is given the
    logs as the look has read them (None: that one). `reading` says where the logs are
    parsed and the history replayed; with `compact`, each look first writes the Parquet twins
    of the segments closed since the last (`training.retraining.log_compaction`).
    """
    check_ready(registry_root, decisions_dir, outcomes_dir, settings)
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    watcher = _Watcher(
        registry_root, decisions_dir, outcomes_dir, settings, history, retrain_fn, say
    )
    watcher.reading, watcher.compact = reading, compact
    published = checks = 0
    while not stop.is_set():
        checks += 1
        published += watcher.look(checks)
        if max_checks is not None and checks >= max_checks:
            break
        wait(settings.triggers.check_seconds)
    say(f"watch ended: {checks} looks, {published} challengers published")
    return published


def check_ready(
    registry_root: Path, decisions_dir: Path, outcomes_dir: Path, settings: TrainSettings
) -> None:
    """RegistryError unless the registry has a champion reading the features of `settings`;
    FeedbackError if a log directory does not exist. Empty directories are fine: the
    servers may not have logged anything yet."""
    comparable_champion(registry_root, settings)
    for kind, directory in (("decision", decisions_dir), ("outcome", outcomes_dir)):
        if not directory.is_dir():
            raise FeedbackError(
                f"{kind} log directory {directory} does not exist: check the path, or start "
                "a server that logs there first"
            )


class _Watcher:
    """One look's steps, and what the triggers and the shadow count keep between looks."""

    def __init__(
        self,
        registry_root: Path,
        decisions_dir: Path,
        outcomes_dir: Path,
        settings: TrainSettings,
        history: Path | None,
        retrain_fn: RetrainFn | None,
        say: Say,
    ) -> None:
        self._registry = Registry(registry_root)
        self._decisions_dir = decisions_dir
        self._outcomes_dir = outcomes_dir
        self._settings = settings
        self._history = history
        self._retrain_fn = retrain_fn
        self._say = say
        self.reading = IN_PROCESS
        self.compact = False
        self._triggers = Triggers(settings.triggers)
        self._shadow = ShadowTracker()
        # The outcome log's size when a retrain last waited for fraud reports: until it
        # changes, another retrain would only record the same decline again.
        self._waited_at_outcomes: int | None = None

    def look(self, number: int) -> bool:
        """Look once; whether a retrain published a challenger."""
        self._say(f"look {number}")
        if self.compact:
            self._attempt("compaction", self._compact)
        logs = _LookLogs(self._decisions_dir, self._outcomes_dir, self.reading.map_segments)
        metrics = self._read_metrics()
        fired = self._attempt("triggers", partial(self._check_triggers, metrics, logs))
        published = fired is not None and bool(
            self._attempt("retrain", partial(self._retrain, fired, logs))
        )
        self._attempt("promotion", partial(self._consider_promotion, metrics))
        return published

    def _compact(self) -> None:
        directories: dict[RecordKind, Path] = {
            "decisions": self._decisions_dir,
            "outcomes": self._outcomes_dir,
        }
        for kind, directory in directories.items():
            done = compact(directory, kind, feature_count=len(FEATURES))
            if done.written:
                self._say(done.summary())

    def _read_metrics(self) -> MetricsLook | None:
        urls = self._settings.triggers.metrics_urls
        if not urls:
            return None
        metrics = read_servers(urls)
        for url, reason in metrics.unreachable.items():
            self._say(f"metrics of {url} unread: {reason}")
        return metrics

    def _check_triggers(self, metrics: MetricsLook | None, logs: _LookLogs) -> Fired | None:
        fired = self._triggers.check(
            history=self._registry.history(),
            now=datetime.now(UTC),
            metrics=metrics,
            precision=self._attempt("precision", partial(self._measure_precision, logs)),
        )
        for detail in self._triggers.details:
            self._say(detail)
        return fired

    def _measure_precision(self, logs: _LookLogs) -> LivePrecision | None:
        champion = self._registry.alias(CHAMPION)
        if self._settings.triggers.precision_floor == 0 or champion is None:
            return None
        return live_precision(
            logs.decisions,
            logs.outcomes,
            champion=champion,
            window_days=self._settings.triggers.precision_window_days,
            label_delay_ns=round(self._settings.features.label_delay_seconds * 1e9),
        )

    def _retrain(self, fired: Fired, logs: _LookLogs) -> bool:
        outcomes_seen = logs.outcome_log_size
        if outcomes_seen == self._waited_at_outcomes:
            self._say(
                "still waiting for new fraud reports: the outcome log has not changed since "
                f"the last retrain ({fired.name} trigger holds)"
            )
            return False
        self._say(f"{fired.name} trigger fired: retraining")
        self._waited_at_outcomes = None
        try:
            result = self._run_retrain(fired.detail, logs)
        except GateFailure as failure:
            # The retrain ran to its end and recorded its decline: the evidence is answered.
            self._triggers.retrained()
            self._say(f"retrain declined: {failure}")
            return False
        self._answer(result, outcomes_seen)
        return result.published

    def _run_retrain(self, trigger: str, logs: _LookLogs) -> RetrainResult:
        if self._retrain_fn is not None:
            return self._retrain_fn(
                self._registry.root,
                self._decisions_dir,
                self._outcomes_dir,
                self._settings,
                history=self._history,
                trigger=trigger,
                say=self._say,
            )
        return retrain_from_logs(
            self._registry.root,
            logs.decisions,
            logs.outcomes,
            self._settings,
            log_name=decision_log_name(self._decisions_dir),
            history=self._history,
            trigger=trigger,
            say=self._say,
            replay_history=self.reading.replay_history,
        )

    def _answer(self, result: RetrainResult, outcomes_seen: int) -> None:
        """Say what the retrain did; its evidence is answered unless it waits for labels,
        `outcomes_seen` being the outcome log's size it started from."""
        if result.waiting_for_labels:
            # Drift and low precision show before the fraud reports behind them arrive.
            self._waited_at_outcomes = outcomes_seen
            self._say(
                f"retrain waits for new fraud reports: {result.reason} "
                "(drift and precision stay armed: they may fire again at the next look)"
            )
            return
        self._triggers.retrained()
        outcome = f"published challenger {result.version}" if result.published else "declined"
        self._say(f"retrain {outcome}: {result.reason}")

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


class _LookLogs:
    """The logs as one look sees them: each read at most once, and only when a step asks."""

    def __init__(self, decisions_dir: Path, outcomes_dir: Path, map_segments: SegmentMap) -> None:
        self._decisions_dir = decisions_dir
        self._outcomes_dir = outcomes_dir
        self._map_segments = map_segments

    @cached_property
    def outcome_log_size(self) -> int:
        """The outcome log's size (`_outcome_log_size`) before this look read it, if it did:
        what it read holds at least the reports this size counts."""
        return _outcome_log_size(self._outcomes_dir)

    @cached_property
    def decisions(self) -> LoggedDecisions:
        return read_decision_log(
            self._decisions_dir, feature_count=len(FEATURES), map_segments=self._map_segments
        )

    @cached_property
    def outcomes(self) -> LoggedOutcomes:
        # Measured first, so that a report arriving during the read is news at the next look.
        _ = self.outcome_log_size
        return read_outcomes(self._outcomes_dir, map_segments=self._map_segments)


def _outcome_log_size(directory: Path) -> int:
    """Bytes in the outcome log's segments: it changes when reports arrive (or age out)."""
    return sum(
        path.stat().st_size for path in directory.glob(segment_glob("outcomes")) if path.is_file()
    )
