"""The golden sample: feature rows with the scores serving must reproduce.

Frauds are over-represented so that the sample exercises the high-score paths that decide
declines, and rows are drawn with a fixed seed so the same model gives the same sample.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.model.artifact import GoldenSample
from service.model.onnx_scorer import OnnxScorer


def golden_sample(
    features: NDArray[np.float32],
    labels: NDArray[np.int8],
    scorer: OnnxScorer,
    *,
    rows: int,
    seed: int,
) -> GoldenSample:
    """Up to `rows` rows of `features` (about half frauds when there are enough), scored."""
    rng = np.random.default_rng(seed)
    frauds = np.flatnonzero(labels == 1)
    genuine = np.flatnonzero(labels == 0)
    fraud_rows = rng.choice(frauds, size=min(len(frauds), rows // 2), replace=False)
    genuine_rows = rng.choice(
        genuine, size=min(len(genuine), rows - len(fraud_rows)), replace=False
    )
    chosen = np.sort(np.concatenate([fraud_rows, genuine_rows]))
    sample = features[chosen]
    scores = scorer.score_batch(sample)
    return GoldenSample(
        features=[[float(value) for value in row] for row in sample],
        scores=[float(score) for score in scores],
    )
