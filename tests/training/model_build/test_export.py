"""Tests for training.model_build.export: LightGBM to ONNX conversion and the parity gate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
import pytest

from training.model_build.export import (
    BATCH_DIM,
    export_onnx,
    float32_threshold_booster,
    onnx_probabilities,
    parity_gap,
)

N_FEATURES = 6
FEATURE_NAMES = [f"feature_{index}" for index in range(N_FEATURES)]
PARITY_LIMIT = 1e-5


def _features(rng: np.random.Generator, rows: int) -> npt.NDArray[np.float32]:
    """Continuous, integer-valued and mostly-zero columns, like the feature engine's."""
    matrix = rng.normal(size=(rows, N_FEATURES))
    matrix[:, 1] = rng.integers(-1, 12, rows)
    matrix[:, 2] = np.where(rng.random(rows) < 0.7, 0.0, rng.exponential(50.0, rows))
    matrix[:, 3] = np.round(rng.normal(size=rows), 2)
    return matrix.astype(np.float32)


def _train(features: npt.NDArray[np.float32], seed: int = 0) -> lightgbm.Booster:
    rng = np.random.default_rng(seed)
    signal = features[:, 0] + 0.3 * features[:, 1] - 0.01 * features[:, 2]
    labels = (signal + rng.normal(size=len(features)) > 1.0).astype(np.int32)
    params = {
        "objective": "binary",
        "num_leaves": 15,
        "min_data_in_leaf": 5,
        "num_threads": 1,
        "seed": seed,
        "deterministic": True,
        "verbose": -1,
    }
    return lightgbm.train(params, lightgbm.Dataset(features, labels), num_boost_round=30)


def _split_nodes(booster: lightgbm.Booster) -> list[dict[str, Any]]:
    """Every split node of the booster's dumped trees."""
    splits: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            splits.append(node)
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return splits


def _split_thresholds(booster: lightgbm.Booster) -> list[tuple[int, float]]:
    """(feature, threshold) of every split of a booster without categorical features."""
    return [(node["split_feature"], node["threshold"]) for node in _split_nodes(booster)]


def _rows_at_thresholds(
    booster: lightgbm.Booster, base: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Copies of `base` with one feature at a split threshold (as float32) or a neighbour."""
    rows = []
    for feature, threshold in _split_thresholds(booster):
        at = np.float32(threshold)
        for value in (
            np.nextafter(at, np.float32(-np.inf)),
            at,
            np.nextafter(at, np.float32(np.inf)),
        ):
            row = base.copy()
            row[feature] = value
            rows.append(row)
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def training_features() -> npt.NDArray[np.float32]:
    return _features(np.random.default_rng(1), 400)


@pytest.fixture(scope="module")
def booster(training_features: npt.NDArray[np.float32]) -> lightgbm.Booster:
    return _train(training_features)


@pytest.fixture(scope="module")
def model(booster: lightgbm.Booster) -> bytes:
    return export_onnx(booster, FEATURE_NAMES)


@pytest.fixture(scope="module")
def threshold_rows(
    booster: lightgbm.Booster, training_features: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    return _rows_at_thresholds(booster, np.median(training_features, axis=0))


def test_export_is_byte_for_byte_deterministic(booster: lightgbm.Booster, model: bytes) -> None:
    """The same booster, also reloaded from its model text, exports to identical bytes."""
    reloaded = lightgbm.Booster(model_str=booster.model_to_string())
    assert export_onnx(booster, FEATURE_NAMES) == model
    assert export_onnx(reloaded, FEATURE_NAMES) == model


_EXPORT_IN_A_FRESH_PROCESS = """
import sys
import lightgbm
from training.model_build.export import export_onnx
booster = lightgbm.Booster(model_file=sys.argv[1])
sys.stdout.buffer.write(export_onnx(booster, [f"f{i}" for i in range(booster.num_feature())]))
"""


def test_export_bytes_do_not_depend_on_the_process_hash_seed(
    booster: lightgbm.Booster, tmp_path: Path
) -> None:
    """Two processes with different string hash seeds export the same bytes (version ids
    are derived from them)."""
    model_file = tmp_path / "model.txt"
    booster.save_model(str(model_file))
    # At once: each spends seconds importing onnx and LightGBM, on one core of two.
    exports = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORT_IN_A_FRESH_PROCESS, str(model_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2", "3")
    ]
    try:
        outputs = [export.communicate(timeout=120)[0] for export in exports]
    finally:
        for export in exports:
            export.kill()
    assert [export.returncode for export in exports] == [0, 0, 0]
    assert outputs[0] == outputs[1] == outputs[2]
    domains = [opset.domain for opset in onnx.load_from_string(outputs[0]).opset_import]
    assert domains == sorted(domains)


def test_metadata_carries_feature_names(model: bytes) -> None:
    """The feature names are stored comma-joined under 'feature_names'."""
    metadata = {prop.key: prop.value for prop in onnx.load_from_string(model).metadata_props}
    assert metadata["feature_names"] == ",".join(FEATURE_NAMES)


def test_graph_input_is_features_and_batch_dims_are_symbolic(model: bytes) -> None:
    """The input is named 'features' and every input and output has a symbolic batch dim."""
    graph = onnx.load_from_string(model).graph
    assert [value.name for value in graph.input] == ["features"]
    for value in (*graph.input, *graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == BATCH_DIM


def test_parity_on_random_rows(booster: lightgbm.Booster, model: bytes) -> None:
    """ONNX matches LightGBM on fresh rows, including values outside the training range."""
    rows = _features(np.random.default_rng(2), 2_000) * np.float32(1.5)
    assert parity_gap(booster, model, rows) < PARITY_LIMIT


def test_parity_at_split_thresholds(
    booster: lightgbm.Booster, model: bytes, threshold_rows: npt.NDArray[np.float32]
) -> None:
    """Rows exactly at each split threshold (as float32) and its neighbours score alike."""
    assert parity_gap(booster, model, threshold_rows) < PARITY_LIMIT


def test_parity_on_values_lightgbm_reads_as_zero(
    booster: lightgbm.Booster, model: bytes, training_features: npt.NDArray[np.float32]
) -> None:
    """Features within LightGBM's zero band (|x| <= 1e-35) score as LightGBM scores them."""
    tiny = np.array([0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, 2e-35, -2e-35, 1e-45, -1e-45])
    rows = np.tile(np.median(training_features, axis=0), (N_FEATURES * len(tiny), 1))
    for feature in range(N_FEATURES):
        rows[feature * len(tiny) : (feature + 1) * len(tiny), feature] = tiny
    assert parity_gap(booster, model, rows) < PARITY_LIMIT


def test_float32_threshold_booster_is_equivalent_with_float32_thresholds(
    booster: lightgbm.Booster, threshold_rows: npt.NDArray[np.float32]
) -> None:
    """The rewritten booster's thresholds are float32 values and it predicts identically."""
    rewritten = float32_threshold_booster(booster)
    thresholds = np.array([threshold for _, threshold in _split_thresholds(rewritten)])
    random_rows = _features(np.random.default_rng(3), 500)
    assert np.array_equal(thresholds.astype(np.float32).astype(np.float64), thresholds)
    for rows in (threshold_rows, random_rows):
        assert np.array_equal(rewritten.predict(rows), booster.predict(rows))


def test_parity_with_a_categorical_feature() -> None:
    """Categorical splits, whose thresholds are not rewritten, keep parity."""
    rng = np.random.default_rng(4)
    features = _features(rng, 600)
    labels = ((features[:, 1] % 3 == 0) ^ (features[:, 0] > 0.5)).astype(np.int32)
    params = {"objective": "binary", "min_data_per_group": 5, "cat_smooth": 1, "verbose": -1}
    dataset = lightgbm.Dataset(features, labels, categorical_feature=[1])
    booster = lightgbm.train(params, dataset, num_boost_round=20)
    assert any(node["decision_type"] == "==" for node in _split_nodes(booster))
    model = export_onnx(booster, FEATURE_NAMES)
    assert parity_gap(booster, model, _features(rng, 1_000)) < PARITY_LIMIT


@pytest.mark.parametrize("nan_in_training", [False, True])
def test_nan_takes_lightgbms_branch(nan_in_training: bool) -> None:
    """NaN scores as in LightGBM, whether or not the feature had NaN in training."""
    rng = np.random.default_rng(5)
    features = _features(rng, 400)
    training = np.where(rng.random(features.shape) < 0.1, np.nan, features).astype(np.float32)
    booster = _train(training if nan_in_training else features)
    rows = np.tile(features[:20], (N_FEATURES, 1))
    for feature in range(N_FEATURES):
        rows[feature * 20 : (feature + 1) * 20, feature] = np.nan
    assert parity_gap(booster, export_onnx(booster, FEATURE_NAMES), rows) < PARITY_LIMIT


def test_parity_gap_reports_a_different_model(
    booster: lightgbm.Booster, training_features: npt.NDArray[np.float32]
) -> None:
    """A graph exported from another booster fails the parity limit."""
    other = export_onnx(_train(training_features, seed=7), FEATURE_NAMES)
    assert parity_gap(booster, other, training_features) > PARITY_LIMIT


@pytest.mark.parametrize("rows", [1, 1_000])
def test_every_output_scores_any_batch_without_warnings(
    model: bytes, rows: int, capfd: pytest.CaptureFixture[str]
) -> None:
    """Batches of 1 and 1000 run with all outputs and onnxruntime logs nothing."""
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    batch = _features(np.random.default_rng(6), rows)
    labels, probabilities = session.run(None, {"features": batch})
    assert labels.shape == (rows,)
    assert probabilities.shape == (rows, 2)
    assert capfd.readouterr().err == ""


def test_onnx_probabilities_is_one_float64_per_row(model: bytes) -> None:
    """onnx_probabilities returns the fraud probability of each row as float64, shape (n,)."""
    probabilities = onnx_probabilities(model, _features(np.random.default_rng(8), 50))
    assert probabilities.shape == (50,)
    assert probabilities.dtype == np.float64
    assert np.all((probabilities > 0) & (probabilities < 1))


def test_feature_name_count_must_match_the_booster(booster: lightgbm.Booster) -> None:
    """Export refuses a name list whose length differs from the booster's features."""
    with pytest.raises(ValueError, match="feature names"):
        export_onnx(booster, FEATURE_NAMES[:-1])


def test_feature_names_must_not_contain_commas(booster: lightgbm.Booster) -> None:
    """Export refuses names that the comma-joined metadata could not carry."""
    with pytest.raises(ValueError, match="','"):
        export_onnx(booster, [*FEATURE_NAMES[:-1], "a,b"])
