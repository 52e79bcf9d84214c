"""`fraud-train train`: history in, a gated, published and (by default) promoted model out.

Steps: load and validate → replay features → split by time → fit with early stopping →
evaluate → choose thresholds → export to ONNX → gates (floors, no regression against the
champion, ONNX parity) → stage the artifact → finalise (checksums, completeness) → promote.
Nothing reaches the registry unless every gate passed.

Fitting, the floors and parity gates and publishing are `training.model_build.candidate`'s,
shared with `training.retraining.retrain`; the no-regression gate and promotion to champion are
train's own. With a Dask cluster (`--dask`) the load and replay run there
(`training.data.cluster_history`), and so does the fit when the feature matrix does not fit
one worker (`training.model_build.cluster_fit`); every later step is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.features import FEATURES
from service.model.artifact import (
    ONNX_MODEL_FILE,
    DataFingerprint,
    GateResult,
    Lineage,
    LineageSource,
    Manifest,
)
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import CHAMPION, Registry
from training.config import TrainSettings
from training.data.dataset import FeatureTable, build_feature_table
from training.data.split import split_periods
from training.evaluation.metrics import evaluate, format_metrics_table
from training.model_build import gates
from training.model_build.candidate import (
    Candidate,
    ModelData,
    fit_candidate,
    instant,
    publish,
    quality_gates,
    reads_same_features,
)
from training.registry import publishing as registry

if TYPE_CHECKING:
    from training.data.cluster_spec import ClusterSpec


@dataclass(frozen=True)
class TrainResult:
    manifest: Manifest
    artifact_dir: Path
    promoted: bool
    report: str


def train(
    data: Path,
    registry_root: Path,
    settings: TrainSettings,
    *,
    promote: bool = True,
    rejects_path: Path | None = None,
    progress: bool = False,
    say: Callable[[str], None] = lambda _: None,
    cluster: ClusterSpec | None = None,
) -> TrainResult:
    """Train on `data` and publish to `registry_root`; GateFailure if a gate fails.

    With `cluster`, the history is checked and replayed on that Dask cluster, and the model
    fitted there when its matrix does not fit one worker (`training.model_build.cluster_fit`).
    """
    if cluster is None:
        say(f"loading and replaying {data.name}")
        table = build_feature_table(
            data, settings.features, rejects_path=rejects_path, progress=progress
        )
        built = _built_locally(table, settings, progress)
    else:
        built = _built_on_cluster(cluster, data, settings, rejects_path, progress, say)
    if built.rejected_rows:
        say(f"{built.rejected_rows} rejected rows written to {rejects_path}")
    model_data, candidate = built.model_data, built.candidate
    champion = _comparable_champion(Registry(registry_root), settings)
    results = quality_gates(model_data, candidate, settings)
    results.extend(_no_regression(model_data, candidate, settings, champion))
    gates.require(results)

    fingerprint = built.fingerprint
    lineage = Lineage(
        kind="train",
        data_start=fingerprint.first_event,
        data_end=fingerprint.last_event,
        parent_version=_current_champion(registry_root),
        sources=[
            LineageSource(
                name=fingerprint.source,
                rows=fingerprint.rows,
                frauds=built.frauds,
                sha256=fingerprint.sha256,
            )
        ],
        gates=results,
    )
    manifest, artifact_dir = publish(
        registry_root,
        model_data,
        candidate,
        settings,
        created_at=datetime.now(UTC),
        training_data=fingerprint,
        lineage=lineage,
    )
    if promote:
        registry.promote(registry_root, manifest.version, reason="passed every gate in training")
    report = format_metrics_table(candidate.metrics)
    return TrainResult(manifest, artifact_dir, promote, report)


@dataclass(frozen=True)
class _Built:
    """A fitted candidate, the rows it is judged on, and what the lineage says of its data."""

    model_data: ModelData
    candidate: Candidate
    fingerprint: DataFingerprint
    frauds: int
    rejected_rows: int


def _built_locally(table: FeatureTable, settings: TrainSettings, progress: bool) -> _Built:
    periods = split_periods(
        table.days, table.labels, settings.split, settings.features.label_delay_days
    )
    model_data = ModelData(table.features, table.labels, table.days, table.cards, periods)
    candidate = fit_candidate(model_data, settings, progress=progress)
    timestamps = table.source.frame["timestamp_ns"]
    fingerprint = DataFingerprint(
        sha256=table.source.source_sha256,
        rows=len(table),
        first_event=instant(int(timestamps.iloc[0])),
        last_event=instant(int(timestamps.iloc[-1])),
        source=table.source.source_name,
    )
    frauds = int(np.count_nonzero(table.labels == 1))
    return _Built(model_data, candidate, fingerprint, frauds, table.source.rejected_rows)


def _built_on_cluster(
    spec: ClusterSpec,
    data: Path,
    settings: TrainSettings,
    rejects_path: Path | None,
    progress: bool,
    say: Callable[[str], None],
) -> _Built:
    # Here, not at the top: Dask and distributed cost a train without `--dask` about 1.5 s
    # of CPU in imports alone (dask.dataframe via the cluster history, distributed).
    from training.data.cluster import describe_cluster, open_client, smallest_worker_memory
    from training.data.cluster_history import check_on_cluster, gather_table, replayed_frame
    from training.model_build.cluster_fit import fit_on_cluster, plan_fit

    with open_client(spec) as client:
        say(describe_cluster(client))
        say(f"checking {data} on the cluster")
        history = check_on_cluster(client, data, rejects_path=rejects_path, progress=progress)
        replayed = replayed_frame(history, settings.features)
        plan = plan_fit(history.rows, smallest_worker_memory(client), settings.cluster)
        say(plan.reason)
        if not plan.on_cluster:
            say(f"replaying {history.rows:,} transactions on the cluster")
            table = gather_table(client, history, replayed, progress=progress)
            return _built_locally(table, settings, progress)
        say(f"replaying {history.rows:,} transactions and fitting on the cluster")
        fitted = fit_on_cluster(client, replayed, settings, progress=progress)
    say(f"fitted {fitted.rounds} rounds (chosen by early stopping on a sample)")
    candidate = fit_candidate(fitted.held_out, settings, booster=fitted.booster)
    fingerprint = DataFingerprint(
        sha256=history.source_sha256,
        rows=fitted.rows,
        first_event=instant(fitted.first_ns),
        last_event=instant(fitted.last_ns),
        source=history.source_name,
    )
    return _Built(fitted.held_out, candidate, fingerprint, fitted.frauds, history.rejected_rows)


def _no_regression(
    data: ModelData,
    candidate: Candidate,
    settings: TrainSettings,
    champion: tuple[str, Path] | None,
) -> list[GateResult]:
    champion_metrics = None
    champion_version = None
    if champion is not None:
        champion_version, model_path = champion
        test = data.periods.test
        scores = OnnxScorer(model_path, len(FEATURES)).score_batch(data.features[test])
        champion_metrics = evaluate(
            data.days[test],
            data.cards[test],
            data.labels[test],
            scores,
            alert_rate=settings.thresholds.alert_rate,
            k=settings.card_precision_k,
        )
    return gates.no_regression(
        candidate.metrics["test"], champion_metrics, champion_version, settings.gates
    )


def _comparable_champion(models: Registry, settings: TrainSettings) -> tuple[str, Path] | None:
    """The champion's version and ONNX file, when it reads the same features as the candidate."""
    champion = models.champion()
    if champion is None:
        return None
    version, manifest = champion
    if not reads_same_features(manifest, settings):
        return None
    return version, models.artifact_dir(version) / ONNX_MODEL_FILE


def _current_champion(registry_root: Path) -> str | None:
    return Registry(registry_root).alias(CHAMPION)
