"""Binned distributions and the population stability index (PSI) between two of them.

The population stability index (PSI) compares the share of live rows in each bin, a_i,
with the share the reference period had, e_i:

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

Both shares are floored at `PSI_EPSILON` (1e-4, one row in a full default window) before
the formula, so a bin empty on one side adds a large but finite term instead of infinity;
the floored shares are not renormalised. Conventions: below 0.1 stable, 0.1 to 0.25
moderate drift (look), above 0.25 major drift (act). Sampling noise alone gives about
(bins - 1) / rows: 0.001 for 11 bins over 10,000 rows, 0.02 over the 500-row minimum.

Bins (`Bins`): a sorted list of finite edges cuts the real line into len(edges) + 1 bins,
open-ended at both ends, [edges[i-1], edges[i]) in between; NaN (a missing value) has a
last bin of its own. Training chooses the edges (`training.model_build.drift_reference`):
quantiles of the reference, a bin of its own for every value holding a large share (a spike
at 0), bins of their own beyond the reference's range, and every edge halfway between two
observed values (or just beyond the extremes), so that no reference value sits on one.
The same `bin_proportions` bins the reference and the live window.

Shared by training, which publishes the reference in the manifest
(`training.model_build.drift_reference`) and judges drift for the retrain triggers, and the
server, which bins its live window the same way (`service.observability.drift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

PSI_EPSILON = 1e-4
# Drift by construction in any window shorter than their cycle: never warned of.
CYCLIC_FEATURES = frozenset({"hour_of_day", "day_of_week"})
_SUM_TOLERANCE = 1e-6

FloatArray = NDArray[np.floating]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Bins(_Frozen):
    """A binned distribution: bins below edges[0], between edges, from edges[-1] up, NaN.

    `proportions` has len(edges) + 2 entries, the NaN bin last, and sums to 1.
    """

    edges: list[float] = Field(description="Finite, strictly increasing bin edges.")
    proportions: list[float] = Field(description="Share of the reference in each bin.")

    @model_validator(mode="after")
    def _check_bins(self) -> Self:
        edges = np.array(self.edges, dtype=np.float64)
        if not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
            raise ValueError("edges must be finite and strictly increasing")
        shares = np.array(self.proportions, dtype=np.float64)
        if shares.size != edges.size + 2:
            raise ValueError(f"{edges.size} edges need {edges.size + 2} proportions")
        if (shares < 0).any() or abs(shares.sum() - 1) > _SUM_TOLERANCE:
            raise ValueError("proportions must be non-negative and sum to 1")
        return self


class FeatureBins(Bins):
    """The bins of one model feature, named as in the manifest's feature list."""

    name: str


class DecisionRates(_Frozen):
    """Share of transactions per decision."""

    approve: float = Field(ge=0, le=1)
    review: float = Field(ge=0, le=1)
    decline: float = Field(ge=0, le=1)


class DriftReference(_Frozen):
    """What the model's inputs, scores and decisions looked like on a reference period."""

    period: str = Field(description="The manifest period it describes, e.g. 'test'.")
    rows: int = Field(gt=0, description="Transactions in the reference period.")
    features: list[FeatureBins] = Field(description="One per model feature, in model order.")
    score: Bins
    decision_rates: DecisionRates = Field(description="Under the model's thresholds.")

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]


def bin_proportions(values: FloatArray, edges: Sequence[float]) -> NDArray[np.float64]:
    """Share of `values` in each bin of `edges` (see `Bins`), NaN bin last."""
    return sorted_shares(np.sort(values), search_edges(edges))


def psi(actual: FloatArray, expected: FloatArray) -> float:
    """Population stability index of `actual` shares against `expected`, per bin."""
    floored_actual = np.maximum(actual, PSI_EPSILON)
    floored_expected = np.maximum(expected, PSI_EPSILON)
    terms = (floored_actual - floored_expected) * np.log(floored_actual / floored_expected)
    return float(np.sum(terms))


def search_edges(edges: Sequence[float]) -> NDArray[np.float64]:
    """`edges` as `sorted_shares` searches them."""
    # numpy orders NaN after every number: a NaN edge last counts the values that are not NaN.
    return np.append(np.asarray(edges, dtype=np.float64), np.nan)


def sorted_shares(
    sorted_values: FloatArray, search_edges: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Share of `sorted_values` in each bin of `search_edges` (from `search_edges`)."""
    # Counting values below each edge in sorted values is faster than locating each value
    # among the edges (which mispredicts a branch per value).
    below = np.searchsorted(sorted_values, search_edges, side="left")
    return np.diff(below, prepend=0, append=sorted_values.size) / sorted_values.size
