"""`fraud-bench suite`: every measurement of the harness in one command, each against a
server the suite starts itself (on free ports of 127.0.0.1) and stops (SIGTERM, exit 0).

    floors          single-row ONNX inference alone (in this process); then an open loop
                    of unary `Score` at `rate` against the empty floor server and against
                    the bare gRPC + ONNX floor server (`benchmarks.servers.floor`), and a
                    closed loop of `in_flight` calls against the latter
    fraud-serve     open loop, unary, at `rate`; closed loop, unary, `in_flight` calls in
                    flight; open loop on `ScoreStream` at `stream_rate` (`streams` streams
                    per client process); each against a freshly started server
    saturation      open loop, unary, the rate stepped up on one fresh server (each step
                    with the next rows of the history and a fresh run id) until p99 passes
                    the budget or a `Score` call fails
    workers         the open loop at `rate` again against `fraud-serve --workers 2`, next to
                    the one-worker run above
    memory          feature state for `memory_days` days of the history, in a fresh process

The history is loaded once (as many rows as the largest measurement needs); each
measurement sends its rows under a fresh run id. The ratio of the server's CPU per answer
to the ONNX floor's is `comparisons.server_cpu_vs_floor_onnx` (target at most 1.5); it is
null when either run had errors: pick a `--rate` that both hold (see the saturation).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.load.client import Rpc
from benchmarks.load.schedule import Arrivals
from benchmarks.load.traffic import History, OutcomeMix, build_calls, load_history, new_run_id
from benchmarks.measurements.load_run import LoadSettings, Measurement, Mode, measure
from benchmarks.measurements.memory import measure_in_fresh_process
from benchmarks.measurements.onnx_floor import InferenceTiming, time_single_row
from benchmarks.measurements.saturation import Attempt, Saturation, rate_steps, search
from benchmarks.probes.machine import describe_run
from benchmarks.reporting.report import Report
from benchmarks.servers.floor import FLOOR_KINDS
from benchmarks.servers.launch import (
    LOCAL_HOST,
    ServerProbe,
    ServerSpec,
    floor_spec,
    fraud_serve_spec,
    serving,
)
from service.model.artifact import ONNX_MODEL_FILE
from service.model.registry import Registry


@dataclass(frozen=True)
class SuiteSettings:
    """Everything the suite does, with defaults that run it in a few minutes."""

    registry: Path = Path("models")
    data: Path = Path("data/transactions.csv")
    out: Path = Path("bench-out")
    seconds: float = 10.0
    rate: float = 2000.0
    in_flight: int = 32
    stream_rate: float = 10_000.0
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

    def __post_init__(self) -> None:
        """ValueError unless every measurement's load is within bounds."""
        rate_steps(self.saturation_start, self.saturation_step, self.saturation_max)
        anywhere = f"{LOCAL_HOST}:0"
        _load(self, anywhere, "closed", "unary", self.rate)
        _load(self, anywhere, "open", "stream", self.stream_rate)
        _load(self, anywhere, "open", "unary", max(self.rate, self.saturation_max))
        if self.saturation_seconds <= 0 or self.memory_days < 0 or self.onnx_calls < 1:
            raise ValueError("step seconds and ONNX calls must be above 0, memory days 0+")


def champion_model(registry: Path) -> tuple[str, Path]:
    """The champion's version and its model.onnx; ValueError if there is no champion."""
    models = Registry(registry)
    champion = models.champion()
    if champion is None:
        raise ValueError(f"{registry} has no champion: train a model first")
    version = champion[0]
    return version, models.artifact_dir(version) / ONNX_MODEL_FILE


def floors_report(settings: SuiteSettings, command_line: list[str]) -> Report:
    """`fraud-bench floors`: the floors alone."""
    version, model = champion_model(settings.registry)
    history = load_history(settings.data, round(settings.rate * settings.seconds))
    onnx, measurements = run_floors(settings, history, model)
    return Report(
        "floors",
        describe_run(),
        command_line,
        _settings(settings, version),
        measurements=measurements,
        onnx_alone=onnx,
    )


def run_floors(
    settings: SuiteSettings, history: History, model: Path
) -> tuple[InferenceTiming, list[Measurement]]:
    """ONNX inference alone, then the open loop against each floor server, then the closed
    loop against the ONNX floor (the ceiling the server's own closed loop compares with)."""
    _progress("onnx inference alone")
    onnx = time_single_row(model, settings.onnx_calls)
    measurements = [
        _against(
            settings,
            history,
            floor_spec(f"floor-{kind}", kind, model if kind == "onnx" else None),
            _loader(settings, "open", "unary", settings.rate),
        )
        for kind in FLOOR_KINDS
    ]
    closed = _loader(settings, "closed", "unary", settings.rate)
    spec = floor_spec("floor-onnx-closed", "onnx", model)
    measurements.append(_against(settings, history, spec, closed))
    return onnx, measurements


def run_suite(settings: SuiteSettings, command_line: list[str]) -> Report:
    """Every measurement of the suite (see the module docstring), as one report."""
    version, model = champion_model(settings.registry)
    history = load_history(settings.data, _rows_needed(settings))
    onnx, measurements = run_floors(settings, history, model)
    registry = settings.registry
    runs: tuple[tuple[str, Mode, Rpc, float], ...] = (
        ("serve-open-unary", "open", "unary", settings.rate),
        ("serve-closed-unary", "closed", "unary", settings.rate),
        ("serve-open-stream", "open", "stream", settings.stream_rate),
    )
    for name, mode, rpc, rate in runs:
        spec = fraud_serve_spec(name, registry)
        measurements.append(_against(settings, history, spec, _loader(settings, mode, rpc, rate)))
    saturation = run_saturation(settings, history)
    spec = fraud_serve_spec("serve-open-unary-2-workers", registry, workers=2)
    opener = _loader(settings, "open", "unary", settings.rate)
    measurements.append(_against(settings, history, spec, opener))
    memory = None
    if settings.memory_days > 0:
        _progress(f"memory: {settings.memory_days:g} days of feature state")
        memory = measure_in_fresh_process(registry, settings.data, settings.memory_days)
    return Report(
        "suite",
        describe_run(),
        command_line,
        _settings(settings, version),
        measurements=measurements,
        onnx_alone=onnx,
        saturation=saturation,
        memory=memory,
        comparisons=_comparisons(measurements),
    )


def run_saturation(settings: SuiteSettings, history: History) -> Saturation:
    """The saturation search against one freshly started `fraud-serve`."""
    rates = rate_steps(settings.saturation_start, settings.saturation_step, settings.saturation_max)
    with serving(
        fraud_serve_spec("serve-saturation", settings.registry), _logs(settings)
    ) as server:

        def load_at(rate: float) -> LoadSettings:
            load = _load(settings, server.target, "open", "unary", rate)
            return dataclasses.replace(load, seconds=settings.saturation_seconds)

        return saturate_server(
            rates, load_at, history, settings.outcomes, server.probe, settings.budget_ms
        )


def saturate_server(
    rates: Sequence[float],
    load_at: Callable[[float], LoadSettings],
    history: History,
    outcomes: OutcomeMix,
    probe: ServerProbe,
    budget_ms: float,
    run_id: str | None = None,
) -> Saturation:
    """The saturation search against a running server: each step sends the history's next
    rows, with ids prefixed `<run_id>-<rate>` (a fresh run id by default)."""
    prefix = run_id or new_run_id()
    next_row = 0

    def attempt(rate: float) -> Attempt:
        nonlocal next_row
        load = load_at(rate)
        rows = load.calls_needed()
        calls = build_calls(history, f"{prefix}-{rate:g}", outcomes, next_row, rows)
        next_row += rows
        _progress(f"saturation: {rate:g}/s for {load.seconds:g} s")
        measurement = measure(f"saturation-{rate:g}", load, calls, probe)
        return Attempt(
            rate, measurement.achieved_rate, measurement.latency.p99_ms, measurement.errors
        )

    return search(rates, attempt, budget_ms)


def _against(
    settings: SuiteSettings,
    history: History,
    spec: ServerSpec,
    load_for: Callable[[str], LoadSettings],
) -> Measurement:
    """One measurement against the server of `spec`, started fresh for it."""
    load = load_for(spec.target)
    rows = load.calls_needed() if load.mode == "open" else len(history)
    calls = build_calls(history, new_run_id(), settings.outcomes, 0, min(rows, len(history)))
    with serving(spec, _logs(settings)) as server:
        _progress(f"{spec.name}: {load.mode} loop, {load.rpc}, {load.seconds:g} s")
        return measure(spec.name, load, calls, server.probe)


def _loader(
    settings: SuiteSettings, mode: Mode, rpc: Rpc, rate: float
) -> Callable[[str], LoadSettings]:
    return lambda target: _load(settings, target, mode, rpc, rate)


def _load(settings: SuiteSettings, target: str, mode: Mode, rpc: Rpc, rate: float) -> LoadSettings:
    return LoadSettings(
        target=target,
        mode=mode,
        rpc=rpc,
        seconds=settings.seconds,
        rate=rate,
        arrivals=settings.arrivals,
        in_flight=settings.in_flight,
        processes=settings.processes,
        connections=settings.connections,
        streams=settings.streams,
        timeout=settings.timeout,
        seed=settings.seed,
    )


def _rows_needed(settings: SuiteSettings) -> int:
    """Enough rows for the largest measurement: open loops, the closed loop, the search."""
    rates = rate_steps(settings.saturation_start, settings.saturation_step, settings.saturation_max)
    saturation = sum(round(rate * settings.saturation_seconds) for rate in rates)
    loops = round(max(settings.rate, settings.stream_rate) * settings.seconds)
    return max(saturation, loops)


def _comparisons(measurements: list[Measurement]) -> dict[str, float | None]:
    """The server's CPU per answer over each floor's, from the open loops at the same rate;
    None when either run had errors (an overloaded run's CPU per answer is not comparable).
    """
    by_name = {m.name: m for m in measurements}
    serve = by_name["serve-open-unary"]
    return {
        f"server_cpu_vs_{floor.replace('-', '_')}": _ratio(serve, by_name[floor])
        for floor in ("floor-onnx", "floor-empty")
    }


def _ratio(serve: Measurement, floor: Measurement) -> float | None:
    if serve.errors or floor.errors or serve.server is None or floor.server is None:
        return None
    return round(serve.server.cpu_us_per_answer / floor.server.cpu_us_per_answer, 2)


def _settings(settings: SuiteSettings, champion: str) -> dict[str, object]:
    return dataclasses.asdict(settings) | {"champion": champion, "host": LOCAL_HOST}


def _logs(settings: SuiteSettings) -> Path:
    return settings.out / "logs"


def _progress(message: str) -> None:
    print(f"fraud-bench: {message}", file=sys.stderr, flush=True)
