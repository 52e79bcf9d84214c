"""Tests for training.evaluation.plots: the three evaluation PNGs are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.model.artifact import Thresholds
from training.evaluation.metrics import FloatArray, IntArray
from training.evaluation.plots import save_evaluation_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_FILES = ["roc.png", "precision_recall.png", "score_distribution.png"]


def scored(rows: int = 2_000, seed: int = 0) -> tuple[IntArray, FloatArray]:
    """Labels and scores where frauds tend to score higher."""
    rng = np.random.default_rng(seed)
    label = (rng.random(rows) < 0.05).astype(np.int64)
    score = np.where(label == 1, rng.beta(4, 2, rows), rng.beta(1, 8, rows))
    return label, score


def assert_pngs(paths: list[Path]) -> None:
    """Each path is a real PNG with more in it than an empty canvas."""
    for path in paths:
        content = path.read_bytes()
        assert content.startswith(PNG_MAGIC), path.name
        assert len(content) > 10_000, path.name


def test_writes_the_three_plots_with_thresholds(tmp_path):
    """All three PNGs land in a new directory and their paths are returned."""
    label, score = scored()
    thresholds = Thresholds(review=0.5, decline=0.8, policy="test")
    out_dir = tmp_path / "report"
    paths = save_evaluation_plots(label, score, out_dir, title="test", thresholds=thresholds)
    assert paths == [out_dir / name for name in PLOT_FILES]
    assert_pngs(paths)


def test_plots_one_class_split_without_warning(tmp_path):
    """A split without fraud still gets its plots, marked as undefined, and no warning."""
    _, score = scored()
    paths = save_evaluation_plots(np.zeros(score.size, np.int64), score, tmp_path, title="t")
    assert_pngs(paths)
