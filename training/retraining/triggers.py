"""When the retrain loop retrains: a schedule, lasting drift, or decaying live precision.

Each trigger is a pure function of what one look gathered; `Triggers` keeps what must last
between looks and answers with the first that fires, `Fired(name, detail)`, the detail
giving the figures (it becomes the retrain's `trigger`, recorded in the new model's lineage).

schedule   The registry's last publication or declined retrain (wall time, `at`) is older
           than `schedule_hours`; with none at all, it fires. The retrain it starts records
           one of the two, which quiets it; a retrain that fails records nothing, so the
           schedule tries again at the next look.

drift      A PSI above `drift_psi` on `drift_checks` consecutive looks. Judged as the drift
           alerts judge it (docs/observability.md, "Drift"): the transaction's own fields
           (`TRANSACTION_FIELDS`) on any server; history features and the score only on a
           server up longer than `HISTORY_WARMUP_SECONDS`, since the feature state starts
           empty at each start and drifts by construction until its 30-day windows fill;
           `hour_of_day` and `day_of_week` never (they drift in any window under a day or a
           week). Servers that do not answer are left out of the look; a look at which none
           answered is not counted either way: it neither extends nor breaks the run of
           drifted looks, so a scrape failure cannot delay or fake a firing. One server down
           for good must not switch the trigger off, hence "none", not "any".

precision  The live precision of the champion's REVIEW and DECLINE decisions (MODEL source,
           its version) falls below `precision_floor`, over at least `min_labelled_alerts`
           labelled ones. The window is the `precision_window_days` that end a label delay
           before "as of" (the data clock: the newest time in the logs): inside the last
           label delay, a decision not reported as fraud has no label yet while one reported
           has, so counting it would tilt precision towards 1. Unknown labels are left out.

Drift and precision fire once per episode: once a retrain triggered while they held has answered
them (`Triggers.retrained`), they stay quiet until a look sees them clear. A new champion clears
both in time: the servers start a new drift window for it, and precision is measured on its own
decisions. A retrain that only waits for fraud reports has not answered them
(`training.retraining.watch` does not call `retrained`): they fire again at the next look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pandas as pd

from service.core.domain import Decision, DecisionSource
from service.model.registry import HistoryEntry
from service.observability.drift_bins import CYCLIC_FEATURES
from training.config import TriggerConfig
from training.data.split import NANOS_PER_DAY
from training.retraining.feedback import (
    UNKNOWN_LABEL,
    LoggedDecisions,
    LoggedOutcomes,
    labels_as_of,
    newest_time_ns,
)
from training.retraining.server_scrape import MetricsLook, Psi, ServerMetrics

TriggerName = Literal["schedule", "drift", "precision"]

# The fields of the transaction itself: their drift is the traffic's from a server's start.
TRANSACTION_FIELDS = frozenset({"amount", "mcc", "entry_mode", "card_present"})
# The longest feature window: history features (and the score, which reads them) drift
# after every server start until it has filled.
HISTORY_WARMUP_SECONDS = 30 * 86_400
SCHEDULE_ACTIONS = frozenset({"publish", "decline"})
ALERT_DECISIONS = (Decision.REVIEW.name, Decision.DECLINE.name)
_ANSWERED = "; a retrain already answered it, quiet until it clears"


@dataclass(frozen=True, slots=True)
class Fired:
    """A trigger that fired, and the evidence, in words."""

    name: TriggerName
    detail: str


@dataclass(frozen=True, slots=True)
class Check:
    """One trigger at one look: whether its condition holds (from `Triggers`: whether it
    fires), and the figures."""

    holds: bool
    detail: str


@dataclass(frozen=True, slots=True)
class LivePrecision:
    """The champion's labelled alerts (REVIEW and DECLINE) over a window, and the frauds."""

    champion: str
    alerts: int
    frauds: int
    start_ns: int
    end_ns: int

    @property
    def precision(self) -> float | None:
        """Share of labelled alerts that proved fraud; None without any."""
        return self.frauds / self.alerts if self.alerts else None

    def __str__(self) -> str:
        share = "n/a" if self.precision is None else f"{self.precision:.3f}"
        return (
            f"precision {share} ({self.frauds} frauds in {self.alerts} labelled reviews and "
            f"declines of {self.champion}, events {_day(self.start_ns)} to {_day(self.end_ns)})"
        )


def schedule_check(
    history: Sequence[HistoryEntry], *, now: datetime, schedule_hours: float
) -> Check:
    """Whether the last publication or declined retrain is `schedule_hours` old or more."""
    if schedule_hours == 0:
        return Check(False, "schedule off")
    last = max((entry.at for entry in history if entry.action in SCHEDULE_ACTIONS), default=None)
    if last is None:
        return Check(True, "schedule: no publication or declined retrain in the registry")
    hours = (now - last).total_seconds() / 3_600
    return Check(
        hours >= schedule_hours,
        f"schedule: last publication or decline {hours:.1f} h ago (every {schedule_hours:g} h)",
    )


def judged_psi(server: ServerMetrics, *, now_s: float) -> dict[str, float]:
    """The PSIs of `server` the drift trigger judges at Unix time `now_s` (see the module)."""
    warmed = server.started_at is not None and now_s - server.started_at > HISTORY_WARMUP_SECONDS
    return {
        subject: value
        for subject, value in server.psi().items()
        if subject not in CYCLIC_FEATURES and (warmed or subject in TRANSACTION_FIELDS)
    }


def highest_drift(look: MetricsLook, *, now_s: float) -> Psi | None:
    """The highest PSI the drift trigger judges, over every server that answered."""
    return look.highest_psi(lambda server: judged_psi(server, now_s=now_s))


def live_precision(
    decisions: LoggedDecisions,
    outcomes: LoggedOutcomes,
    *,
    champion: str,
    window_days: float,
    label_delay_ns: int,
) -> LivePrecision:
    """The champion's precision over the labelled window (see the module), as of the logs'
    newest time."""
    as_of_ns = newest_time_ns(decisions, outcomes)
    end_ns = as_of_ns - label_delay_ns
    start_ns = end_ns - round(window_days * NANOS_PER_DAY)
    frame = decisions.frame
    alerts = frame[
        (frame["source"] == DecisionSource.MODEL.name)
        & frame["decision"].isin(ALERT_DECISIONS)
        & (frame["model_version"] == champion)
        & (frame["event_ns"] > start_ns)
        & (frame["event_ns"] <= end_ns)
    ]
    labels = labels_as_of(
        alerts["transaction_id"].to_numpy(dtype=object),
        alerts["event_ns"].to_numpy(dtype=np.int64),
        outcomes,
        as_of_ns=as_of_ns,
        label_delay_ns=label_delay_ns,
    )
    known = labels != UNKNOWN_LABEL
    return LivePrecision(
        champion, int(known.sum()), int((labels[known] == 1).sum()), start_ns, end_ns
    )


def precision_check(measured: LivePrecision, config: TriggerConfig) -> Check:
    """Whether the champion's precision is below the floor, over enough labelled alerts."""
    precision = measured.precision
    enough = measured.alerts >= config.min_labelled_alerts
    low = enough and precision is not None and precision < config.precision_floor
    needed = f"floor {config.precision_floor:g}, {config.min_labelled_alerts} labelled needed"
    return Check(low, f"{measured} ({needed})")


class Triggers:
    """The three triggers and what they remember between looks: the run of drifted looks,
    and which episodes a finished retrain has already answered."""

    def __init__(self, config: TriggerConfig) -> None:
        """Triggers set by `config`; no look seen yet."""
        self._config = config
        self._drifted_looks = 0
        self._drift_answered = False
        self._precision_low = False
        self._precision_answered = False
        self.details: tuple[str, ...] = ()
        """Each trigger's figures at the last look, for the log."""

    def check(
        self,
        *,
        history: Sequence[HistoryEntry],
        now: datetime,
        metrics: MetricsLook | None,
        precision: LivePrecision | None,
    ) -> Fired | None:
        """Look once: the first trigger that fires, or None.

        `metrics` is None when no server is configured, `precision` when it could not be
        measured (no champion, unreadable logs): that trigger then sits this look out.
        """
        checks: tuple[tuple[TriggerName, Check], ...] = (
            (
                "schedule",
                schedule_check(history, now=now, schedule_hours=self._config.schedule_hours),
            ),
            ("drift", self._drift(metrics, now.timestamp())),
            ("precision", self._precision(precision)),
        )
        self.details = tuple(check.detail for _name, check in checks)
        return next((Fired(name, check.detail) for name, check in checks if check.holds), None)

    def retrained(self) -> None:
        """A retrain answered (it published, or declined on its merits): the drift and
        precision episodes now holding stay quiet until they clear."""
        self._drift_answered = self._drifted_looks >= self._config.drift_checks
        self._precision_answered = self._precision_low

    def _drift(self, metrics: MetricsLook | None, now_s: float) -> Check:
        if metrics is None:
            return Check(False, "drift off (no metrics_urls)")
        down = f"{len(metrics.unreachable)} of {len(metrics.unreachable) + len(metrics.servers)}"
        if not metrics.servers:
            return Check(False, f"drift: no server answered ({down}); look not counted")
        highest = highest_drift(metrics, now_s=now_s)
        if highest is not None and highest.value > self._config.drift_psi:
            self._drifted_looks += 1
        else:
            self._drifted_looks, self._drift_answered = 0, False
        seen = "no PSI judged" if highest is None else str(highest)
        lasting = self._drifted_looks >= self._config.drift_checks
        return Check(
            lasting and not self._drift_answered,
            f"drift: {seen} (above {self._config.drift_psi:g} on {self._drifted_looks} "
            f"consecutive looks, {self._config.drift_checks} needed; {down} servers unreachable)"
            + (_ANSWERED if lasting and self._drift_answered else ""),
        )

    def _precision(self, measured: LivePrecision | None) -> Check:
        if self._config.precision_floor == 0:
            return Check(False, "precision off")
        if measured is None:
            return Check(False, "precision: not measured at this look")
        check = precision_check(measured, self._config)
        self._precision_low = check.holds
        if not check.holds:
            self._precision_answered = False
        answered = _ANSWERED if check.holds and self._precision_answered else ""
        return Check(
            check.holds and not self._precision_answered, f"precision: {check.detail}{answered}"
        )


def _day(ns: int) -> str:
    return f"{pd.Timestamp(ns, unit='ns', tz=UTC):%Y-%m-%d %H:%M}"
