"""Reason codes: which features pushed a transaction's score towards fraud.

Method: path attribution (Saabas, as in `treeinterpreter`), in log-odds. Each split on a
row's root-to-leaf path credits its feature with the change in the node's expected value;
over all trees, a row's credits add up exactly to its raw score (log-odds) minus the bias,
the sum of the trees' root values. A leaf's credits depend on its path, not on the row, so
training compiles them once per model (`training.model_build.reason_tables`) into reason
tables, published in the artifact as `reasons.npz`: for every leaf of every tree, one
float64 vector with a value per feature. This module reads those tables and explains rows
with them; the server never parses a LightGBM model, so it does not need LightGBM.

Explaining a row means finding the leaf each tree sends it to and adding up those leaves'
vectors. LightGBM can name the leaves (`predict(pred_leaf=True)`), but its fixed cost per
call is too high for one row at a time (benchmarks/RESULTS.md). Instead the trees are compiled
QuickScorer style (Lucchese et al., SIGIR 2015). Each split holds a bitmask of the leaves of
its left subtree. One numpy comparison tests the row against every split of every tree. Per
tree, ORing the masks of the splits the row fails (it goes right) marks every leaf it cannot
reach; the leftmost unmarked leaf is its exit. Missing values are routed as LightGBM routes
them: |x| <= 1e-35 reads as 0; NaN reads as 0 unless the split's missing type is NaN; a
missing value (NaN for type NaN, 0 or NaN for type Zero) takes the split's default side.

Trade-off, Saabas vs SHAP: LightGBM's `pred_contrib=True` (TreeSHAP) averages over every
order in which the features could be revealed. It is consistent: a feature the model leans
on more never gets less credit. It costs trees x depth^2 per row. Saabas follows one order,
the path's, so the effect of an interaction goes to whichever feature is split later on the
path, and the credits depend on the shape of the trees (Lundberg et al., 2018). For the
strongest reason of a flagged transaction the two mostly agree: the same top feature on 82%
of the test model's golden rows scored above 0.5, and on 79% with 300 trees on random data.
Saabas costs one comparison per split, not depth squared per tree: that matters because the
scorer explains every REVIEW or DECLINE, so explanation time shows in p99. The price is
memory: trees x leaves x features float64 values, 2.5 MB for 300 trees of 31 leaves, 33
features.

Callers build rules on the codes, so `REASON_CODES` is a table written out by hand: a code
never changes meaning, several features of one kind share a code, and a new feature needs
a row here before a model using it can be served.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.core.domain import Reason

REASON_CODES: MappingProxyType[str, str] = MappingProxyType(
    {
        "amount": "AMOUNT",
        "hour_of_day": "TIME_OF_DAY",
        "day_of_week": "DAY_OF_WEEK",
        "mcc": "MERCHANT_CATEGORY",
        "entry_mode": "ENTRY_MODE",
        "card_present": "CARD_PRESENCE",
        "card_tx_count_1h": "CARD_VELOCITY",
        "card_tx_count_1d": "CARD_VELOCITY",
        "card_tx_count_7d": "CARD_ACTIVITY",
        "card_tx_count_30d": "CARD_ACTIVITY",
        "card_amount_mean_1d": "CARD_SPENDING_LEVEL",
        "card_amount_mean_7d": "CARD_SPENDING_LEVEL",
        "card_amount_mean_30d": "CARD_SPENDING_LEVEL",
        "card_amount_std_30d": "CARD_SPENDING_LEVEL",
        "amount_to_card_mean_30d": "AMOUNT_UNUSUAL_FOR_CARD",
        "amount_zscore_30d": "AMOUNT_UNUSUAL_FOR_CARD",
        "card_small_amount_count_1h": "CARD_TESTING_PATTERN",
        "card_not_present_count_1d": "CARD_NOT_PRESENT_VELOCITY",
        "seconds_since_card_prev_tx": "TIME_SINCE_CARD_LAST_USED",
        "days_since_card_used_terminal": "TERMINAL_NEW_FOR_CARD",
        "country_differs_from_card_home": "COUNTRY_UNUSUAL_FOR_CARD",
        "terminal_tx_count_1d_delayed": "TERMINAL_ACTIVITY",
        "terminal_tx_count_7d_delayed": "TERMINAL_ACTIVITY",
        "terminal_tx_count_30d_delayed": "TERMINAL_ACTIVITY",
        "terminal_risk_1d": "TERMINAL_RECENT_FRAUD",
        "terminal_risk_7d": "TERMINAL_RECENT_FRAUD",
        "terminal_risk_30d": "TERMINAL_RECENT_FRAUD",
        "merchant_tx_count_1d_delayed": "MERCHANT_ACTIVITY",
        "merchant_tx_count_7d_delayed": "MERCHANT_ACTIVITY",
        "merchant_tx_count_30d_delayed": "MERCHANT_ACTIVITY",
        "merchant_risk_1d": "MERCHANT_RECENT_FRAUD",
        "merchant_risk_7d": "MERCHANT_RECENT_FRAUD",
        "merchant_risk_30d": "MERCHANT_RECENT_FRAUD",
    }
)
"""Feature name to its stable, machine-readable reason code."""

DEFAULT_TOP = 3

WORD_BITS = 64
"""Leaves per word of a split's row of `ReasonTables.left_masks` (uint64 words)."""

# A split compares one of five copies ("lanes") of the row, picked by how it routes missing
# values; each lane replaces that kind of missing value by 0, or sends it to the default
# side: -inf goes left (-inf <= any threshold), NaN goes right (NaN <= no threshold, not
# even the +inf of a NaN-or-not split). Lane masks: 0 = NaN, 1 = NaN or 0.
LANE_OF_MISSING: MappingProxyType[tuple[str, bool], int] = MappingProxyType(
    {
        ("None", True): 0,
        ("None", False): 0,
        ("NaN", True): 1,
        ("NaN", False): 2,
        ("Zero", True): 3,
        ("Zero", False): 4,
    }
)
"""A split's lane, by its `missing_type` and `default_left` in `Booster.dump_model()`."""
_LANE_MASK = np.array([0, 0, 0, 1, 1])
_LANE_FILL = np.array([[0.0], [-np.inf], [np.nan], [-np.inf], [np.nan]])
# LightGBM's kZeroThreshold: prediction reads any |x| at or below it as 0.
_ZERO_THRESHOLD = 1e-35


def reason_codes(feature_names: Iterable[str]) -> tuple[str, ...]:
    """Each feature's reason code; ValueError naming the features that have none."""
    names = tuple(feature_names)
    missing = [name for name in names if name not in REASON_CODES]
    if missing:
        raise ValueError(f"no reason code for feature(s) {', '.join(missing)}")
    return tuple(REASON_CODES[name] for name in names)


@dataclass(frozen=True)
class ReasonTables:
    """One model's trees compiled for leaf lookup, with each leaf's contributions.

    Training compiles them (`training.model_build.reason_tables`) and writes each field as
    one array of `reasons.npz`, under the field's name: `feature_names` as strings, `bias`
    as a 0-d array. The splits of all trees are flat arrays, each tree's splits contiguous
    from its `tree_starts` entry; the leaves of tree t are the rows of `leaf_contributions`
    from `leaf_starts[t]` on, left to right. Trees without splits only add to `bias`.
    """

    feature_names: tuple[str, ...]
    bias: float  # the sum of every tree's root value (log-odds)
    # (splits,): index of the split's value in the flattened lanes, lane * features + feature
    split_slots: NDArray[np.intp]
    thresholds: NDArray[np.float64]  # (splits,): the row goes left when value <= threshold
    left_masks: NDArray[np.uint64]  # (splits, words): the leaves of its left subtree, as bits
    tree_starts: NDArray[np.intp]  # (trees,): each tree's first split
    leaf_starts: NDArray[np.intp]  # (trees,): each tree's first leaf
    leaf_contributions: NDArray[np.float64]  # (leaves, features)

    @classmethod
    def read(cls, tables_file: Path | bytes) -> ReasonTables:
        """The tables training wrote to `tables_file` (a path, or the file's content);
        ValueError if they are not such tables, or their kinds or shapes do not fit."""
        source = io.BytesIO(tables_file) if isinstance(tables_file, bytes) else tables_file
        label = "reason tables" if isinstance(tables_file, bytes) else str(tables_file)
        try:
            with np.load(source, allow_pickle=False) as tables:
                arrays = {name: tables[name] for name in tables.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{label}: not reason tables ({error})") from error
        missing = sorted({field.name for field in fields(cls)} - set(arrays))
        if missing:
            raise ValueError(f"{label}: not reason tables (no {', '.join(missing)})")
        return cls._from_arrays(arrays)

    @classmethod
    def _from_arrays(cls, arrays: dict[str, NDArray[Any]]) -> ReasonTables:
        names = tuple(str(name) for name in arrays["feature_names"].tolist())
        try:
            tables = cls(
                feature_names=names,
                bias=float(arrays["bias"]),
                split_slots=arrays["split_slots"].astype(np.intp, casting="same_kind"),
                thresholds=arrays["thresholds"].astype(np.float64, casting="same_kind"),
                left_masks=arrays["left_masks"].astype(np.uint64, casting="equiv"),
                tree_starts=arrays["tree_starts"].astype(np.intp, casting="same_kind"),
                leaf_starts=arrays["leaf_starts"].astype(np.intp, casting="same_kind"),
                leaf_contributions=arrays["leaf_contributions"].astype(
                    np.float64, casting="same_kind"
                ),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"reason tables of the wrong kind: {error}") from error
        if not tables._shapes_fit():
            raise ValueError("reason tables of inconsistent shapes")
        return tables

    def _shapes_fit(self) -> bool:
        """Whether every index points inside the arrays it indexes: what lookup relies on."""
        splits = len(self.split_slots)
        n_features = len(self.feature_names)
        return (
            self.thresholds.shape == (splits,)
            and self.left_masks.ndim == 2
            and len(self.left_masks) == splits
            and self.leaf_contributions.ndim == 2
            and self.leaf_contributions.shape[1] == n_features
            and len(self.tree_starts) == len(self.leaf_starts)
            and bool(np.all(self.split_slots >= 0))
            and bool(np.all(self.split_slots < len(_LANE_FILL) * n_features))
            and bool(np.all((self.tree_starts >= 0) & (self.tree_starts <= max(splits - 1, 0))))
            and bool(np.all(self.leaf_starts < len(self.leaf_contributions)))
        )

    def contributions(self, row: NDArray[np.float32]) -> NDArray[np.float64]:
        """Sum of the contributions of the leaf each tree sends `row` to."""
        chosen = np.take(self.leaf_contributions, self.leaf_starts + self._exit_leaves(row), 0)
        total: NDArray[np.float64] = chosen.sum(axis=0)
        return total

    def _exit_leaves(self, row: NDArray[np.float32]) -> NDArray[np.intp]:
        """Per tree, the position (left to right) of the leaf `row` reaches."""
        goes_right = ~(np.take(_lanes(row), self.split_slots) <= self.thresholds)
        # Multiplying by the booleans is cheaper than np.where here.
        masked = self.left_masks * goes_right[:, np.newaxis]
        free = ~np.bitwise_or.reduceat(masked, self.tree_starts, axis=0)
        # The rightmost leaf is in no left subtree: every tree has a free leaf.
        word = np.argmax(free != 0, axis=1)
        bits = free[np.arange(len(word)), word]
        # The lowest set bit alone is a power of two, exact as a float: frexp gives its log2 + 1.
        lowest = (bits & (~bits + np.uint64(1))).astype(np.float64)
        leaves: NDArray[np.intp] = word * WORD_BITS + np.frexp(lowest)[1] - 1
        return leaves


class Explainer:
    """The strongest positive contributions of one feature row, as reasons.

    Holds one model's reason tables: explaining a row only looks up leaves and adds their
    contributions.
    """

    def __init__(self, tables: ReasonTables, *, top: int = DEFAULT_TOP) -> None:
        """ValueError if a feature of `tables` has no reason code."""
        self._codes = reason_codes(tables.feature_names)
        self.feature_names = tables.feature_names
        self._top = top
        self._tables = tables

    @classmethod
    def from_tables(cls, tables_file: Path | bytes, *, top: int = DEFAULT_TOP) -> Explainer:
        """The explainer of the reason tables training wrote (`reasons.npz`). ValueError if
        the file is not such tables (a checksum cannot tell a well-formed file from a wrong
        one) or names a feature without a reason code."""
        return cls(ReasonTables.read(tables_file), top=top)

    @property
    def bias(self) -> float:
        """The model's expected raw score (log-odds): the sum of its trees' root values."""
        return self._tables.bias

    def contributions(self, features: Sequence[float]) -> NDArray[np.float64]:
        """Each feature's contribution (log-odds) to one row's score; they sum to the row's
        raw score minus `bias`. The row is read as float32, as the ONNX model reads it.
        """
        if len(features) != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} features, got {len(features)}")
        return self._tables.contributions(np.asarray(features, dtype=np.float32))

    def explain(self, features: Sequence[float]) -> tuple[Reason, ...]:
        """Up to `top` reasons for one row, strongest first; only positive contributions."""
        contributions = self.contributions(features)
        strongest: list[int] = np.argsort(-contributions, kind="stable")[: self._top].tolist()
        values: list[float] = contributions.tolist()  # Python floats: cheaper one by one
        return tuple(
            Reason(self._codes[index], self.feature_names[index], values[index])
            for index in strongest
            if values[index] > 0
        )


def _lanes(row: NDArray[np.float32]) -> NDArray[np.float64]:
    """The row as LightGBM reads it, in each lane's version: (lanes, features)."""
    values = row.astype(np.float64)
    values[np.abs(values) <= _ZERO_THRESHOLD] = 0.0
    nan = np.isnan(values)
    missing = np.array((nan, nan | (values == 0.0)))[_LANE_MASK]
    return np.where(missing, _LANE_FILL, values)
