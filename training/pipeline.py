"""`fraud-train train`: history in, a gated, published and (by default) promoted model out.

Steps: load and validate → replay features → split by time → fit with early stopping →
evaluate → choose thresholds → export to ONNX → gates (floors, no regression against the
champion, ONNX parity) → stage the artifact → finalise (checksums, completeness) → promote.
Nothing reaches the registry unless every gate passed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

from service.artifact import (
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    REASON_TABLES_FILE,
    DataFingerprint,
    GateResult,
    Manifest,
    ManifestFeature,
    Period,
)
from service.features import FEATURE_ENGINE_VERSION, FEATURES
from service.onnx_model import OnnxScorer
from service.reasons import Explainer
from service.registry import CHAMPION, Registry
from training import gates, registry
from training.booster import fit_booster, predict
from training.config import TrainSettings
from training.dataset import FeatureTable, build_feature_table
from training.drift_reference import build_drift_reference
from training.export import export_onnx, parity_gap
from training.golden import golden_sample
from training.libraries import library_versions
from training.metrics import evaluate, format_metrics_table, weekly_card_precision_at_k
from training.plots import save_evaluation_plots
from training.split import NANOS_PER_DAY, Periods, split_periods
from training.thresholds import choose_thresholds

FEATURE_NAMES = [feature.name for feature in FEATURES]
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True)
class TrainResult:
    manifest: Manifest
    artifact_dir: Path
    promoted: bool
    report: str


@dataclass(frozen=True)
class _Scored:
    booster: lgb.Booster
    onnx_model: bytes
    metrics: dict[str, dict[str, float]]
    scores: dict[str, NDArray[np.float64]]


def train(
    data: Path,
    registry_root: Path,
    settings: TrainSettings,
    *,
    promote: bool = True,
    rejects_path: Path | None = None,
    progress: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Train on `data` and publish to `registry_root`; GateFailure if a gate fails."""
    say(f"loading and replaying {data.name}")
    table = build_feature_table(
        data, settings.features, rejects_path=rejects_path, progress=progress
    )
    if table.source.rejected_rows:
        say(f"{table.source.rejected_rows} rejected rows written to {rejects_path}")
    periods = split_periods(
        table.days, table.labels, settings.split, settings.features.label_delay_days
    )
    say(f"training on {int(periods.train.sum())} transactions")
    scored = _fit_and_score(table, periods, settings, progress)
    thresholds = choose_thresholds(
        table.labels[periods.validation], scored.scores["validation"], settings.thresholds
    )
    champion = _comparable_champion(Registry(registry_root), settings)
    results = _run_gates(table, periods, scored, settings, champion)
    gates.require(results)

    created = datetime.now(UTC)
    with registry.stage(registry_root) as staging:
        (staging / ONNX_MODEL_FILE).write_bytes(scored.onnx_model)
        scored.booster.save_model(str(staging / NATIVE_MODEL_FILE))
        # Compiled here, once, so that serving loads them in milliseconds (service.reasons).
        Explainer(staging / NATIVE_MODEL_FILE).save_tables(staging / REASON_TABLES_FILE)
        (staging / EVALUATION_FILE).write_text(json.dumps(scored.metrics, indent=2) + "\n")
        save_evaluation_plots(
            table.labels[periods.test],
            scored.scores["test"],
            staging,
            title="test period",
            thresholds=thresholds,
        )
        manifest = Manifest(
            version=registry.version_name(created, scored.onnx_model),
            created_at=created,
            feature_engine_version=FEATURE_ENGINE_VERSION,
            feature_config=settings.features,
            features=[ManifestFeature(name=f.name, description=f.description) for f in FEATURES],
            thresholds=thresholds,
            metrics=scored.metrics,
            training_data=_fingerprint(table),
            periods=_periods(table, periods),
            training_config=settings.model_dump(mode="json"),
            libraries=library_versions(),
            gates=results,
            parent_version=_current_champion(registry_root),
            golden_sample=golden_sample(
                table.features[periods.test],
                table.labels[periods.test],
                OnnxScorer(scored.onnx_model, len(FEATURES)),
                rows=settings.golden_sample_rows,
                seed=settings.booster.seed,
            ),
            drift_reference=build_drift_reference(
                table.features[periods.test],
                scored.scores["test"],
                thresholds,
                feature_names=FEATURE_NAMES,
                period="test",
            ),
            files={},
        )
        artifact_dir = registry.finalise(registry_root, staging, manifest)
    if promote:
        registry.promote(registry_root, manifest.version, reason="passed every gate in training")
    report = format_metrics_table(scored.metrics)
    return TrainResult(manifest, artifact_dir, promote, report)


def _fit_and_score(
    table: FeatureTable, periods: Periods, settings: TrainSettings, progress: bool
) -> _Scored:
    features, labels = table.features, table.labels
    booster = fit_booster(
        settings.booster,
        FEATURE_NAMES,
        (features[periods.train], labels[periods.train]),
        (features[periods.validation], labels[periods.validation]),
        progress=progress,
    )
    delay = math.ceil(settings.features.label_delay_days)
    metrics: dict[str, dict[str, float]] = {}
    split_scores: dict[str, NDArray[np.float64]] = {}
    for name, mask in (("validation", periods.validation), ("test", periods.test)):
        scores = split_scores[name] = predict(booster, features[mask])
        metrics[name] = evaluate(
            table.days[mask],
            table.cards[mask],
            labels[mask],
            scores,
            alert_rate=settings.thresholds.alert_rate,
            k=settings.card_precision_k,
            card_precision=_card_precision(table, mask, scores, settings.card_precision_k, delay),
        )
    return _Scored(booster, export_onnx(booster, FEATURE_NAMES), metrics, split_scores)


def _card_precision(
    table: FeatureTable, mask: NDArray[np.bool_], scores: NDArray[np.float64], k: int, delay: int
) -> float:
    """Card precision@k of the masked rows, with the earlier history's known frauds."""
    full = np.zeros(len(table))
    full[mask] = scores
    return weekly_card_precision_at_k(
        table.days, table.cards, table.labels, full, mask, k=k, label_delay_days=delay
    )


def _run_gates(
    table: FeatureTable,
    periods: Periods,
    scored: _Scored,
    settings: TrainSettings,
    champion: tuple[str, Path] | None,
) -> list[GateResult]:
    test_features = table.features[periods.test]
    results = gates.metric_floors(scored.metrics["test"], settings.gates, settings.card_precision_k)
    gap = parity_gap(scored.booster, scored.onnx_model, test_features)
    results.append(gates.parity(gap, settings.gates))
    champion_metrics = None
    champion_version = None
    if champion is not None:
        champion_version, model_path = champion
        scores = OnnxScorer(model_path, len(FEATURES)).score_batch(test_features)
        champion_metrics = evaluate(
            table.days[periods.test],
            table.cards[periods.test],
            table.labels[periods.test],
            scores,
            alert_rate=settings.thresholds.alert_rate,
            k=settings.card_precision_k,
        )
    results.extend(
        gates.no_regression(
            scored.metrics["test"], champion_metrics, champion_version, settings.gates
        )
    )
    return results


def _comparable_champion(models: Registry, settings: TrainSettings) -> tuple[str, Path] | None:
    """The champion's version and ONNX file, when it reads the same features as the candidate."""
    champion = models.champion()
    if champion is None:
        return None
    version, manifest = champion
    if manifest.feature_names != FEATURE_NAMES or manifest.feature_config != settings.features:
        return None
    return version, models.artifact_dir(version) / ONNX_MODEL_FILE


def _current_champion(registry_root: Path) -> str | None:
    return Registry(registry_root).alias(CHAMPION)


def _fingerprint(table: FeatureTable) -> DataFingerprint:
    timestamps = table.source.frame["timestamp_ns"]
    return DataFingerprint(
        sha256=table.source.source_sha256,
        rows=len(table),
        first_event=_instant(int(timestamps.iloc[0])),
        last_event=_instant(int(timestamps.iloc[-1])),
        source=table.source.source_name,
    )


def _periods(table: FeatureTable, periods: Periods) -> dict[str, Period]:
    spans = {
        "train": periods.train_days,
        "validation": periods.validation_days,
        "test": periods.test_days,
    }
    result = {}
    for name, (start, end) in spans.items():
        mask = getattr(periods, name)
        result[name] = Period(
            start=_instant(start * NANOS_PER_DAY),
            end=_instant(end * NANOS_PER_DAY),
            rows=int(mask.sum()),
            frauds=int(table.labels[mask].sum()),
        )
    return result


def _instant(nanoseconds: int) -> datetime:
    return datetime.fromtimestamp(nanoseconds / 1e9, tz=UTC)
