"""Fitting, judging and publishing a candidate model: the path every model takes, whatever its
rows came from (`training.model_build.pipeline.train`: a replayed history;
`training.retraining.retrain`: the server's decision log).

    fit_candidate        fit with early stopping on validation, score validation and test,
                         choose thresholds on validation, export to ONNX
    quality_gates        metric floors on test, ONNX parity
    reads_same_features  whether a published model (the champion) reads the same features
    publish              stage models, reason tables, evaluation, plots and reports; write
                         the manifest (golden sample, drift reference, lineage); finalise
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from service.features import FEATURE_ENGINE_VERSION, FEATURES
from service.model.artifact import (
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    REASON_TABLES_FILE,
    DataFingerprint,
    GateResult,
    Lineage,
    Manifest,
    ManifestFeature,
    Period,
    Thresholds,
)
from service.model.onnx_scorer import OnnxScorer
from training.config import TrainSettings
from training.data.split import NANOS_PER_DAY, Periods
from training.evaluation.metrics import evaluate_masked
from training.model_build import gates
from training.model_build.drift_reference import build_drift_reference
from training.model_build.golden import golden_sample
from training.model_build.libraries import library_versions
from training.model_build.thresholds import choose_thresholds
from training.registry import publishing as registry
from training.registry.signing import load_signing_key

if TYPE_CHECKING:
    import lightgbm as lgb

FEATURE_NAMES = [feature.name for feature in FEATURES]
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True)
class ModelData:
    """Row-aligned arrays in event-time order, and the periods cut from them: the model is
    fitted on `train`, stopped and given thresholds on `validation`, judged on `test`."""

    features: NDArray[np.float32]
    labels: NDArray[np.int8]
    days: NDArray[np.int64]
    cards: NDArray[np.object_]
    periods: Periods
    train_counts: tuple[int, int] | None = None
    """Rows and frauds of the training period when its rows are not in these arrays (a fit
    on a Dask cluster: only the held-out rows come back)."""


@dataclass(frozen=True)
class Candidate:
    """A fitted model, its ONNX export and thresholds, and its metrics and native scores on
    the validation and test periods."""

    booster: lgb.Booster
    onnx_model: bytes
    thresholds: Thresholds
    metrics: dict[str, dict[str, float]]
    scores: dict[str, NDArray[np.float64]]


def fit_candidate(
    data: ModelData,
    settings: TrainSettings,
    *,
    progress: bool = False,
    booster: lgb.Booster | None = None,
) -> Candidate:
    """Fit with early stopping on validation (unless `booster` was fitted elsewhere), score
    validation and test, choose thresholds on validation, export to ONNX."""
    # LightGBM, onnx (about 1.5 s of CPU) and the plots' matplotlib are imported where a
    # model is fitted, gated or published: a retrain that declines before fitting, for want
    # of new fraud reports, needs none of them.
    from training.model_build.booster import fit_booster, predict
    from training.model_build.export import export_onnx

    periods = data.periods
    if booster is None:
        booster = fit_booster(
            settings.booster,
            FEATURE_NAMES,
            (data.features[periods.train], data.labels[periods.train]),
            (data.features[periods.validation], data.labels[periods.validation]),
            progress=progress,
        )
    metrics: dict[str, dict[str, float]] = {}
    split_scores: dict[str, NDArray[np.float64]] = {}
    for name, mask in (("validation", periods.validation), ("test", periods.test)):
        scores = split_scores[name] = predict(booster, data.features[mask])
        metrics[name] = period_metrics(data, mask, scores, settings)
    thresholds = choose_thresholds(
        data.labels[periods.validation], split_scores["validation"], settings.thresholds
    )
    onnx_model = export_onnx(booster, FEATURE_NAMES)
    return Candidate(booster, onnx_model, thresholds, metrics, split_scores)


def period_metrics(
    data: ModelData, mask: NDArray[np.bool_], scores: NDArray[np.float64], settings: TrainSettings
) -> dict[str, float]:
    """Every metric of the rows in `mask` scored `scores`; card precision@k with the earlier
    rows' known frauds."""
    return evaluate_masked(
        data.days,
        data.cards,
        data.labels,
        scores,
        mask,
        alert_rate=settings.thresholds.alert_rate,
        k=settings.card_precision_k,
        label_delay_days=math.ceil(settings.features.label_delay_days),
    )


def reads_same_features(manifest: Manifest, settings: TrainSettings) -> bool:
    """Whether the model of `manifest` reads the features a candidate trained here with
    `settings` would: the same names, feature engine version and feature settings."""
    return (
        manifest.feature_names == FEATURE_NAMES
        and manifest.feature_engine_version == FEATURE_ENGINE_VERSION
        and manifest.feature_config == settings.features
    )


def quality_gates(
    data: ModelData, candidate: Candidate, settings: TrainSettings
) -> list[GateResult]:
    """The gates every published model passes: metric floors on test, ONNX parity."""
    from training.model_build.export import parity_gap

    results = gates.metric_floors(
        candidate.metrics["test"], settings.gates, settings.card_precision_k
    )
    gap = parity_gap(candidate.booster, candidate.onnx_model, data.features[data.periods.test])
    results.append(gates.parity(gap, settings.gates))
    return results


def publish(
    registry_root: Path,
    data: ModelData,
    candidate: Candidate,
    settings: TrainSettings,
    *,
    created_at: datetime,
    training_data: DataFingerprint,
    lineage: Lineage,
    reports: Mapping[str, str] | None = None,
) -> tuple[Manifest, Path]:
    """Stage the candidate's artifact (models, reason tables, evaluation, plots, `reports`
    as extra text files) and publish it; its manifest and directory.

    The manifest's gates and parent are the lineage's: one record of each. The manifest is
    signed with `settings.signing_key` if one is set.
    """
    from training.evaluation.plots import save_evaluation_plots
    from training.model_build.reason_tables import compile_reason_tables, save_tables

    test = data.periods.test
    signing_key = None if settings.signing_key is None else load_signing_key(settings.signing_key)
    with registry.stage(registry_root) as staging:
        (staging / ONNX_MODEL_FILE).write_bytes(candidate.onnx_model)
        candidate.booster.save_model(str(staging / NATIVE_MODEL_FILE))
        # Compiled here, once: the server only reads them (service.model.explainer).
        reason_tables = compile_reason_tables(staging / NATIVE_MODEL_FILE)
        save_tables(reason_tables, staging / REASON_TABLES_FILE)
        (staging / EVALUATION_FILE).write_text(json.dumps(candidate.metrics, indent=2) + "\n")
        for name, text in (reports or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        save_evaluation_plots(
            data.labels[test],
            candidate.scores["test"],
            staging,
            title="test period",
            thresholds=candidate.thresholds,
        )
        manifest = Manifest(
            version=registry.version_name(created_at, candidate.onnx_model),
            created_at=created_at,
            feature_engine_version=FEATURE_ENGINE_VERSION,
            feature_config=settings.features,
            features=[ManifestFeature(name=f.name, description=f.description) for f in FEATURES],
            thresholds=candidate.thresholds,
            metrics=candidate.metrics,
            training_data=training_data,
            periods=period_records(data),
            # Where the signing key lives says nothing about the model, and is nobody's business.
            training_config=settings.model_dump(mode="json", exclude={"signing_key"}),
            libraries=library_versions(),
            gates=lineage.gates,
            parent_version=lineage.parent_version,
            golden_sample=golden_sample(
                data.features[test],
                data.labels[test],
                OnnxScorer(candidate.onnx_model, len(FEATURES)),
                rows=settings.golden_sample_rows,
                seed=settings.booster.seed,
            ),
            drift_reference=build_drift_reference(
                data.features[test],
                candidate.scores["test"],
                candidate.thresholds,
                feature_names=FEATURE_NAMES,
                period="test",
            ),
            files={},
            lineage=lineage,
        )
        artifact_dir = registry.finalise(registry_root, staging, manifest, signing_key=signing_key)
    return manifest, artifact_dir


def period_records(data: ModelData) -> dict[str, Period]:
    """Each period's span (whole UTC days), rows and frauds, as the manifest records them."""
    periods = data.periods
    spans = {
        "train": periods.train_days,
        "validation": periods.validation_days,
        "test": periods.test_days,
    }
    result = {}
    for name, (start, end) in spans.items():
        mask = getattr(periods, name)
        rows, frauds = int(mask.sum()), int(data.labels[mask].sum())
        if name == "train" and data.train_counts is not None:
            rows, frauds = data.train_counts
        result[name] = Period(
            start=instant(start * NANOS_PER_DAY),
            end=instant(end * NANOS_PER_DAY),
            rows=rows,
            frauds=frauds,
        )
    return result


def instant(nanoseconds: int) -> datetime:
    """The UTC time of `nanoseconds` since the epoch."""
    return datetime.fromtimestamp(nanoseconds / 1e9, tz=UTC)
