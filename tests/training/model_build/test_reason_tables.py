"""Tests for training.model_build.reason_tables: LightGBM models compiled into the reason
tables the server explains with, checked against LightGBM's own predictions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
from numpy.typing import NDArray

from service.features import FEATURES
from service.model.artifact import NATIVE_MODEL_FILE, REASON_TABLES_FILE
from service.model.explainer import Explainer
from tests.service.model.test_explainer import lightgbm_predict
from training.model_build.reason_tables import compile_reason_tables, save_tables

FEW_FEATURES = [feature.name for feature in FEATURES][:4]
# What LightGBM makes of special inputs; each is tried on every kind of split.
SPECIAL_VALUES = (np.nan, 0.0, -0.0, 1e-40, -1e-40, np.inf, -np.inf)


def _explainer(model_file: Path) -> Explainer:
    """The server's explainer of `model_file`, reached as a server reaches it: tables
    compiled and written by training, read back from the file."""
    tables_file = model_file.with_name(REASON_TABLES_FILE)
    save_tables(compile_reason_tables(model_file), tables_file)
    return Explainer.from_tables(tables_file)


def _rows(count: int, *, seed: int, missing: float = 0.0, zeros: float = 0.0) -> NDArray[Any]:
    """Normal rows of `FEW_FEATURES` with a share of zeros and of NaN."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(count, len(FEW_FEATURES)))
    rows[rng.random(rows.shape) < zeros] = 0.0
    rows[rng.random(rows.shape) < missing] = np.nan
    return rows


def _labels(rows: NDArray[Any]) -> NDArray[Any]:
    filled = np.nan_to_num(rows)
    labels: NDArray[Any] = (filled[:, 0] + filled[:, 1] * filled[:, 2] > 0.3).astype(int)
    return labels


def _train(path: Path, rows: NDArray[Any], labels: NDArray[Any], **params: Any) -> Path:
    """A small native model of `FEW_FEATURES`, written to `path`."""
    dataset_params = params.pop("dataset", {})
    rounds = params.pop("rounds", 20)
    settings = {"objective": "binary", "verbose": -1, "num_threads": 1, "seed": 1, **params}
    dataset = lightgbm.Dataset(rows, labels, feature_name=FEW_FEATURES, **dataset_params)
    lightgbm.train(settings, dataset, num_boost_round=rounds).save_model(str(path))
    return path


def _splits(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """Every split node of a `Booster.dump_model()`."""
    splits = []
    stack = [tree["tree_structure"] for tree in dump["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_index" in node:
            splits.append(node)
            stack += [node["left_child"], node["right_child"]]
    return splits


def _missing_types(dump: dict[str, Any]) -> set[str]:
    return {split["missing_type"] for split in _splits(dump)}


def _most_leaves(dump: dict[str, Any]) -> int:
    return int(max(tree["num_leaves"] for tree in dump["tree_info"]))


# Training data and parameters for models whose splits route missing values each way
# LightGBM can, and for one whose trees need three 64-bit words of leaves; with the check
# that the model has what it is meant to test.
ROUTING_CASES: dict[str, tuple[dict[str, float], dict[str, Any], Callable[[Any], bool]]] = {
    "missing NaN": ({"missing": 0.1}, {}, lambda dump: "NaN" in _missing_types(dump)),
    "missing Zero": (
        {"zeros": 0.2},
        {"zero_as_missing": True},
        lambda dump: "Zero" in _missing_types(dump),
    ),
    "missing None": ({}, {}, lambda dump: _missing_types(dump) == {"None"}),
    "150 leaves": (
        {"missing": 0.05},
        {"num_leaves": 150, "min_child_samples": 3, "rounds": 5},
        lambda dump: _most_leaves(dump) > 128,
    ),
}


def _probe_rows(dump: dict[str, Any], count: int) -> NDArray[np.float64]:
    """Rows full of edge cases: special values, and values on or next to a threshold."""
    thresholds: list[list[float]] = [[0.0] for _ in FEW_FEATURES]
    for split in _splits(dump):
        thresholds[split["split_feature"]].append(split["threshold"])
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(count, len(FEW_FEATURES)))
    for row in rows:
        for feature, choices in enumerate(thresholds):
            threshold = choices[rng.integers(len(choices))]
            near = (threshold, np.nextafter(threshold, np.inf), np.nextafter(threshold, -np.inf))
            candidates = (*SPECIAL_VALUES, *near)
            if rng.random() < 0.6:
                row[feature] = candidates[rng.integers(len(candidates))]
    return rows


@pytest.mark.parametrize("case", ROUTING_CASES)
def test_rows_reach_the_leaves_lightgbm_sends_them_to(tmp_path: Path, case: str) -> None:
    """Edge-case rows, read as float32 like ONNX, add up to LightGBM's raw score exactly."""
    data, params, has_case = ROUTING_CASES[case]
    rows = _rows(3000, seed=len(case), **data)
    model_file = _train(tmp_path / NATIVE_MODEL_FILE, rows, _labels(rows), **params)
    booster = lightgbm.Booster(model_file=str(model_file))
    dump = booster.dump_model()
    assert has_case(dump)
    explainer = _explainer(model_file)
    probes = _probe_rows(dump, 300)
    raw = lightgbm_predict(booster, probes, raw_score=True)
    totals = [explainer.bias + explainer.contributions(row.tolist()).sum() for row in probes]
    assert totals == pytest.approx(raw, rel=1e-9, abs=1e-9)


def test_on_single_split_trees_contributions_are_treeshaps(tmp_path: Path) -> None:
    """When every tree splits once, both methods credit each tree's feature alike: equal."""
    rows = _rows(2000, seed=9, missing=0.1)
    model_file = _train(tmp_path / NATIVE_MODEL_FILE, rows, _labels(rows), num_leaves=2)
    booster = lightgbm.Booster(model_file=str(model_file))
    probes = _probe_rows(booster.dump_model(), 100)
    shap = lightgbm_predict(booster, probes, pred_contrib=True)[:, :-1]
    explainer = _explainer(model_file)
    contributions = [explainer.contributions(row.tolist()) for row in probes]
    assert np.array(contributions) == pytest.approx(shap, rel=1e-9, abs=1e-9)


def test_a_model_without_splits_explains_nothing(tmp_path: Path) -> None:
    """A model whose only tree is a leaf has all its score in the bias and gives no reason."""
    rows = _rows(50, seed=6)
    model_file = _train(tmp_path / NATIVE_MODEL_FILE, rows, _labels(rows), min_child_samples=100)
    booster = lightgbm.Booster(model_file=str(model_file))
    explainer = _explainer(model_file)
    raw = lightgbm_predict(booster, rows[:1], raw_score=True)[0]
    assert explainer.bias == pytest.approx(raw, rel=1e-12)
    assert not explainer.contributions(rows[0].tolist()).any()
    assert explainer.explain(rows[0].tolist()) == ()


# Parameters of models path attribution cannot explain, with the error they get. The last
# feature is a category whose value (mod the number of classes) is the label.
UNEXPLAINABLE: dict[str, tuple[dict[str, Any], str]] = {
    "categorical split": (
        {"dataset": {"categorical_feature": [3]}, "min_data_per_group": 5},
        "categorical splits",
    ),
    "linear trees": ({"linear_tree": True}, "linear-tree leaves"),
    "multiclass": ({"objective": "multiclass", "num_class": 3}, "one summed tree"),
    "random forest": (
        {"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1},
        "one summed tree",
    ),
}


@pytest.mark.parametrize("kind", UNEXPLAINABLE)
def test_a_model_path_attribution_cannot_explain_is_refused(tmp_path: Path, kind: str) -> None:
    """Categorical splits, linear leaves, several trees per round, averaged trees: ValueError."""
    params, message = UNEXPLAINABLE[kind]
    rows = _rows(600, seed=7)
    categories = np.random.default_rng(8).integers(0, 6, len(rows))
    rows[:, 3] = categories
    labels = categories % params.get("num_class", 2)
    model_file = _train(tmp_path / NATIVE_MODEL_FILE, rows, labels, rounds=5, **params)
    with pytest.raises(ValueError, match=message):
        compile_reason_tables(model_file)


def test_a_model_with_unknown_features_is_refused(tmp_path: Path) -> None:
    """A native model whose features have no reason code raises ValueError naming them."""
    rows = np.random.default_rng(0).normal(size=(200, 2))
    labels = (rows[:, 0] > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1}
    dataset = lightgbm.Dataset(rows, labels, feature_name=["x0", "amount"])
    path = tmp_path / NATIVE_MODEL_FILE
    lightgbm.train(params, dataset, num_boost_round=3).save_model(str(path))
    with pytest.raises(ValueError, match=r"no reason code for feature\(s\) x0$"):
        compile_reason_tables(path)


def test_a_file_that_is_not_a_lightgbm_model_is_refused(tmp_path: Path) -> None:
    """A file LightGBM cannot read raises ValueError naming the file."""
    path = tmp_path / NATIVE_MODEL_FILE
    path.write_text("tree garbage\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a LightGBM model"):
        compile_reason_tables(path)


def test_saved_tables_explain_as_the_model_they_came_from(tmp_path: Path) -> None:
    """Tables written by save_tables and read by from_tables give the same contributions,
    bias and reasons as the tables as compiled, before writing."""
    rows = _rows(2000, seed=4, missing=0.1)
    model_file = _train(tmp_path / NATIVE_MODEL_FILE, rows, _labels(rows))
    tables = compile_reason_tables(model_file)
    compiled = Explainer(tables)
    save_tables(tables, tmp_path / "reasons.npz")
    loaded = Explainer.from_tables(tmp_path / "reasons.npz")
    assert loaded.feature_names == compiled.feature_names
    assert loaded.bias == compiled.bias
    for row in rows[:200].tolist():
        assert loaded.contributions(row).tolist() == compiled.contributions(row).tolist()
        assert loaded.explain(row) == compiled.explain(row)
