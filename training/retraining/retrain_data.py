"""The rows a retrain learns from and is judged on: the server's logged decisions, labelled as
of a moment, cut into periods, with an optional replayed history before them.

A logged row is used when it has a feature vector, computed by this feature engine version, and
its label is settled: its event is at least one label delay before "as of", so its label is 1 or
0 for certain (`training.retraining.feedback.label_outcomes`). Rows of the last label delay are
left out even when their fraud is already reported: only their frauds can be known yet, so
keeping them would fill the newest days, the evaluation window, with frauds. A model decline
without any reported outcome is left out too, unless `retrain.silent_declines` says "genuine": a
blocked payment rarely draws a chargeback, so its silence proves nothing.

Periods, whole UTC days, oldest first (as `training.data.split`, whose docstring says why a gap):

    [ history after its warm-up | logged rows ][ label-delay gap ][ validation ][ evaluation ]

The evaluation window ends with the day of the newest usable row; it is the manifest's
`test` period. History rows are replayed by `training.data.dataset` and only those before the
first logged decision are used, so no transaction counts twice.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.core.domain import Decision
from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from service.model.artifact import DataFingerprint, LineageSource
from training.config import SilentDeclines, TrainSettings
from training.data.dataset import FeatureTable
from training.data.split import NANOS_PER_DAY, Periods, day_index
from training.model_build.candidate import ModelData, instant
from training.retraining.feedback import LoggedDecisions, LoggedOutcomes, label_outcomes


class Declined(Exception):
    """A retrain that should publish nothing; the message says why, with the numbers.

    `version` is the name the candidate would have had, when one was trained.
    """

    def __init__(self, reason: str, *, version: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.version = version


@dataclass(frozen=True)
class LabelledLog:
    """The usable logged rows in time order with their labels, and counts of the others."""

    features: NDArray[np.float32]
    labels: NDArray[np.int8]
    event_ns: NDArray[np.int64]
    cards: NDArray[np.object_]
    logged_rows: int
    first_logged_ns: int
    excluded: dict[str, int]
    fraud_known_ns: NDArray[np.int64]
    """When each fraud among the usable rows became known (its report time)."""

    def __len__(self) -> int:
        return len(self.labels)

    def new_frauds(self, since_ns: int) -> int:
        """Frauds among the usable rows reported after `since_ns`."""
        return int(np.count_nonzero(self.fraud_known_ns > since_ns))


@dataclass(frozen=True)
class RetrainData:
    """What the candidate is built from, and how to record it."""

    model: ModelData
    summary: dict[str, dict[str, Any]]
    """`period_summary` of `model`."""
    fingerprint: DataFingerprint
    sources: list[LineageSource]


def label_log(
    decisions: LoggedDecisions,
    outcomes: LoggedOutcomes,
    *,
    as_of_ns: int,
    feature_config: FeatureConfig,
    silent_declines: SilentDeclines,
) -> LabelledLog:
    """The decision log labelled as of `as_of_ns` with `feature_config`'s label delay; each
    left-out row counted under its first reason: `no_features`, `other_feature_engine`,
    `other_feature_config` (features computed with other settings than `feature_config`; a
    line without a fingerprint passes), `label_not_settled`, `silent_decline` (never with
    `silent_declines` "genuine"; see `RetrainConfig.silent_declines`)."""
    frame = decisions.frame
    delay_ns = round(feature_config.label_delay_days * NANOS_PER_DAY)
    event_ns = frame["event_ns"].to_numpy(dtype=np.int64)
    ids = frame["transaction_id"].to_numpy(dtype=object)
    labels, known_ns, reported = label_outcomes(
        ids, event_ns, outcomes, as_of_ns=as_of_ns, label_delay_ns=delay_ns
    )
    engine = frame["feature_engine_version"].to_numpy() == FEATURE_ENGINE_VERSION
    settings = frame["feature_config"].isin(["", feature_config.fingerprint]).to_numpy()
    silent = _silent_declines(decisions, labels, reported)
    checks = {
        "no_features": decisions.has_features,
        "other_feature_engine": engine,
        "other_feature_config": settings,
        "label_not_settled": (event_ns + delay_ns <= as_of_ns) & (labels >= 0),
        "silent_decline": ~silent if silent_declines == "exclude" else np.ones_like(silent),
    }
    usable = np.ones(len(frame), dtype=np.bool_)
    excluded = {}
    for reason, passes in checks.items():
        excluded[reason] = int(np.count_nonzero(usable & ~passes))
        usable &= passes
    return LabelledLog(
        features=decisions.features[usable],
        labels=labels[usable],
        event_ns=event_ns[usable],
        cards=frame["card"].to_numpy(dtype=object)[usable],
        logged_rows=len(frame),
        # Sorted by event time; an empty log starts at "as of", so no history row is cut.
        first_logged_ns=int(event_ns[0]) if len(event_ns) else as_of_ns,
        excluded=excluded,
        fraud_known_ns=known_ns[usable & (labels == 1)],
    )


def _silent_declines(
    decisions: LoggedDecisions, labels: NDArray[np.int8], reported: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    """Declines that count as genuine only because no outcome was reported by then. The
    fallback's declines too: blocked is blocked, whoever decided."""
    declined = decisions.frame["decision"] == Decision.DECLINE.name
    silent: NDArray[np.bool_] = declined.to_numpy(dtype=np.bool_) & (labels == 0) & ~reported
    return silent


def assemble(
    log: LabelledLog,
    settings: TrainSettings,
    *,
    log_name: str,
    history: FeatureTable | None = None,
) -> RetrainData:
    """The candidate's rows and periods; Declined when a period cannot support it."""
    if not len(log):
        raise Declined(f"no logged transaction is usable ({_excluded(log)})")
    end_day = int(day_index(log.event_ns[-1:])[0]) + 1
    test_start = end_day - settings.retrain.evaluation_days
    validation_start = test_start - settings.retrain.validation_days
    train_end = validation_start - math.ceil(settings.features.label_delay_days)
    past = _history_rows(history, settings, log.first_logged_ns, train_end)
    rows = past.followed_by(_Rows.of(log))
    model = _model_data(rows, (train_end, validation_start, test_start, end_day))
    summary = period_summary(model)
    _require_both_classes(summary, settings)
    sources = [_source(log_name, log.labels)]
    if history is not None:
        sources.append(_source(history.source.source_name, past.labels, history))
    return RetrainData(model, summary, _fingerprint(model, rows.event_ns, sources), sources)


def period_summary(model: ModelData) -> dict[str, dict[str, Any]]:
    """Each period's first and last day, rows and frauds; the test period as "evaluation"."""
    periods = model.periods
    spans = {
        "train": (periods.train, periods.train_days),
        "validation": (periods.validation, periods.validation_days),
        "evaluation": (periods.test, periods.test_days),
    }
    return {
        name: {
            "days": day_span(days),
            "rows": int(mask.sum()),
            "frauds": int(np.count_nonzero(model.labels[mask] == 1)),
        }
        for name, (mask, days) in spans.items()
    }


def day_span(days: tuple[int, int]) -> str:
    """Whole UTC days [start, end) as "first..last", both included."""
    start, end = days
    first, last = instant(start * NANOS_PER_DAY), instant((end - 1) * NANOS_PER_DAY)
    return f"{first:%Y-%m-%d}..{last:%Y-%m-%d}"


class _Rows(NamedTuple):
    """Row-aligned arrays in time order."""

    features: NDArray[np.float32]
    labels: NDArray[np.int8]
    event_ns: NDArray[np.int64]
    cards: NDArray[np.object_]

    @classmethod
    def of(cls, log: LabelledLog) -> _Rows:
        return cls(log.features, log.labels, log.event_ns, log.cards)

    def followed_by(self, later: _Rows) -> _Rows:
        return _Rows(
            np.concatenate([self.features, later.features]),
            np.concatenate([self.labels, later.labels]),
            np.concatenate([self.event_ns, later.event_ns]),
            np.concatenate([self.cards, later.cards]),
        )


def _history_rows(
    history: FeatureTable | None, settings: TrainSettings, first_logged_ns: int, train_end: int
) -> _Rows:
    """History rows to train on: after its warm-up, before the log and the training end."""
    if history is None:
        empty = np.zeros(0, dtype=np.int64)
        features = np.zeros((0, len(FEATURES)), dtype=np.float32)
        return _Rows(features, empty.astype(np.int8), empty, empty.astype(object))
    event_ns = history.source.frame["timestamp_ns"].to_numpy(dtype=np.int64)
    warm = history.days >= int(history.days.min()) + settings.split.warmup_days
    past = warm & (event_ns < first_logged_ns) & (history.days < train_end)
    return _Rows(history.features[past], history.labels[past], event_ns[past], history.cards[past])


def _model_data(rows: _Rows, bounds: tuple[int, int, int, int]) -> ModelData:
    train_end, validation_start, test_start, end_day = bounds
    days = day_index(rows.event_ns)
    train = days < train_end
    first_train_day = int(days[train].min()) if train.any() else train_end
    periods = Periods(
        train=train,
        validation=(days >= validation_start) & (days < test_start),
        test=days >= test_start,
        first_day=int(days[0]),
        train_days=(first_train_day, train_end),
        validation_days=(validation_start, test_start),
        test_days=(test_start, end_day),
    )
    return ModelData(rows.features, rows.labels, days, rows.cards, periods)


def _require_both_classes(summary: dict[str, dict[str, Any]], settings: TrainSettings) -> None:
    # The evaluation window first: its own minimum is the usual reason to wait.
    for name in ("evaluation", "validation", "train"):
        period = summary[name]
        rows, frauds = period["rows"], period["frauds"]
        if not rows:
            raise Declined(f"no usable logged transaction falls in the {name} period")
        needed = settings.retrain.min_evaluation_frauds if name == "evaluation" else 1
        if frauds < needed or frauds == rows:
            raise Declined(
                f"the {name} period {period['days']} has {frauds} labelled frauds among "
                f"{rows} transactions; it needs at least {needed} and some genuine ones"
            )


def _source(
    name: str, labels: NDArray[np.int8], history: FeatureTable | None = None
) -> LineageSource:
    return LineageSource(
        name=name,
        rows=len(labels),
        frauds=int(np.count_nonzero(labels == 1)),
        sha256=None if history is None else history.source.source_sha256,
    )


def _fingerprint(
    model: ModelData, event_ns: NDArray[np.int64], sources: list[LineageSource]
) -> DataFingerprint:
    """The rows' own digest: the log has no single file to hash."""
    digest = hashlib.sha256(model.features.tobytes())
    digest.update(model.labels.tobytes())
    return DataFingerprint(
        sha256=digest.hexdigest(),
        rows=len(model.labels),
        first_event=instant(int(event_ns[0])),
        last_event=instant(int(event_ns[-1])),
        source=" + ".join(source.name for source in sources),
    )


def _excluded(log: LabelledLog) -> str:
    counts = ", ".join(f"{count} {reason}" for reason, count in log.excluded.items() if count)
    return f"{log.logged_rows} logged: {counts or 'none left out'}"
