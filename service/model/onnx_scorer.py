"""The scoring model as the server runs it: an ONNX graph in onnxruntime, one row at a time.

This module also owns the graph's contract, which `training.model_build.export` writes to: one
float32 input `INPUT_NAME` of shape (N, n_features) (the scorer accepts any name for the only
input), an output `PROBABILITY_OUTPUT` of shape (N, 2) whose column 1 is the fraud probability,
and the feature names, comma-joined, under `FEATURE_NAMES_KEY` in the model's metadata.

Sessions run on one intra-op and one inter-op thread with spinning off: one row is too
little tree walking to share between threads, and spinning threads burn the cores that
concurrent requests need on a shared machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

INPUT_NAME = "features"
PROBABILITY_OUTPUT = "probabilities"
FEATURE_NAMES_KEY = "feature_names"
_FRAUD_COLUMN = 1


class OnnxScorer:
    """Fraud probabilities from an ONNX model, for one row (hot path) or a batch.

    `score_one` is NOT thread-safe: it writes one preallocated input buffer and reads one
    output buffer, both bound to the session once (onnxruntime IOBinding), which is the
    fastest way to score a single row. Use one scorer per thread or serialise its calls.
    `score_batch` shares nothing and is safe to call from any thread.
    """

    def __init__(self, model: bytes | Path, n_features: int) -> None:
        """Load `model` (serialized ONNX or a file); ValueError if it does not fit the contract.

        `n_features` is the width of the rows the caller will send.
        """
        source = model.read_bytes() if isinstance(model, Path) else model
        self._session = onnxruntime.InferenceSession(
            source, _session_options(), providers=["CPUExecutionProvider"]
        )
        self._input_name = _checked_input(self._session, n_features)
        _check_probability_output(self._session)
        self._n_features = n_features
        self._row = np.zeros((1, n_features), dtype=np.float32)
        self._probabilities = np.zeros((1, 2), dtype=np.float32)
        self._binding = self._session.io_binding()
        self._binding.bind_ortvalue_input(
            self._input_name, onnxruntime.OrtValue.ortvalue_from_numpy(self._row)
        )
        self._binding.bind_ortvalue_output(
            PROBABILITY_OUTPUT, onnxruntime.OrtValue.ortvalue_from_numpy(self._probabilities)
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The feature names recorded in the model's metadata; empty if it has none."""
        metadata: dict[str, str] = self._session.get_modelmeta().custom_metadata_map
        joined = metadata.get(FEATURE_NAMES_KEY, "")
        return tuple(joined.split(",")) if joined else ()

    def score_one(self, features: Sequence[float]) -> float:
        """Fraud probability of one feature row. Not thread-safe (see the class docstring)."""
        if len(features) != self._n_features:
            raise ValueError(f"expected {self._n_features} features, got {len(features)}")
        self._row[0] = features
        self._session.run_with_iobinding(self._binding)
        return float(self._probabilities[0, _FRAUD_COLUMN])

    def score_batch(self, matrix: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Fraud probability of each row of `matrix` (shape (n, n_features)), shape (n,)."""
        batch = np.ascontiguousarray(matrix, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self._n_features:
            raise ValueError(f"expected shape (n, {self._n_features}), got {batch.shape}")
        (probabilities,) = self._session.run([PROBABILITY_OUTPUT], {self._input_name: batch})
        return np.asarray(probabilities[:, _FRAUD_COLUMN], dtype=np.float64)


def _session_options() -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _checked_input(session: onnxruntime.InferenceSession, n_features: int) -> str:
    """The name of the model's only input, once it is a float tensor of `n_features` columns."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"the model has {len(inputs)} inputs, expected 1")
    (model_input,) = inputs
    if model_input.type != "tensor(float)" or len(model_input.shape) != 2:
        raise ValueError(f"model input is {model_input.type} {model_input.shape}, not a matrix")
    width = model_input.shape[1]
    if width != n_features:
        raise ValueError(f"the model expects {width} features, the server sends {n_features}")
    name: str = model_input.name
    return name


def _check_probability_output(session: onnxruntime.InferenceSession) -> None:
    outputs = {output.name: output.shape for output in session.get_outputs()}
    if PROBABILITY_OUTPUT not in outputs:
        raise ValueError(f"the model has no {PROBABILITY_OUTPUT!r} output (has {list(outputs)})")
    shape = outputs[PROBABILITY_OUTPUT]
    if len(shape) != 2 or shape[1] != 2:
        raise ValueError(f"{PROBABILITY_OUTPUT!r} has shape {shape}, expected (N, 2)")
