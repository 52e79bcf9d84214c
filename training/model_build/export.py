"""LightGBM to ONNX export, and the parity check that gates publishing it.

The ONNX graph compares float32 features with float32 thresholds, while LightGBM compares
(float32 features widened to) double with double thresholds. Rounding a double threshold
to the nearest float32 can move it above the original, and a feature equal to that rounded
value then goes left in ONNX and right in LightGBM. LightGBM also reads any |x| <= 1e-35
as 0. Export therefore first rewrites every numerical threshold to the float32 that gives
the same decision as LightGBM for every float32 feature (`float32_threshold_booster`), so
the graph matches the booster on the float32 features training and serving use, values
at the thresholds included.

Missing values: NaN takes the same branch in the graph as in LightGBM (as 0 for a feature
that had no NaN in training, LightGBM's default direction otherwise); the feature engine
never emits NaN.

The graph follows the contract in `service.model.onnx_scorer`: one float32 input "features" of
shape (N, n_features); outputs "probabilities" (float32, (N, 2), fraud in column 1) and
"label" (int64, (N,)); the feature names, comma-joined, in the metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm
import numpy as np
import numpy.typing as npt
import onnx
from onnxmltools.convert import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from service.model.onnx_scorer import FEATURE_NAMES_KEY, INPUT_NAME, OnnxScorer

BATCH_DIM = "N"
GRAPH_NAME = "fraud_lightgbm"
# The converter emits the lowest opsets its operators need (ai.onnx 9, ai.onnx.ml 1);
# pinning the target keeps an onnxmltools upgrade from changing the graph silently.
TARGET_OPSET = 15

_CATEGORICAL_SPLIT = 1  # bit 0 of LightGBM's decision_type
_END_OF_TREES = "end of trees"
# LightGBM's kZeroThreshold (1e-35f): at prediction it reads features this small as zero.
_LIGHTGBM_ZERO = float(np.float32(1e-35))


def export_onnx(booster: lightgbm.Booster, feature_names: Sequence[str]) -> bytes:
    """The booster as a checked, deterministic ONNX model (bytes) whose input is "features"."""
    _check_feature_names(booster, feature_names)
    model = convert_lightgbm(
        float32_threshold_booster(booster),
        name=GRAPH_NAME,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(feature_names)]))],
        zipmap=False,
        target_opset=TARGET_OPSET,
    )
    _make_batch_symbolic(model)
    _sort_opset_imports(model)
    onnx.helper.set_model_props(model, {FEATURE_NAMES_KEY: ",".join(feature_names)})
    onnx.checker.check_model(model, full_check=True)
    serialized: bytes = model.SerializeToString(deterministic=True)
    return serialized


def _sort_opset_imports(model: onnx.ModelProto) -> None:
    """Opset imports in domain order: the converter's order was seen to vary between
    processes, and the version name is derived from the model's bytes."""
    imports = sorted(model.opset_import, key=lambda opset: opset.domain)
    del model.opset_import[:]
    model.opset_import.extend(imports)


def float32_threshold_booster(booster: lightgbm.Booster) -> lightgbm.Booster:
    """A copy of `booster` whose numerical thresholds are float32 values.

    Each is the largest float32 that sends every float32 feature the way `booster` does, so
    the copy predicts exactly like `booster` on float32 input and its thresholds survive
    the cast to float32 unchanged.
    """
    trees, end_marker, tail = booster.model_to_string().partition(_END_OF_TREES)
    lines = trees.split("\n")
    threshold_rows = [i for i, line in enumerate(lines) if line.startswith("threshold=")]
    decision_rows = [i for i, line in enumerate(lines) if line.startswith("decision_type=")]
    for t_row, d_row in zip(threshold_rows, decision_rows, strict=True):
        lines[t_row] = "threshold=" + _floor_numerical(
            lines[t_row].removeprefix("threshold=").split(" "),
            lines[d_row].removeprefix("decision_type=").split(" "),
        )
    # tree_sizes gives each tree's length in bytes, which the rewrite changes; without it
    # LightGBM reads the trees one after the other.
    kept = [line for line in lines if not line.startswith("tree_sizes=")]
    return lightgbm.Booster(model_str="\n".join(kept) + end_marker + tail)


def onnx_probabilities(model: bytes, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Fraud probability of each row of `features` (n, n_features), shape (n,).

    Scored by the server's own `OnnxScorer`, so parity is checked on what serving runs.
    """
    batch = np.asarray(features, dtype=np.float32)
    return OnnxScorer(model, n_features=batch.shape[1]).score_batch(batch)


def parity_gap(booster: lightgbm.Booster, model: bytes, features: npt.ArrayLike) -> float:
    """Largest |ONNX - LightGBM| fraud probability over the rows of `features` (as float32)."""
    batch = np.ascontiguousarray(features, dtype=np.float32)
    native = np.asarray(booster.predict(batch, num_threads=1), dtype=np.float64)
    return float(np.max(np.abs(onnx_probabilities(model, batch) - native), initial=0.0))


def _floor_numerical(thresholds: list[str], decision_types: list[str]) -> str:
    """The threshold line's values with numerical ones floored to float32.

    A categorical split's threshold is an index into the category bitsets: kept as it is.
    """
    categorical = np.array([int(kind) & _CATEGORICAL_SPLIT for kind in decision_types], bool)
    floored = _float32_floor(np.array(thresholds, dtype=np.float64))
    return " ".join(
        text if is_categorical else repr(float(value))
        for text, value, is_categorical in zip(thresholds, floored, categorical, strict=True)
    )


def _float32_floor(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each threshold as the largest float32 at or below it, returned as float64.

    LightGBM predicts every |x| <= `_LIGHTGBM_ZERO` as 0, so for a threshold in
    [-_LIGHTGBM_ZERO, 0) a tiny negative feature goes right (0 > threshold), and "x <= t" is
    really "x < -_LIGHTGBM_ZERO": the threshold moves just below -_LIGHTGBM_ZERO first.
    """
    in_band = (values >= -_LIGHTGBM_ZERO) & (values < 0)
    wanted = np.where(in_band, np.nextafter(-_LIGHTGBM_ZERO, -np.inf), values)
    nearest = wanted.astype(np.float32)
    below = np.where(nearest > wanted, np.nextafter(nearest, np.float32(-np.inf)), nearest)
    return below.astype(np.float64)


def _make_batch_symbolic(model: onnx.ModelProto) -> None:
    """Give the first dimension of every graph input and output the shared name `BATCH_DIM`.

    The converter declares "label" with a fixed batch of 1, which makes onnxruntime warn on
    every larger batch and breaks IOBinding.
    """
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM


def _check_feature_names(booster: lightgbm.Booster, feature_names: Sequence[str]) -> None:
    if len(feature_names) != booster.num_feature():
        raise ValueError(
            f"{len(feature_names)} feature names for a booster of {booster.num_feature()} features"
        )
    if any("," in name for name in feature_names):
        raise ValueError("feature names must not contain ',' (the metadata joins them with it)")
