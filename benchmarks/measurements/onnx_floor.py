"""Single-row ONNX inference of a published model, as bare as it gets: the floor of what
scoring one transaction can cost.

The artifact's `model.onnx` in the server's own scorer (`service.model.onnx_scorer.OnnxScorer`:
one session, one intra-op and one inter-op thread, spinning off, the row written into a
bound input buffer), so the floor is the inference every request of `fraud-serve` pays.
The rows are the artifact's golden sample (real feature vectors from training), taken in
turn, so the trees take their real paths.

`time_single_row` measures that call alone, in this process: the floor under both the
ONNX floor server (`benchmarks.servers.floor --kind onnx`) and `fraud-serve`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.servers.floor import SingleRowModel


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
