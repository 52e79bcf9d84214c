"""`fraud-bench suite` and `fraud-bench floors`, run: each measurement the suite's settings
describe (`benchmarks.suite_settings`, whose docstring is the suite's --help), each against
a server started for it, then the targets judged, in one report.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.faults.chaos import ChaosSettings, run_chaos
from benchmarks.faults.criteria import Criterion, Scenario
from benchmarks.load.client import Rpc
from benchmarks.load.traffic import History, OutcomeMix, build_calls, load_history, new_run_id
from benchmarks.measurements.load_run import LoadSettings, Measurement, Mode, measure
from benchmarks.measurements.memory import measure_in_fresh_process
from benchmarks.measurements.mlserver_rows import (
    CLOSED_LOOP_ROWS_PER_SECOND,
    MLServerSetup,
    measure_mlserver,
)
from benchmarks.measurements.onnx_floor import InferenceTiming, time_single_row
from benchmarks.measurements.saturation import Attempt, Saturation, rate_steps, search
from benchmarks.probes.machine import describe_run
from benchmarks.reporting.report import Report, Target
from benchmarks.reporting.targets import judge_targets, stream_row
from benchmarks.servers.floor import FLOOR_KINDS
from benchmarks.servers.launch import (
    LOCAL_HOST,
    ServerProbe,
    ServerSpec,
    floor_spec,
    fraud_serve_spec,
    serving,
)
from benchmarks.suite_settings import SuiteSettings as SuiteSettings
from service.model.artifact import ONNX_MODEL_FILE
from service.model.registry import Registry


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
    """Every measurement of the suite (see `benchmarks.suite_settings`), as one report."""
    run = describe_run()  # the load average as the suite starts, with the rest
    loads: dict[str, float] = {}
    version, model = champion_model(settings.registry)
    history = load_history(settings.data, _rows_needed(settings))
    loads["floors"] = _load_average()
    onnx, measurements = run_floors(settings, history, model)
    registry = settings.registry
    runs: list[tuple[str, Mode, Rpc, float]] = [
        ("serve-open-unary", "open", "unary", settings.rate),
        ("serve-closed-unary", "closed", "unary", settings.rate),
        *((stream_row(rate), "open", "stream", rate) for rate in settings.stream_rates),
        *((f"serve-open-batch-{rate:g}", "open", "batch", rate) for rate in settings.batch_rates),
    ]
    for name, mode, rpc, rate in runs:
        spec = fraud_serve_spec(name, registry)
        loads[name] = _load_average()
        measurements.append(_against(settings, history, spec, _loader(settings, mode, rpc, rate)))
    loads["saturation"] = _load_average()
    saturation = run_saturation(settings, history)
    for name, mode in (
        ("serve-open-unary-2-workers", "open"),
        ("serve-closed-unary-2-workers", "closed"),
    ):
        spec = fraud_serve_spec(name, registry, workers=2)
        loads[name] = _load_average()
        measurements.append(
            _against(settings, history, spec, _loader(settings, mode, "unary", settings.rate))
        )
    loads["overload"] = _load_average()
    overload = run_overload(settings, saturation.highest_held_rate)
    if settings.mlserver_python is not None:
        setup = MLServerSetup(
            settings.mlserver_python, settings.mlserver_workers, settings.out, _logs(settings)
        )
        measurements += measure_mlserver(
            setup,
            registry,
            history,
            lambda target, mode: settings.load(target, mode, "unary", settings.rate),
            lambda name: loads.__setitem__(name, _load_average()),
        )
    memory = None
    if settings.memory_days > 0:
        _progress(f"memory: {settings.memory_days:g} days of feature state")
        memory = measure_in_fresh_process(registry, settings.data, settings.memory_days)
    loads["end"] = _load_average()
    comparisons = _comparisons(measurements)
    checks = overload_checks(overload)
    return Report(
        "suite",
        run,
        command_line,
        _settings(settings, version),
        measurements=measurements,
        onnx_alone=onnx,
        saturation=saturation,
        memory=memory,
        comparisons=comparisons,
        targets=judge_targets(measurements, comparisons)
        + overload_targets(settings.overload_factor, overload, saturation),
        overload=None if overload is None else dict(overload.figures, passed=overload.passed),
        overload_checks=checks,
        loads=loads,
    )


def run_overload(settings: SuiteSettings, saturation: float | None) -> Scenario | None:
    """`fraud-bench chaos --scenario overload` at `overload_factor` x `saturation`, its
    calm phases `seconds` long (1 s at least); None when skipped (no rate was held, or
    `overload_seconds` is 0)."""
    if saturation is None or settings.overload_seconds == 0:
        return None
    _progress(f"overload: {settings.overload_factor:g} x {saturation:g}/s")
    chaos = ChaosSettings(
        settings.registry,
        settings.data,
        settings.out,
        scenarios=("overload",),
        seconds=max(1.0, settings.seconds),
        overload_seconds=settings.overload_seconds,
        overload_factor=settings.overload_factor,
        saturation=saturation,
    )
    (scenario,) = run_chaos(chaos)
    return scenario


# The overload criteria that are issue 17's targets: refusals RESOURCE_EXHAUSTED, within
# 5 ms, and goodput. (Health and recovery are the chaos scenario's own.)
_OVERLOAD_TARGETS = ("every refusal", "refusals (RESOURCE_EXHAUSTED)", "goodput")


def overload_checks(overload: Scenario | None) -> list[Target]:
    """Every criterion of the overload run, as a target of its row (none when skipped)."""
    return [] if overload is None else [_target(c, "overload") for c in overload.criteria]


def overload_targets(
    factor: float, overload: Scenario | None, saturation: Saturation
) -> list[Target]:
    """Issue 17's targets among the overload's criteria; when it was skipped, one target
    not judged that says so. When the search held its last step, the capacity it found is
    only a lower bound, and each target says so: the overload may be a smaller multiple."""
    if overload is None:
        why = "skipped: no saturation rate was held, or --overload-seconds 0"
        return [Target(f"overload at {factor:g} x capacity", "overload", "-", "-", None, why)]
    targets = [t for t in overload_checks(overload) if t.name.startswith(_OVERLOAD_TARGETS)]
    if saturation.steps and saturation.steps[-1].held:
        bound = (
            f"capacity at least {saturation.steps[-1].rate:,.0f}/s: the search held every "
            "step up to --max-rate"
        )
        targets = [
            dataclasses.replace(
                t, detail=bound if t.detail in ("", "-") else f"{t.detail}; {bound}"
            )
            for t in targets
        ]
    return targets


def _target(criterion: Criterion, row: str) -> Target:
    return Target(
        criterion.name, row, criterion.measured, criterion.limit, criterion.passed, criterion.detail
    )


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_saturation(settings: SuiteSettings, history: History) -> Saturation:
    """The saturation search against one freshly started `fraud-serve`."""
    rates = rate_steps(settings.saturation_start, settings.saturation_step, settings.saturation_max)
    with serving(
        fraud_serve_spec("serve-saturation", settings.registry), _logs(settings)
    ) as server:

        def load_at(rate: float) -> LoadSettings:
            load = settings.load(server.target, "open", "unary", rate)
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
    return lambda target: settings.load(target, mode, rpc, rate)


def _rows_needed(settings: SuiteSettings) -> int:
    """Enough rows for the largest measurement: open loops, the search, MLServer's closed
    loop (a closed loop of fraud-serve's sends what there is)."""
    rates = rate_steps(settings.saturation_start, settings.saturation_step, settings.saturation_max)
    saturation = sum(round(rate * settings.saturation_seconds) for rate in rates)
    fastest = max(settings.rate, *settings.stream_rates, *settings.batch_rates)
    if settings.mlserver_python is not None:
        fastest = max(fastest, CLOSED_LOOP_ROWS_PER_SECOND)
    loops = round(fastest * settings.seconds)
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
