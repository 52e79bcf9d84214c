"""Reason codes: which features pushed a transaction's score towards fraud.

Method: path attribution (Saabas, as in `treeinterpreter`), in log-odds. Every node of a
tree has an expected value: the mean of the values of the leaves under it, weighted by
their training rows (a leaf's is its own value). Each split on a row's root-to-leaf path
credits its feature with child value minus node value. Along a path these credits
telescope to leaf value minus root value. So, over all trees, a row's contributions add
up exactly to its raw score (log-odds) minus the bias, the sum of the root values: the
same bias as TreeSHAP's, which weighs nodes the same way. (LightGBM's `internal_value` is
not that mean but the regularised output the node would have as a leaf, kept to 6 digits;
with it, the top feature agreed with TreeSHAP's on 69% of flagged rows instead of 79%, on a
300-tree model trained on random data.)

A leaf's credits depend on its path, not on the row. `Explainer` therefore computes them
once per model, from `Booster.dump_model()` (0.3 s for 300 trees): one float64 vector, one
value per feature, for every leaf of every tree. Explaining a row then means finding the
leaf each tree sends it to and adding up those leaves' vectors. LightGBM can name the
leaves (`predict(pred_leaf=True)`), but its per-call overhead is 30-45 µs. Instead the
trees are compiled QuickScorer style (Lucchese et al., SIGIR 2015). Each split holds a
bitmask of the leaves of its left subtree. One numpy comparison tests the row against
every split of every tree. Per tree, ORing the masks of the splits the row fails (it goes
right) marks every leaf it cannot reach; the leftmost unmarked leaf is its exit. On a
noisy 2-core machine a whole `explain` took 42 µs on the 59-tree test model, 77 µs with
300 trees of 31 leaves, 102 µs with 500; the pred_leaf route took 49, 84 and 119 µs.
Missing values are routed as LightGBM routes them: |x| <= 1e-35 reads as 0; NaN reads as
0 unless the split's missing type is NaN; a missing value (NaN for type NaN, 0 or NaN for
type Zero) takes the split's default side.

Trade-off, Saabas vs SHAP: LightGBM's `pred_contrib=True` (TreeSHAP) averages over every
order in which the features could be revealed. It is consistent: a feature the model
leans on more never gets less credit. It costs trees x depth^2 per row: 0.5-0.9 ms on the
test model, 2.3-3.6 ms with 300 trees. Saabas follows one order, the path's, so the effect
of an interaction goes to whichever feature is split later on the path, and the credits
depend on the shape of the trees (Lundberg et al., 2018). For the strongest reason of a
flagged transaction the two mostly agree: the same top feature on 82% of the test model's
golden rows scored above 0.5, and on 79% with 300 trees on random data. Saabas costs one
comparison per split, not depth squared per tree: that matters because the scorer explains
every REVIEW or DECLINE, so explanation time shows in p99. The price is memory:
trees x leaves x features float64 values, 2.5 MB for 300 trees of 31 leaves, 33 features.

Only models the method covers load: one tree per iteration, numerical splits, constant
leaves, summed (not averaged) trees. Anything else raises ValueError.

Callers build rules on the codes, so `REASON_CODES` is a table written out by hand: a code
never changes meaning, several features of one kind share a code, and a new feature needs
a row here before a model using it can be served.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from types import MappingProxyType
from typing import Any

import lightgbm
import numpy as np
from numpy.typing import NDArray

from service.scoring_types import Reason

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

# LightGBM's kZeroThreshold: prediction reads any |x| at or below it as 0.
_ZERO_THRESHOLD = 1e-35
# `dump_model` writes thresholds of this size or more as this (LightGBM's AvoidInf).
_DUMPED_INFINITY = 1e300
_WORD_BITS = 64
_WORD_MASK = 2**_WORD_BITS - 1

# A split compares one of five copies ("lanes") of the row, picked by how it routes missing
# values; each lane replaces that kind of missing value by 0, or sends it to the default
# side: -inf goes left (-inf <= any threshold), NaN goes right (NaN <= no threshold, not
# even the +inf of a NaN-or-not split). Lane masks: 0 = NaN, 1 = NaN or 0.
_LANE_OF_MISSING = {
    ("None", True): 0,
    ("None", False): 0,
    ("NaN", True): 1,
    ("NaN", False): 2,
    ("Zero", True): 3,
    ("Zero", False): 4,
}
_LANE_MASK = np.array([0, 0, 0, 1, 1])
_LANE_FILL = np.array([[0.0], [-np.inf], [np.nan], [-np.inf], [np.nan]])

_Node = dict[str, Any]
"""One node of `Booster.dump_model()`'s `tree_structure`."""
_TREES_PER_DUMP = 10


class Explainer:
    """The strongest positive contributions of one feature row, as reasons.

    Built once per model: the per-leaf contributions are computed at load (milliseconds);
    explaining a row only looks up leaves and adds their contributions.
    """

    def __init__(self, model_file: Path, *, top: int = DEFAULT_TOP) -> None:
        """Load the native LightGBM model `model_file`.

        ValueError if it is not a LightGBM model, has a feature without a reason code, or
        is a kind of model path attribution does not cover (see the module docstring).
        """
        try:
            booster = lightgbm.Booster(model_file=str(model_file))
            header: dict[str, Any] = booster.dump_model(num_iteration=1)
        except lightgbm.basic.LightGBMError as error:
            raise ValueError(f"{model_file}: not a LightGBM model ({error})") from error
        names: list[str] = header["feature_names"]
        if header["num_tree_per_iteration"] != 1 or header["average_output"]:
            raise ValueError("only models of one summed tree per iteration can be explained")
        self._set(tuple(names), _PathForest.from_trees(_tree_dumps(booster), len(names)), top)

    @classmethod
    def from_tables(cls, tables_file: Path, *, top: int = DEFAULT_TOP) -> Explainer:
        """The explainer whose tables `save_tables` wrote: a few milliseconds of reading
        arrays instead of compiling the model's trees. ValueError if the file is not such
        tables (a checksum cannot tell a well-formed file from a wrong one)."""
        try:
            with np.load(tables_file, allow_pickle=False) as tables:
                arrays = {name: tables[name] for name in tables.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{tables_file}: not reason tables ({error})") from error
        missing = sorted({*_PathForest.array_fields(), "bias", "feature_names"} - set(arrays))
        if missing:
            raise ValueError(f"{tables_file}: not reason tables (no {', '.join(missing)})")
        names = tuple(str(name) for name in arrays.pop("feature_names").tolist())
        forest = _PathForest.from_arrays(arrays, len(names))
        explainer = cls.__new__(cls)
        explainer._set(names, forest, top)
        return explainer

    def save_tables(self, tables_file: Path) -> None:
        """Write the compiled tables (uncompressed .npz) for `from_tables`."""
        forest = self._forest
        with tables_file.open("wb") as out:
            np.savez(
                out,
                feature_names=np.array(self.feature_names, dtype=np.str_),
                bias=np.array(forest.bias, dtype=np.float64),
                **{name: getattr(forest, name) for name in _PathForest.array_fields()},
            )

    def _set(self, names: tuple[str, ...], forest: _PathForest, top: int) -> None:
        missing = [name for name in names if name not in REASON_CODES]
        if missing:
            raise ValueError(f"no reason code for feature(s) {', '.join(missing)}")
        self.feature_names = names
        self._codes = tuple(REASON_CODES[name] for name in names)
        self._top = top
        self._forest = forest

    @property
    def bias(self) -> float:
        """The model's expected raw score (log-odds): the sum of its trees' root values."""
        return self._forest.bias

    def contributions(self, features: Sequence[float]) -> NDArray[np.float64]:
        """Each feature's contribution (log-odds) to one row's score; they sum to the row's
        raw score minus `bias`. The row is read as float32, as the ONNX model reads it.
        """
        if len(features) != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} features, got {len(features)}")
        return self._forest.contributions(np.asarray(features, dtype=np.float32))

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


@dataclass(frozen=True)
class _PathForest:
    """The trees that have splits, compiled for leaf lookup, with each leaf's contributions.

    The splits of all trees are flat arrays, each tree's splits contiguous from its
    `tree_starts` entry; the leaves of tree t are the rows of `leaf_contributions` from
    `leaf_starts[t]` on, left to right. Trees without splits only add to `bias`.
    """

    bias: float
    split_slots: NDArray[np.intp]  # split -> index of its value in the flattened lanes
    thresholds: NDArray[np.float64]  # split -> the row goes left when value <= threshold
    left_masks: NDArray[np.uint64]  # (split, word) -> the leaves of its left subtree
    tree_starts: NDArray[np.intp]
    leaf_starts: NDArray[np.intp]
    leaf_contributions: NDArray[np.float64]  # (leaf, feature)

    @classmethod
    def from_trees(cls, tree_dumps: Iterable[_Node], n_features: int) -> _PathForest:
        """Compile the `tree_info` entries of `Booster.dump_model()` of a model of one
        summed tree per iteration; ValueError for trees it cannot explain."""
        walked = [_walk(tree["tree_structure"], n_features) for tree in tree_dumps]
        trees = [tree for tree in walked if tree.slots]
        words = max((math.ceil(len(tree.leaves) / _WORD_BITS) for tree in trees), default=1)
        masks = [_bitmask(left, words) for tree in trees for left in tree.left_leaves]
        return cls(
            bias=math.fsum(tree.root_value for tree in walked),
            split_slots=np.array([s for tree in trees for s in tree.slots], dtype=np.intp),
            thresholds=np.array([t for tree in trees for t in tree.thresholds], dtype=np.float64),
            left_masks=np.array(masks, dtype=np.uint64).reshape(len(masks), words),
            tree_starts=_starts([len(tree.slots) for tree in trees]),
            leaf_starts=_starts([len(tree.leaves) for tree in trees]),
            leaf_contributions=np.array(
                [leaf for tree in trees for leaf in tree.leaves], dtype=np.float64
            ).reshape(-1, n_features),
        )

    @staticmethod
    def array_fields() -> tuple[str, ...]:
        """The fields held as arrays (all but `bias`), as `save_tables` names them."""
        return (
            "split_slots",
            "thresholds",
            "left_masks",
            "tree_starts",
            "leaf_starts",
            "leaf_contributions",
        )

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[Any]], n_features: int) -> _PathForest:
        """The forest of saved arrays; ValueError unless their kinds and shapes fit."""
        try:
            forest = cls(
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
        splits = len(forest.split_slots)
        fits = (
            forest.thresholds.shape == (splits,)
            and forest.left_masks.ndim == 2
            and len(forest.left_masks) == splits
            and forest.leaf_contributions.ndim == 2
            and forest.leaf_contributions.shape[1] == n_features
            and len(forest.tree_starts) == len(forest.leaf_starts)
            and bool(np.all(forest.split_slots >= 0))
            and bool(np.all(forest.split_slots < len(_LANE_FILL) * n_features))
            and bool(np.all((forest.tree_starts >= 0) & (forest.tree_starts <= max(splits - 1, 0))))
            and bool(np.all(forest.leaf_starts < len(forest.leaf_contributions)))
        )
        if not fits:
            raise ValueError("reason tables of inconsistent shapes")
        return forest

    def contributions(self, row: NDArray[np.float32]) -> NDArray[np.float64]:
        """Sum of the contributions of the leaf each tree sends `row` to."""
        chosen = np.take(self.leaf_contributions, self.leaf_starts + self._exit_leaves(row), 0)
        total: NDArray[np.float64] = chosen.sum(axis=0)
        return total

    def _exit_leaves(self, row: NDArray[np.float32]) -> NDArray[np.intp]:
        """Per tree, the position (left to right) of the leaf `row` reaches."""
        goes_right = ~(np.take(_lanes(row), self.split_slots) <= self.thresholds)
        # Multiplying by the booleans is several times faster than np.where here.
        masked = self.left_masks * goes_right[:, np.newaxis]
        free = ~np.bitwise_or.reduceat(masked, self.tree_starts, axis=0)
        # The rightmost leaf is in no left subtree: every tree has a free leaf.
        word = np.argmax(free != 0, axis=1)
        bits = free[np.arange(len(word)), word]
        # The lowest set bit alone is a power of two, exact as a float: frexp gives its log2 + 1.
        lowest = (bits & (~bits + np.uint64(1))).astype(np.float64)
        leaves: NDArray[np.intp] = word * _WORD_BITS + np.frexp(lowest)[1] - 1
        return leaves


@dataclass
class _Tree:
    """One tree: its root's expected value, its splits, its leaves' contributions in order."""

    root_value: float
    slots: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    left_leaves: list[tuple[int, int]] = field(default_factory=list)  # per split: [first, end)
    leaves: list[NDArray[np.float64]] = field(default_factory=list)


def _tree_dumps(booster: lightgbm.Booster) -> Iterator[_Node]:
    """Each tree's `dump_model()` entry, dumped `_TREES_PER_DUMP` at a time.

    A server loads a new model beside the thread that answers requests. Dumped whole, a
    300-tree model is one 3 MB JSON parse into a million objects, then their collection
    and release: each a single step that holds the GIL (80-500 ms measured, the longer
    with a large feature state in the heap), stalling every request meanwhile. In small
    dumps, each step is a few milliseconds.
    """
    for start in range(0, booster.current_iteration(), _TREES_PER_DUMP):
        dump = booster.dump_model(start_iteration=start, num_iteration=_TREES_PER_DUMP)
        yield from dump["tree_info"]


_Visit = tuple[_Node, int, bool]
"""A node, its parent's position in the walk (-1 for the root), whether it is a right child."""


def _walk(root: _Node, n_features: int) -> _Tree:
    """The tree at `root`, its leaves left to right, each with its path's credits.

    A split's left subtree holds leaves [first, end): the leaves the walk has passed when it
    reaches the split, and when it reaches the split's right child.
    """
    visits = _depth_first(root)
    expected = _expected_values(visits)
    paths = _path_credits(visits, expected, n_features)
    passed = list(accumulate(("split_index" not in node for node, _, _ in visits), initial=0))
    right_child = {parent: position for position, (_, parent, right) in enumerate(visits) if right}
    tree = _Tree(expected[0])
    for position, (node, _, _) in enumerate(visits):
        if "split_index" not in node:
            if node.get("leaf_coeff"):
                raise ValueError("linear-tree leaves cannot be explained")
            tree.leaves.append(paths[position])
        elif node["decision_type"] != "<=":
            raise ValueError("categorical splits cannot be explained")
        else:
            lane = _LANE_OF_MISSING[node["missing_type"], node["default_left"]]
            tree.slots.append(lane * n_features + node["split_feature"])
            tree.thresholds.append(_threshold(node))
            tree.left_leaves.append((passed[position], passed[right_child[position]]))
    return tree


def _path_credits(
    visits: list[_Visit], expected: list[float], n_features: int
) -> list[NDArray[np.float64]]:
    """Per node, what the splits from the root to it credit to each feature."""
    paths = [np.zeros(n_features)]
    for position, (_, parent, _) in enumerate(visits[1:], start=1):
        path = paths[parent].copy()
        path[visits[parent][0]["split_feature"]] += expected[position] - expected[parent]
        paths.append(path)
    return paths


def _threshold(split: _Node) -> float:
    """The split's threshold. The dump writes an infinite one (NaN against the rest) as
    +-1e300, which a row's +-inf would cross where LightGBM's does not. No float32 value
    makes a finite threshold that big.
    """
    threshold = float(split["threshold"])
    return math.copysign(math.inf, threshold) if abs(threshold) >= _DUMPED_INFINITY else threshold


def _depth_first(root: _Node) -> list[_Visit]:
    """The tree's nodes depth first, left before right: parents before children, leaves in
    order. No recursion: a model may hold trees deeper than Python's recursion limit."""
    visits: list[_Visit] = []
    stack: list[_Visit] = [(root, -1, False)]
    while stack:
        node, parent, is_right = stack.pop()
        visits.append((node, parent, is_right))
        if "split_index" in node:
            position = len(visits) - 1
            stack.append((node["right_child"], position, True))
            stack.append((node["left_child"], position, False))
    return visits


def _expected_values(visits: list[_Visit]) -> list[float]:
    """Each node's expected value: its leaves' mean value, weighted by their training rows.

    These are TreeSHAP's weights, so the roots add up to `pred_contrib`'s bias. (A split's
    `internal_value` is not this mean: it is the regularised output the node would have as
    a leaf, and LightGBM keeps it to 6 significant digits only.)
    """
    rows = [float(node.get("leaf_count", 0)) for node, _, _ in visits]
    sums = [
        row * node.get("leaf_value", 0.0) for row, (node, _, _) in zip(rows, visits, strict=True)
    ]
    # Children come after their parent: walking backwards folds each subtree into its root.
    for position in range(len(visits) - 1, 0, -1):
        parent = visits[position][1]
        rows[parent] += rows[position]
        sums[parent] += sums[position]
    return [
        float(node["leaf_value"]) if "leaf_value" in node else total / weight
        for (node, _, _), total, weight in zip(visits, sums, rows, strict=True)
    ]


def _bitmask(leaves: tuple[int, int], words: int) -> list[int]:
    """Leaves [first, end) as set bits (leaf 0 = lowest bit), in 64-bit words."""
    first, end = leaves
    bits = (1 << end) - (1 << first)
    return [(bits >> (word * _WORD_BITS)) & _WORD_MASK for word in range(words)]


def _starts(sizes: list[int]) -> NDArray[np.intp]:
    """Where each of consecutive groups of `sizes` starts."""
    ends = np.cumsum(np.asarray(sizes, dtype=np.intp))
    return ends - np.asarray(sizes, dtype=np.intp)


def _lanes(row: NDArray[np.float32]) -> NDArray[np.float64]:
    """The row as LightGBM reads it, in each lane's version: (lanes, features)."""
    values = row.astype(np.float64)
    values[np.abs(values) <= _ZERO_THRESHOLD] = 0.0
    nan = np.isnan(values)
    missing = np.array((nan, nan | (values == 0.0)))[_LANE_MASK]
    return np.where(missing, _LANE_FILL, values)
