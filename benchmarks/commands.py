"""What each `fraud-bench` subcommand does, once its arguments are parsed.

`prepare` checks the arguments as a whole (a ValueError is a usage error, exit status 2)
and returns the command, to be called with the command line it came from; that call
does the work and returns the report (its errors are failures, exit status 1).

Each command imports what does its work when it runs (or, for the suite, once its
arguments are checked): the harness's modules bring grpc, numpy, psutil, onnxruntime and
the registry's writer, seconds of CPU that `fraud-bench --help`, a usage error and the
other commands have no use for.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable

from benchmarks.faults import commands as fault_commands
from benchmarks.faults.report import FaultReport
from benchmarks.load.settings import LoadSettings, Mode, OutcomeMix, Rpc, load_with
from benchmarks.measurements.saturation import rate_steps
from benchmarks.probes.machine import describe_run
from benchmarks.reporting.report import Report
from benchmarks.suite_settings import SuiteSettings

Command = Callable[[list[str]], Report | FaultReport]
# A caller's bearer token for `run`, from the environment: never on a command line, where
# other users of the machine see it, nor in the report.
TOKEN_VARIABLE = "FRAUD_BENCH_TOKEN"
# History rows a closed loop loads per second of run: more than one server answers.
CLOSED_LOOP_ROWS_PER_SECOND = 5_000


def prepare(args: argparse.Namespace) -> Command:
    """The command `args` asks for, checked; ValueError if the arguments do not fit."""
    if args.command == "run":
        load = load_settings(args, args.mode, args.rpc, args.rate)
        return functools.partial(_run, args, load, outcome_mix(args))
    if args.command == "saturate":
        rates = rate_steps(args.start, args.step, args.max_rate)
        load_settings(args, "open", "unary", rates[-1])  # checks every other setting too
        return functools.partial(_saturate, args, rates, outcome_mix(args))
    if args.command in fault_commands.COMMANDS:
        return fault_commands.prepare(args)
    if args.command == "memory":
        if args.days <= 0:
            raise ValueError("--days must be above 0")
        return functools.partial(_memory, args)
    settings = suite_settings(args)
    if settings.mlserver_python is not None:
        from benchmarks.servers.mlserver_peer import check_interpreter

        check_interpreter(settings.mlserver_python)
    from benchmarks.suite import floors_report, run_suite

    return functools.partial(floors_report if args.command == "floors" else run_suite, settings)


def load_settings(args: argparse.Namespace, mode: Mode, rpc: Rpc, rate: float) -> LoadSettings:
    """The load of a run against `args.target`; ValueError if out of bounds."""
    return load_with(args, args.target, mode, rpc, rate)


def outcome_mix(args: argparse.Namespace) -> OutcomeMix:
    """The outcome reports asked for; ValueError if out of bounds."""
    return OutcomeMix(share=args.outcome_share, lag=args.outcome_lag, seed=args.seed)


def suite_settings(args: argparse.Namespace) -> SuiteSettings:
    """The settings of `suite` or `floors`; ValueError if out of bounds."""
    suite = args.command == "suite"
    defaults = SuiteSettings()
    return SuiteSettings(
        registry=args.registry,
        data=args.data,
        out=args.out,
        seconds=args.seconds,
        rate=args.rate,
        in_flight=args.in_flight,
        stream_rates=args.stream_rates if suite else defaults.stream_rates,
        batch_rates=args.batch_rates if suite else (),
        batch_size=args.batch_size if suite else defaults.batch_size,
        streams=args.streams,
        budget_ms=args.budget_ms if suite else defaults.budget_ms,
        saturation_start=args.start if suite else defaults.saturation_start,
        saturation_step=args.step if suite else defaults.saturation_step,
        saturation_max=args.max_rate if suite else defaults.saturation_max,
        saturation_seconds=args.step_seconds if suite else defaults.saturation_seconds,
        processes=args.processes,
        connections=args.connections,
        timeout=args.timeout,
        arrivals=args.arrivals,
        outcomes=outcome_mix(args),
        seed=args.seed,
        onnx_calls=args.onnx_calls,
        memory_days=args.memory_days if suite else 0.0,
        overload_factor=args.overload_factor if suite else defaults.overload_factor,
        overload_seconds=args.overload_seconds if suite else 0.0,
        mlserver_python=args.mlserver_python if suite else None,
        mlserver_workers=args.mlserver_workers if suite else defaults.mlserver_workers,
    )


def _run(
    args: argparse.Namespace, load: LoadSettings, mix: OutcomeMix, command_line: list[str]
) -> Report:
    from benchmarks.load.traffic import build_calls, load_history, new_run_id
    from benchmarks.measurements.load_run import measure
    from benchmarks.servers.launch import ServerProbe

    rows = args.rows
    if rows is None and load.mode == "open":
        rows = load.calls_needed()
    elif rows is None:
        rows = round(CLOSED_LOOP_ROWS_PER_SECOND * load.seconds)
    history = load_history(args.data, rows, args.skip_rows)
    calls = build_calls(history, args.run_id or new_run_id(), mix)
    probe = ServerProbe(tuple(args.server_pid), tuple(args.metrics))
    token = os.environ.get(TOKEN_VARIABLE) or None  # set but empty: none
    measurement = measure(args.name, load, calls, probe, token=token)
    return Report("run", describe_run(), command_line, _settings(args), [measurement])


def _saturate(
    args: argparse.Namespace, rates: list[float], mix: OutcomeMix, command_line: list[str]
) -> Report:
    from benchmarks.load.traffic import load_history, new_run_id
    from benchmarks.servers.launch import ServerProbe
    from benchmarks.suite import saturate_server

    rows = sum(round(rate * args.seconds) for rate in rates)
    history = load_history(args.data, rows, args.skip_rows)
    saturation = saturate_server(
        rates,
        lambda rate: load_settings(args, "open", "unary", rate),
        history,
        mix,
        ServerProbe(tuple(args.server_pid), tuple(args.metrics)),
        args.budget_ms,
        args.run_id or new_run_id(),
    )
    return Report("saturate", describe_run(), command_line, _settings(args), saturation=saturation)


def _memory(args: argparse.Namespace, command_line: list[str]) -> Report:
    from benchmarks.measurements.memory import measure_in_fresh_process

    figures = measure_in_fresh_process(args.registry, args.data, args.days)
    return Report("memory", describe_run(), command_line, _settings(args), memory=figures)


def _settings(args: argparse.Namespace) -> dict[str, object]:
    return {name: value for name, value in vars(args).items() if name != "command"}
