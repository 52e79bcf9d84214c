"""Tests for service.model.onnx_scorer: the server's ONNX scorer, on a model exported by
training."""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper

from service.model.onnx_scorer import OnnxScorer
from training.model_build.export import export_onnx

N_FEATURES = 8
FEATURE_NAMES = [f"feature_{index}" for index in range(N_FEATURES)]


def _rows(seed: int, count: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=(count, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def booster() -> lightgbm.Booster:
    features = _rows(0, 400)
    labels = (features[:, 0] - features[:, 1] > 0.5).astype(np.int32)
    params = {"objective": "binary", "num_leaves": 15, "num_threads": 1, "verbose": -1}
    return lightgbm.train(params, lightgbm.Dataset(features, labels), num_boost_round=25)


@pytest.fixture(scope="module")
def model(booster: lightgbm.Booster) -> bytes:
    return export_onnx(booster, FEATURE_NAMES)


@pytest.fixture
def scorer(model: bytes) -> OnnxScorer:
    return OnnxScorer(model, N_FEATURES)


def _identity_model(output_name: str, width: int) -> bytes:
    """A float (N, width) graph that passes its input through to `output_name`."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], [output_name])],
        "identity",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def test_score_one_equals_score_batch_row_by_row(scorer: OnnxScorer) -> None:
    """The single-row hot path gives exactly the batch scores."""
    rows = _rows(1, 300)
    batch = scorer.score_batch(rows)
    assert [scorer.score_one(row.tolist()) for row in rows] == batch.tolist()


def test_score_one_matches_lightgbm(scorer: OnnxScorer, booster: lightgbm.Booster) -> None:
    """score_one is within 1e-5 of LightGBM's own probability."""
    rows = _rows(2, 300)
    scores = np.array([scorer.score_one(row.tolist()) for row in rows])
    np.testing.assert_allclose(scores, booster.predict(rows, num_threads=1), rtol=0, atol=1e-5)


def test_score_one_accepts_any_float_sequence(scorer: OnnxScorer) -> None:
    """A list, a tuple and a numpy row of the same values score the same."""
    row = _rows(3, 1)[0]
    assert scorer.score_one(row.tolist()) == scorer.score_one(tuple(row.tolist()))
    assert scorer.score_one(row.tolist()) == scorer.score_one(row)


def test_score_batch_shape_and_dtype(scorer: OnnxScorer) -> None:
    """score_batch returns one float64 probability per row."""
    scores = scorer.score_batch(_rows(4, 20))
    assert scores.shape == (20,)
    assert scores.dtype == np.float64
    assert np.all((scores > 0) & (scores < 1))


@pytest.mark.parametrize("rows", [1, 1_000])
def test_score_batch_of_any_size_logs_nothing(
    scorer: OnnxScorer, rows: int, capfd: pytest.CaptureFixture[str]
) -> None:
    """Batches of 1 and 1000 score without onnxruntime warnings."""
    assert scorer.score_batch(_rows(5, rows)).shape == (rows,)
    assert capfd.readouterr().err == ""


def test_loads_from_a_file(model: bytes, scorer: OnnxScorer, tmp_path: Path) -> None:
    """A model file scores like the same model given as bytes."""
    path = tmp_path / "model.onnx"
    path.write_bytes(model)
    rows = _rows(6, 50)
    np.testing.assert_array_equal(
        OnnxScorer(path, N_FEATURES).score_batch(rows), scorer.score_batch(rows)
    )


def test_feature_names_come_from_the_metadata(scorer: OnnxScorer) -> None:
    """The feature names recorded by export are read back."""
    assert scorer.feature_names == tuple(FEATURE_NAMES)


def test_model_of_another_width_is_refused(model: bytes) -> None:
    """A feature count that differs from the model's input raises ValueError."""
    with pytest.raises(ValueError, match=f"expects {N_FEATURES} features"):
        OnnxScorer(model, N_FEATURES + 1)


def test_model_without_probabilities_is_refused() -> None:
    """A graph with no 'probabilities' output raises ValueError."""
    with pytest.raises(ValueError, match="no 'probabilities' output"):
        OnnxScorer(_identity_model("scores", N_FEATURES), N_FEATURES)


def test_probabilities_must_have_two_columns() -> None:
    """A 'probabilities' output that is not (N, 2) raises ValueError."""
    with pytest.raises(ValueError, match=r"expected \(N, 2\)"):
        OnnxScorer(_identity_model("probabilities", 3), 3)


def test_score_one_refuses_a_row_of_the_wrong_length(scorer: OnnxScorer) -> None:
    """A row that numpy could broadcast (length 1) is still refused."""
    with pytest.raises(ValueError, match=f"expected {N_FEATURES} features, got 1"):
        scorer.score_one([0.5])


def test_score_batch_refuses_the_wrong_shape(scorer: OnnxScorer) -> None:
    """A matrix of the wrong width raises ValueError."""
    with pytest.raises(ValueError, match="expected shape"):
        scorer.score_batch(np.zeros((3, N_FEATURES - 1)))


def test_nan_scores_as_in_lightgbm(scorer: OnnxScorer, booster: lightgbm.Booster) -> None:
    """A NaN feature scores as LightGBM scores it (the feature engine never sends one)."""
    row = _rows(7, 1)[0]
    row[0] = np.nan
    native = booster.predict(row.reshape(1, -1), num_threads=1)[0]
    assert scorer.score_one(row.tolist()) == pytest.approx(native, abs=1e-5)
