"""Evaluation plots for a model report: ROC, precision-recall and score distributions.

Built on `matplotlib.figure.Figure` rather than pyplot: a bare Figure needs no backend
and no global figure registry, so nothing has to be selected or closed and the module is
safe to use next to other matplotlib users in the same process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from service.model.artifact import Thresholds
from training.evaluation.metrics import FloatArray, IntArray, auc_roc, average_precision

FIGURE_SIZE = (6.0, 4.0)
DPI = 100
SCORE_BINS = 50


def save_evaluation_plots(
    label: IntArray,
    score: FloatArray,
    out_dir: Path,
    *,
    title: str,
    thresholds: Thresholds | None = None,
) -> list[Path]:
    """Write roc.png, precision_recall.png and score_distribution.png; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers: dict[str, Callable[[Axes], None]] = {
        "roc.png": lambda axes: _draw_roc(axes, label, score),
        "precision_recall.png": lambda axes: _draw_precision_recall(axes, label, score),
        "score_distribution.png": lambda axes: _draw_scores(axes, label, score, thresholds),
    }
    paths = []
    for name, draw in drawers.items():
        figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
        axes = figure.subplots()
        draw(axes)
        axes.set_title(f"{title}: {axes.get_title()}")
        figure.savefig(out_dir / name)
        paths.append(out_dir / name)
    return paths


def _draw_roc(axes: Axes, label: IntArray, score: FloatArray) -> None:
    axes.set(title="ROC", xlabel="False positive rate", ylabel="True positive rate")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="Chance")
    if _one_class(axes, label):
        return
    false_positive_rate, true_positive_rate, _ = roc_curve(label, score)
    auc = auc_roc(label, score)
    axes.plot(false_positive_rate, true_positive_rate, label=f"Model (AUC {auc:.4f})")
    axes.legend(loc="lower right")


def _draw_precision_recall(axes: Axes, label: IntArray, score: FloatArray) -> None:
    axes.set(title="Precision-recall", xlabel="Recall", ylabel="Precision", ylim=(0, 1.02))
    if _one_class(axes, label):
        return
    precision, recall, _ = precision_recall_curve(label, score)
    ap = average_precision(label, score)
    axes.plot(recall, precision, drawstyle="steps-post", label=f"Model (AP {ap:.4f})")
    axes.axhline(np.mean(label == 1), linestyle=":", color="grey", label="Fraud rate")
    axes.legend(loc="lower left")


def _draw_scores(
    axes: Axes, label: IntArray, score: FloatArray, thresholds: Thresholds | None
) -> None:
    is_fraud = np.asarray(label) == 1
    axes.set(title="Score distribution", xlabel="Score", ylabel="Transactions (log scale)")
    axes.hist(score[~is_fraud], bins=SCORE_BINS, range=(0.0, 1.0), alpha=0.6, label="Genuine")
    axes.hist(score[is_fraud], bins=SCORE_BINS, range=(0.0, 1.0), alpha=0.6, label="Fraud")
    axes.set_yscale("log")
    if thresholds is not None:
        review, decline = thresholds.review, thresholds.decline
        axes.axvline(review, color="orange", linestyle="--", label=f"Review ({review:.3f})")
        axes.axvline(decline, color="red", linestyle="--", label=f"Decline ({decline:.3f})")
    axes.legend(loc="best")


def _one_class(axes: Axes, label: IntArray) -> bool:
    """Say on the plot that the curve is undefined when only one class is present."""
    if np.unique(label).size == 2:
        return False
    axes.text(0.5, 0.5, "Undefined: only one class", ha="center", transform=axes.transAxes)
    return True
