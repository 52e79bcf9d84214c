"""`fraud-bench suite`: every measurement of the harness in one command, each against a
server the suite starts itself (on free ports of 127.0.0.1) and stops (SIGTERM, exit 0).

    floors          single-row ONNX inference alone (in this process); then an open loop
                    of unary `Score` at `rate` against the empty floor server and against
                    the bare gRPC + ONNX floor server (`benchmarks.servers.floor`), and a
                    closed loop of `in_flight` calls against the latter
    fraud-serve     open loop, unary, at `rate`; closed loop, unary, `in_flight` calls in
                    flight; open loop on `ScoreStream` at each of `stream_rates` (`streams`
                    streams per client process), and on `ScoreBatch` at each of
                    `batch_rates` (`batch_size` transactions a call); each against a
                    freshly started server
    saturation      open loop, unary, the rate stepped up on one fresh server (each step
                    with the next rows of the history and a fresh run id) until p99 passes
                    the budget or a `Score` call fails
    workers         the open loop at `rate` and the closed loop again against
                    `fraud-serve --workers 2`, next to the one-worker runs above
    overload        `fraud-bench chaos --scenario overload` (`benchmarks.faults.chaos`) at
                    `overload_factor` x the saturation just found, for `overload_seconds`
                    between two phases of `seconds` at half of it, on a fresh server with
                    its default settings; skipped when no rate was held (when every
                    step was held, the rate is a lower bound and its targets say so)
    mlserver        with `mlserver_python`: MLServer serving the champion's LightGBM model
                    (`benchmarks.servers.mlserver_peer`), the same open loop at `rate` and
                    closed loop at `in_flight`, over its gRPC V2 inference protocol; it
                    gets the feature rows our engine computes for the same history rows
                    (features, not transactions: the serving cost of the model alone)
    memory          feature state for `memory_days` days of the history, in a fresh process

Then the targets of issue 17 (`benchmarks.reporting.targets`, and the overload's own
criteria), each met, not met or not judged, with its figures.

The history is loaded once (as many rows as the largest measurement needs); each
measurement sends its rows under a fresh run id. The ratio of the server's CPU per answer
to the ONNX floor's is `comparisons.server_cpu_vs_floor_onnx` (target at most 1.25); it is
null when either run had errors: pick a `--rate` that both hold (see the saturation). The
1-minute load average as each row starts is in `loads`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.load.settings import (
    LOCAL_HOST,
    Arrivals,
    LoadSettings,
    Mode,
    OutcomeMix,
    Rpc,
    load_with,
)
from benchmarks.measurements.saturation import rate_steps

# Light on purpose (the standard library and light settings only): `fraud-bench`'s parser
# reads these defaults and this docstring; the suite itself, and its imports, are
# `benchmarks.suite`'s.


@dataclass(frozen=True)
class SuiteSettings:
    """Everything the suite does, with defaults that run it in a few minutes."""

    registry: Path = Path("models")
    data: Path = Path("data/transactions.csv")
    out: Path = Path("bench-out")
    seconds: float = 10.0
    rate: float = 2000.0
    in_flight: int = 32
    stream_rates: tuple[float, ...] = (5000.0, 10_000.0)
    batch_rates: tuple[float, ...] = (5000.0, 10_000.0)
    batch_size: int = 32
    streams: int = 4
    budget_ms: float = 50.0
    saturation_start: float = 500.0
    saturation_step: float = 500.0
    saturation_max: float = 5000.0
    saturation_seconds: float = 5.0
    processes: int = 2
    connections: int = 4
    timeout: float = 1.0
    arrivals: Arrivals = "constant"
    outcomes: OutcomeMix = field(default_factory=OutcomeMix)
    seed: int = 0
    onnx_calls: int = 20_000
    memory_days: float = 30.0
    overload_factor: float = 3.0
    overload_seconds: float = 30.0
    mlserver_python: Path | None = None
    # MLServer's parallel_workers (its own default is 1): 0 predicts in the server process,
    # as one fraud-serve worker scores in its own; 1 sends each request to an inference
    # process and back, a hop fraud-serve does not make, and on 2 cores answered half as
    # many calls closed loop at 2.5 x the CPU each (mlserver 1.7.1: 571-601/s against
    # 1,168-1,273/s). 1 or more need uvloop < 0.22 there (SeldonIO/MLServer#2286).
    mlserver_workers: int = 0

    def __post_init__(self) -> None:
        """ValueError unless every measurement's load is within bounds."""
        rate_steps(self.saturation_start, self.saturation_step, self.saturation_max)
        anywhere = f"{LOCAL_HOST}:0"
        self.load(anywhere, "closed", "unary", self.rate)
        if not self.stream_rates:
            raise ValueError("give at least one ScoreStream rate")
        for rate in self.stream_rates:
            self.load(anywhere, "open", "stream", rate)
        for rate in self.batch_rates:
            self.load(anywhere, "open", "batch", rate)
        self.load(anywhere, "open", "unary", max(self.rate, self.saturation_max))
        if self.saturation_seconds <= 0 or self.memory_days < 0 or self.onnx_calls < 1:
            raise ValueError("step seconds and ONNX calls must be above 0, memory days 0+")
        if not 1 < self.overload_factor <= 20 or self.overload_seconds < 0:
            raise ValueError("the overload factor must be above 1 (at most 20), its seconds 0+")
        if not 0 <= self.mlserver_workers <= 8:
            raise ValueError("MLServer's parallel workers must be 0 to 8")

    def load(self, target: str, mode: Mode, rpc: Rpc, rate: float) -> LoadSettings:
        """The load of one measurement against `target`; ValueError if out of bounds."""
        return load_with(self, target, mode, rpc, rate)
