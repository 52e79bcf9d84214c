"""Single-row ONNX inference of a published model, as bare as it gets: the floor of what
scoring one transaction can cost.

One onnxruntime session on the artifact's `model.onnx`, configured as the server's
(`service.onnx_model`): one intra-op and one inter-op thread, sequential execution,
spinning off, all graph optimisations. Each call scores one float32 row with a plain
`session.run`; the rows are the artifact's golden sample (real feature vectors from
training), taken in turn, so the trees take their real paths.

`time_single_row` measures that call alone, in this process: the floor under both the
ONNX floor server (`benchmarks.floor_server --kind onnx`) and `fraud-serve`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from service.artifact import read_manifest
from service.onnx_model import PROBABILITY_OUTPUT

_FRAUD_COLUMN = 1


class SingleRowModel:
    """An onnxruntime session that scores one golden-sample row per call. One thread only."""

    def __init__(self, model: Path) -> None:
        """Load `model` (an artifact's model.onnx; its manifest.json must sit beside it)."""
        rows = np.asarray(read_manifest(model.parent).golden_sample.features, dtype=np.float32)
        self._session = onnxruntime.InferenceSession(
            str(model), _session_options(), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._rows = itertools.cycle([row.reshape(1, -1) for row in rows])
        self.features = int(rows.shape[1])

    def predict(self) -> float:
        """The fraud probability of the next row."""
        (probabilities,) = self._session.run([PROBABILITY_OUTPUT], {self._input: next(self._rows)})
        return float(probabilities[0, _FRAUD_COLUMN])


@dataclass(frozen=True)
class InferenceTiming:
    """Wall time of single-row inference calls, in microseconds."""

    calls: int
    features: int
    mean_us: float
    p50_us: float
    p99_us: float


def time_single_row(model: Path, calls: int = 20_000, max_seconds: float = 10.0) -> InferenceTiming:
    """Time `calls` single-row predictions (fewer if `max_seconds` run out), after warm-up."""
    scorer = SingleRowModel(model)
    for _ in range(100):
        scorer.predict()
    durations: list[int] = []
    stop_at = time.perf_counter() + max_seconds
    while len(durations) < calls and time.perf_counter() < stop_at:
        started = time.perf_counter_ns()
        scorer.predict()
        durations.append(time.perf_counter_ns() - started)
    micros = np.array(durations, dtype=np.float64) / 1e3
    p50, p99 = np.percentile(micros, [50, 99])
    return InferenceTiming(
        calls=micros.size,
        features=scorer.features,
        mean_us=round(float(micros.mean()), 2),
        p50_us=round(float(p50), 2),
        p99_us=round(float(p99), 2),
    )


def _session_options() -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
