"""`fraud-train retrain`: a candidate from the server's own decision log and outcomes, judged
against the champion on the most recent labelled window, published as challenger only when
it is better.

Steps: label the log as of a moment (`training.retraining.retrain_data`) → enough new fraud
reports since the champion's data ended? → periods → fit, thresholds, ONNX and gates, the path
`train` takes (`training.model_build.candidate`) → compare with the champion on the evaluation
window (`training.retraining.report`) → better by `retrain.min_improvement`? → publish with the
report and lineage → point `challenger` at it. A retrain that publishes nothing records a
`decline` in the registry history, its reason giving the numbers; a failed gate also raises
`GateFailure`, as in `train`. Making the challenger champion is a separate, deliberate step.

`retrain` reads the logs itself; `retrain_from_logs` takes them read already (the watch loop
reads them once a look, for its precision trigger and its retrain).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from service.features import FEATURE_ENGINE_VERSION, FEATURES
from service.model.artifact import GateResult, Lineage, Manifest
from service.model.registry import CHALLENGER, Registry, RegistryError
from training.config import TrainSettings
from training.data.dataset import build_feature_table
from training.model_build.candidate import (
    Candidate,
    fit_candidate,
    instant,
    publish,
    quality_gates,
    reads_same_features,
)
from training.model_build.gates import GateFailure, require
from training.registry import publishing as registry
from training.retraining.feedback import (
    FeedbackError,
    LoggedDecisions,
    LoggedOutcomes,
    newest_time_ns,
    read_decision_log,
    read_outcomes,
)
from training.retraining.log_reading import IN_PROCESS, HistoryReplay, LogReading
from training.retraining.report import Comparison, compare, format_report, json_ready
from training.retraining.retrain_data import Declined, LabelledLog, RetrainData, assemble, label_log

REPORT_JSON_FILE = "retrain-report.json"
REPORT_TEXT_FILE = "retrain-report.txt"


@dataclass(frozen=True)
class RetrainResult:
    """What a retrain did: `version` is the new challenger when `published`."""

    published: bool
    version: str | None
    reason: str
    report: dict[str, Any]
    """JSON-ready: `json.dumps` writes it as it is."""
    table: str
    """The report for a person to read."""
    waiting_for_labels: bool = False
    """Declined for too few fraud reports since the champion's data ended
    (`retrain.min_new_frauds`), before any candidate was judged: a retrain once more reports
    have arrived may publish."""


class _WaitingForLabels(Declined):
    """Too few new fraud reports to learn anything from."""


@dataclass(frozen=True)
class _Champion:
    version: str
    manifest: Manifest
    artifact_dir: Path

    @property
    def data_end(self) -> datetime:
        """Until when it knew the labels: the as-of time of its retrain, else the last event
        of its data (a history file's labels are taken as known then; older manifests: of
        its history). A fraud reported later is news to it."""
        lineage = self.manifest.lineage
        if lineage is None:
            return self.manifest.training_data.last_event
        return lineage.as_of if lineage.as_of is not None else lineage.data_end


def retrain(
    registry_root: Path,
    decisions_dir: Path,
    outcomes_dir: Path,
    settings: TrainSettings,
    *,
    history: Path | None = None,
    as_of: datetime | None = None,
    trigger: str | None = None,
    say: Callable[[str], None] = lambda _: None,
    reading: LogReading = IN_PROCESS,
) -> RetrainResult:
    """Retrain from the logs as of `as_of` (default: their newest record) and publish the
    candidate as challenger when it beats the champion; GateFailure if a gate fails.

    `history`, when given, is replayed and its rows before the log are trained on too.
    `reading` says where the logs are parsed and the history replayed (in this process, a
    segment at a time, or on a Dask cluster): the same rows either way.
    RegistryError when there is no champion or it reads other features than `settings`;
    `training.retraining.feedback.FeedbackError` when a log cannot be read or `as_of` is after its
    newest record.
    """
    # Checked again by `retrain_from_logs`, and here first: before a long read of the logs.
    comparable_champion(registry_root, settings)
    say(f"reading the decision log in {decisions_dir} and the outcomes in {outcomes_dir}")
    return retrain_from_logs(
        registry_root,
        read_decision_log(
            decisions_dir, feature_count=len(FEATURES), map_segments=reading.map_segments
        ),
        read_outcomes(outcomes_dir, map_segments=reading.map_segments),
        settings,
        log_name=decision_log_name(decisions_dir),
        history=history,
        as_of=as_of,
        trigger=trigger,
        say=say,
        replay_history=reading.replay_history,
    )


def retrain_from_logs(
    registry_root: Path,
    decisions: LoggedDecisions,
    outcomes: LoggedOutcomes,
    settings: TrainSettings,
    *,
    log_name: str,
    history: Path | None = None,
    as_of: datetime | None = None,
    trigger: str | None = None,
    say: Callable[[str], None] = lambda _: None,
    replay_history: HistoryReplay = build_feature_table,
) -> RetrainResult:
    """`retrain` from logs already read (`training.retraining.feedback`), recorded as the source
    `log_name` (`decision_log_name` of their directory); the same errors but unreadable logs."""
    champion = comparable_champion(registry_root, settings)
    as_of_ns = _as_of_ns(decisions, outcomes, as_of)
    log = label_log(
        decisions,
        outcomes,
        as_of_ns=as_of_ns,
        feature_config=settings.features,
        silent_declines=settings.retrain.silent_declines,
    )
    run = _Retrain(registry_root, settings, champion, instant(as_of_ns), trigger, say)
    run.replay_history = replay_history
    run.report["rows"] = {"logged": log.logged_rows, "usable": len(log), "excluded": log.excluded}
    return run.run(log, log_name, history)


def decision_log_name(decisions_dir: Path) -> str:
    """How a retrain's lineage names the decision log in `decisions_dir`."""
    return f"decision log in {decisions_dir.name}/"


class _Retrain:
    """One retrain's steps, sharing its settings, its champion and its growing report."""

    def __init__(
        self,
        root: Path,
        settings: TrainSettings,
        champion: _Champion,
        as_of: datetime,
        trigger: str | None,
        say: Callable[[str], None],
    ) -> None:
        self.root, self.settings, self.champion = root, settings, champion
        self.as_of, self.trigger, self.say = as_of, trigger, say
        self.replay_history: HistoryReplay = build_feature_table
        # Also names a declined candidate, so that its decline and its report agree.
        self.created_at = datetime.now(UTC)
        self.report: dict[str, Any] = {
            "as_of": as_of.isoformat(),
            "trigger": trigger,
            "champion": {"version": champion.version, "data_end": champion.data_end.isoformat()},
        }

    def run(self, log: LabelledLog, log_name: str, history: Path | None) -> RetrainResult:
        try:
            self._require_new_frauds(log)
            data = self._data(log, log_name, history)
            candidate, gates = self._candidate(data)
            comparison = self._compare(data, candidate)
            return self._publish(data, candidate, gates, comparison)
        except Declined as declined:
            return self._decline(declined)

    def _require_new_frauds(self, log: LabelledLog) -> None:
        since = self.champion.data_end
        new = log.new_frauds(_nanoseconds(since))
        needed = self.settings.retrain.min_new_frauds
        self.report.update(new_fraud_reports=new, min_new_frauds=needed)
        if new < needed:
            raise _WaitingForLabels(
                f"{new} new fraud reports on logged transactions since champion "
                f"{self.champion.version}'s data ended ({since:%Y-%m-%d %H:%M} UTC), "
                f"{needed} needed: nothing new to learn"
            )

    def _data(self, log: LabelledLog, log_name: str, history: Path | None) -> RetrainData:
        table = None
        if history is not None:
            self.say(f"replaying {history.name}")
            table = self.replay_history(history, self.settings.features)
        data = assemble(log, self.settings, log_name=log_name, history=table)
        self.report["sources"] = [source.model_dump(mode="json") for source in data.sources]
        self.report["periods"] = data.summary
        return data

    def _candidate(self, data: RetrainData) -> tuple[Candidate, list[GateResult]]:
        self.say(f"training on {data.summary['train']['rows']} transactions")
        candidate = fit_candidate(data.model, self.settings)
        gates = quality_gates(data.model, candidate, self.settings)
        try:
            require(gates)
        except GateFailure as failure:
            reason = self._reason(f"{failure} on {_window(data)}")
            registry.decline(self.root, reason=reason, version=self._version(candidate))
            raise
        return candidate, gates

    def _compare(self, data: RetrainData, candidate: Candidate) -> Comparison:
        self.say("scoring champion and candidate on the evaluation window")
        manifest = self.champion.manifest
        comparison = compare(
            data.model, candidate, self.champion.artifact_dir, manifest.thresholds, self.settings
        )
        self.report.update(
            metrics=comparison.metrics,
            decision_rates=comparison.decision_rates,
            feature_changes=comparison.feature_changes,
        )
        margin = self.settings.retrain.min_improvement
        if comparison.average_precision("candidate") < (
            comparison.average_precision("champion") + margin
        ):
            raise Declined(
                f"{_figures(comparison, data)}: not better by the {margin:.4f} required",
                version=self._version(candidate),
            )
        return comparison

    def _publish(
        self,
        data: RetrainData,
        candidate: Candidate,
        gates: list[GateResult],
        comparison: Comparison,
    ) -> RetrainResult:
        version = self._version(candidate)
        reason = self._reason(_figures(comparison, data))
        report, table = self._finish(version, "published as challenger", reason)
        publish(
            self.root,
            data.model,
            candidate,
            self.settings,
            created_at=self.created_at,
            training_data=data.fingerprint,
            lineage=self._lineage(data, gates, comparison),
            reports={
                REPORT_JSON_FILE: json.dumps(report, indent=2) + "\n",
                REPORT_TEXT_FILE: table,
            },
        )
        registry.promote(self.root, version, alias=CHALLENGER, reason=reason)
        return RetrainResult(True, version, reason, report, table)

    def _decline(self, declined: Declined) -> RetrainResult:
        reason = self._reason(declined.reason)
        report, table = self._finish(declined.version, "declined", reason)
        registry.decline(self.root, reason=reason, version=declined.version)
        waiting = isinstance(declined, _WaitingForLabels)
        return RetrainResult(False, None, reason, report, table, waiting_for_labels=waiting)

    def _finish(self, version: str | None, verdict: str, reason: str) -> tuple[dict[str, Any], str]:
        """The final report, as data and as text."""
        verdicts = {"candidate": version, "verdict": verdict, "reason": reason}
        report: dict[str, Any] = json_ready({**self.report, **verdicts})
        return report, format_report(report) + "\n"

    def _lineage(
        self, data: RetrainData, gates: list[GateResult], comparison: Comparison
    ) -> Lineage:
        return Lineage(
            kind="retrain",
            data_start=data.fingerprint.first_event,
            data_end=data.fingerprint.last_event,
            as_of=self.as_of,
            parent_version=self.champion.version,
            sources=data.sources,
            trigger=self.trigger,
            gates=gates,
            # NaN does not survive the manifest's JSON: an undefined metric is left out.
            comparison={
                model: {name: value for name, value in metrics.items() if math.isfinite(value)}
                for model, metrics in comparison.metrics.items()
            },
        )

    def _reason(self, text: str) -> str:
        trigger = f"; trigger: {self.trigger}" if self.trigger else ""
        return f"retrain: {text}{trigger}"

    def _version(self, candidate: Candidate) -> str:
        return registry.version_name(self.created_at, candidate.onnx_model)


def _figures(comparison: Comparison, data: RetrainData) -> str:
    candidate = comparison.average_precision("candidate")
    champion = comparison.average_precision("champion")
    return f"candidate AP {candidate:.4f} vs champion {champion:.4f} on {_window(data)}"


def _window(data: RetrainData) -> str:
    window = data.summary["evaluation"]
    return f"{window['days']} ({window['rows']} tx, {window['frauds']} frauds)"


def comparable_champion(root: Path, settings: TrainSettings) -> _Champion:
    models = Registry(root)
    found = models.champion()
    if found is None:
        raise RegistryError(f"{root} has no champion to compare with: train and promote one first")
    version, manifest = found
    if not reads_same_features(manifest, settings):
        raise RegistryError(
            f"champion {version} reads other features than this retrain would train on "
            f"(engine {manifest.feature_engine_version}, {manifest.feature_config!r}; here "
            f"engine {FEATURE_ENGINE_VERSION}, {settings.features!r}): retrain with its "
            "feature settings, or train and promote a new champion"
        )
    return _Champion(version, manifest, models.artifact_dir(version))


def _as_of_ns(decisions: LoggedDecisions, outcomes: LoggedOutcomes, as_of: datetime | None) -> int:
    """`as_of`, by default the logs' newest record; FeedbackError when it is after that one."""
    newest_ns = newest_time_ns(decisions, outcomes)
    if as_of is None:
        return newest_ns
    as_of_ns = _nanoseconds(as_of)
    # Past the logs, silence proves nothing: a transaction looks unreported only because the
    # logs end, yet its label delay would pass and it would count as genuine.
    if as_of_ns > newest_ns:
        newest = pd.Timestamp(newest_ns, tz="UTC").isoformat()
        raise FeedbackError(
            f"as of {as_of.isoformat()} is after the newest event or report in the logs "
            f"({newest}): transactions would count as genuine for want of reports the logs "
            "cannot hold yet; give a time at or before it"
        )
    return as_of_ns


def _nanoseconds(moment: datetime) -> int:
    if moment.utcoffset() is None:
        raise ValueError(f"{moment} has no time zone: give retrain an aware datetime")
    return int(pd.Timestamp(moment).value)
