"""The drift reference published in the artifact: what the final model saw on the test period.

The server bins its recent traffic the same way and reports the population stability
index against this reference (`service.observability.drift`).

Reference period: the test period. It is the most recent data, so the nearest to the
traffic the model will meet; the final model was neither fitted nor tuned on it (training
fitted the trees, validation stopped them and chose the thresholds), so its scores and
decision rates there are honest estimates of live ones rather than optimistic ones; and it
is the period the manifest's test metrics and evaluation plots describe. Its cost: fewer
rows than train and validation together, still thousands in any real history.

Bins, per feature and for the score: cuts at the deciles (`DRIFT_BINS`), plus a cut on
each side of any single value holding at least a decile's share (a spike at 0 gets a bin
of its own), deduplicated. Every edge lies halfway between two observed values, never on
one, so a value seen in training cannot land in another bin over a rounding difference
(the server's ONNX scores differ from LightGBM's in the last float32 digits). Values
outside the period's range get bins of their own, open-ended, just beyond its smallest and
largest value (half the median gap between its values away): a value never seen in
training, such as a first e-commerce purchase where the period had only card-present
ones, is the shift that matters most, and would vanish into an outer decile otherwise.
NaN (a missing value) has a bin of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from service.model.artifact import Thresholds
from service.observability.drift_bins import (
    Bins,
    DecisionRates,
    DriftReference,
    FeatureBins,
    bin_proportions,
)

DRIFT_BINS = 10


def build_drift_reference(
    features: NDArray[np.float32],
    scores: NDArray[np.float64],
    thresholds: Thresholds,
    *,
    feature_names: Sequence[str],
    period: str,
    bins: int = DRIFT_BINS,
) -> DriftReference:
    """The reference of `period`: its feature rows (columns in `feature_names` order), the
    model's `scores` on them and the decisions `thresholds` make of those scores."""
    if scores.size == 0 or features.shape != (scores.size, len(feature_names)):
        raise ValueError(
            f"need one score per feature row and one column per feature name, got "
            f"{features.shape} features, {scores.size} scores, {len(feature_names)} names"
        )
    return DriftReference(
        period=period,
        rows=scores.size,
        features=[
            FeatureBins(name=name, **_binned(features[:, column], bins).model_dump())
            for column, name in enumerate(feature_names)
        ],
        score=_binned(scores, bins),
        decision_rates=decision_rates(scores, thresholds),
    )


def bin_edges(values: NDArray[np.floating], bins: int) -> list[float]:
    """Edges for `values`: quantile cuts, each spike alone, each edge between two values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    distinct, counts = np.unique(finite, return_counts=True)
    share_below = np.cumsum(counts) / finite.size
    # Cut j separates distinct[j] from distinct[j + 1].
    quantile_cuts = np.searchsorted(share_below, np.arange(1, bins) / bins)
    spikes = np.flatnonzero(counts * bins >= finite.size)
    cuts = np.union1d(quantile_cuts, np.concatenate([spikes - 1, spikes]))
    cuts = cuts[(cuts >= 0) & (cuts < distinct.size - 1)]
    lower = distinct[cuts].astype(np.float64)
    upper = distinct[cuts + 1].astype(np.float64)
    inner = (lower + upper) / 2
    margin = _range_margin(distinct.astype(np.float64))
    outer = [distinct[0] - margin, distinct[-1] + margin]
    return [float(edge) for edge in np.unique(np.concatenate([inner, outer]))]


def _range_margin(distinct: NDArray[np.float64]) -> float:
    """How far beyond the observed range the outer edges lie: half the median gap between
    distinct values (0.5 for a constant), never within float32 rounding of an extreme."""
    gap = float(np.median(np.diff(distinct))) if distinct.size > 1 else 1.0
    largest = float(np.abs(distinct[[0, -1]]).max())
    return max(gap / 2, 1e-6 * max(largest, 1.0))


def decision_rates(scores: NDArray[np.float64], thresholds: Thresholds) -> DecisionRates:
    """Shares of `scores` approved, reviewed and declined, by the scorer's rule."""
    # Decline at or above `decline`, else review at or above `review`, else approve.
    decisions = np.searchsorted([thresholds.review, thresholds.decline], scores, side="right")
    approve, review, decline = np.bincount(decisions, minlength=3) / scores.size
    return DecisionRates(approve=approve, review=review, decline=decline)


def _binned(values: NDArray[np.floating], bins: int) -> Bins:
    edges = bin_edges(values, bins)
    proportions = bin_proportions(values, edges)
    return Bins(edges=edges, proportions=[float(share) for share in proportions])
