"""`fraud-train evaluate`: score a history with a published model, as the server would.

The file is replayed in time order through the feature engine with the model's own feature
config, each fraud label fed back one label delay after its transaction, and every
transaction after the warm-up days is scored by the ONNX model through the server's scorer.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.features import FEATURE_ENGINE_VERSION, FEATURES
from service.model.artifact import ONNX_MODEL_FILE, Manifest, Thresholds
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import CHAMPION, Registry, RegistryError
from training.data.dataset import build_feature_table
from training.durable_files import replace_atomically
from training.evaluation.metrics import evaluate_masked


class EvaluationError(Exception):
    """The model cannot be evaluated here (unknown version, other feature engine...)."""


def evaluate_history(
    data: Path,
    registry_root: Path,
    *,
    version: str | None = None,
    warmup_days: int = 30,
    scores_out: Path | None = None,
    rejects_path: Path | None = None,
    alert_rate: float = 0.01,
    k: int = 100,
    progress: bool = False,
) -> dict[str, float | str]:
    """Metrics of `version` (default: the champion) on the history in `data`."""
    version, manifest = _resolve(Registry(registry_root), version)
    table = build_feature_table(
        data, manifest.feature_config, rejects_path=rejects_path, progress=progress
    )
    first_scored_day = int(table.days.min()) + warmup_days
    scored = table.days >= first_scored_day
    if not scored.any():
        raise EvaluationError(f"history is not longer than the {warmup_days} warm-up days")
    model_path = Registry(registry_root).artifact_dir(version) / ONNX_MODEL_FILE
    scores = OnnxScorer(model_path, len(FEATURES)).score_batch(table.features[scored])
    labels = table.labels[scored]
    metrics: dict[str, float | str] = {"model_version": version, "warmup_days": warmup_days}
    metrics.update(
        evaluate_masked(
            table.days,
            table.cards,
            table.labels,
            scores,
            scored,
            alert_rate=alert_rate,
            k=k,
            label_delay_days=math.ceil(manifest.feature_config.label_delay_days),
        )
    )
    metrics.update(decision_rates(labels, scores, manifest.thresholds))
    if scores_out is not None:
        write_scores(scores_out, table.transaction_ids[scored], scores)
    return metrics


def decision_rates(
    labels: NDArray[np.int8], scores: NDArray[np.float64], thresholds: Thresholds
) -> dict[str, float]:
    """Share of transactions each decision would take, and how precise declines are."""
    declined = scores >= thresholds.decline
    reviewed = (scores >= thresholds.review) & ~declined
    return {
        "review_rate": float(reviewed.mean()),
        "decline_rate": float(declined.mean()),
        "decline_precision": float(labels[declined].mean()) if declined.any() else math.nan,
    }


def write_scores(
    path: Path, transaction_ids: NDArray[np.object_], scores: NDArray[np.float64]
) -> None:
    """`transaction_id,score` per row, scores at full precision, written atomically."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(("transaction_id", "score"))
    writer.writerows(zip(transaction_ids.tolist(), map(repr, scores.tolist()), strict=True))
    replace_atomically(path, text.getvalue())


def _resolve(models: Registry, version: str | None) -> tuple[str, Manifest]:
    if version is None:
        version = models.alias(CHAMPION)
        if version is None:
            raise EvaluationError(f"{models.root} has no champion; pass --version")
    try:
        manifest = models.load(version)
    except RegistryError as error:
        raise EvaluationError(str(error)) from error
    if manifest.feature_engine_version != FEATURE_ENGINE_VERSION or manifest.feature_names != [
        feature.name for feature in FEATURES
    ]:
        raise EvaluationError(
            f"model {version} was built for feature engine {manifest.feature_engine_version}; "
            f"this installation computes version {FEATURE_ENGINE_VERSION}"
        )
    return version, manifest
