"""The command lines of `fraud-bench fuzz`, `reloads`, `chaos` and `soak`, and what each
runs once its arguments are checked (a ValueError is a usage error, exit status 2).

A command's module is imported once that command is asked for: each brings grpc, numpy,
psutil and servers' machinery that no parser, nor any other command, needs."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.faults.chaos_scenarios import SCENARIOS
from benchmarks.faults.report import FaultReport
from benchmarks.probes.machine import describe_run

COMMANDS = ("fuzz", "reloads", "chaos", "soak")
_FUZZ = """\
Cases drawn from --seed: structured requests with hostile field values, and raw byte
mutations of valid messages, across Score, ScoreStream, ScoreBatch, ReportOutcome,
GetModelInfo, the admin service (token right, wrong or missing), health and an unknown
method. Judged: no crash, only documented status codes, every score in [0, 1], nothing
logged at level error, healthy after, RSS flat. Exit status 1 when a criterion fails."""
_RELOADS = """\
An open loop of unary Score at --rate against one fraud-serve (registry polled every
0.1 s) on a copy of --registry, while the champion and a republished copy of it are
promoted in turn every --every seconds, --promotions times. Judged: no failed call, RSS
growth, no answer from the old version once the new one has answered."""
_CHAOS = """\
Each scenario against servers started for it, under an open loop at --rate: kill (SIGKILL
and restart on the same state), store (Redis killed for --store-outage s), disk (the
decision log's file system full, in a user and mount namespace), registry (unreadable for
--registry-outage s), overload (--overload-factor x the measured saturation for
--overload-seconds), rolling (three replicas on one Redis behind the recommended balanced
channel, each in turn stopped with SIGTERM and started again, at half the saturation; every
answer compared with an uninterrupted server's). Criteria per scenario in the report."""
_SOAK = """\
An open loop at --load-share of the measured saturation (or --rate), unary and ScoreStream
mixed, with fraud outcomes, a promotion every --promote-every s and a SIGHUP every
--sighup-every s, the decision log on. Judged: no failed call, p99 of the last third within
1.2x the first third's, RSS slope after the first minute, records written = calls answered,
the state store's size."""


def add_parsers(
    subcommands: argparse._SubParsersAction[argparse.ArgumentParser],
    subcommand: Callable[..., argparse.ArgumentParser],
    registry: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The four subcommands, with `fraud-bench`'s shared --registry, --data and --out."""
    fuzz = subcommand(subcommands, "fuzz", "generated calls across every RPC", _FUZZ)
    registry(fuzz)
    fuzz.add_argument("--count", type=int, default=100_000, help="cases sent")
    fuzz.add_argument("--concurrency", type=int, default=16, help="cases in flight")
    fuzz.add_argument("--seed", type=int, default=0, help="of the cases")
    reloads = subcommand(subcommands, "reloads", "promotions under load", _RELOADS)
    registry(reloads)
    reloads.add_argument("--promotions", type=int, default=200, help="promotions made")
    reloads.add_argument("--every", type=float, default=1.0, help="seconds between promotions")
    reloads.add_argument("--rate", type=float, default=300.0, help="Score calls per second")
    chaos = subcommand(subcommands, "chaos", "faults under load", _CHAOS)
    registry(chaos)
    chaos.add_argument(
        "--scenario", nargs="+", choices=(*SCENARIOS, "all"), default=["all"], help="one or more"
    )
    chaos.add_argument("--rate", type=float, default=300.0, help="calls per second")
    chaos.add_argument("--seconds", type=float, default=10.0, help="load before and after a fault")
    chaos.add_argument("--store-outage", type=float, default=10.0, help="seconds")
    chaos.add_argument("--registry-outage", type=float, default=30.0, help="seconds")
    chaos.add_argument("--overload-seconds", type=float, default=30.0, help="seconds")
    chaos.add_argument("--overload-factor", type=float, default=3.0, help="x saturation")
    chaos.add_argument(
        "--saturation", type=float, help="calls/s the server holds (by default, measured)"
    )
    soak = subcommand(subcommands, "soak", "a long run with reloads", _SOAK)
    registry(soak)
    soak.add_argument("--minutes", type=float, default=15.0, help="length of the soak")
    soak.add_argument(
        "--rate", type=float, help="calls per second (default: a share of saturation)"
    )
    soak.add_argument("--load-share", type=float, default=0.6, help="of the saturation rate")
    soak.add_argument("--promote-every", type=float, default=30.0, help="seconds")
    soak.add_argument("--sighup-every", type=float, default=60.0, help="seconds")
    soak.add_argument("--sample-every", type=float, default=5.0, help="RSS sample, seconds")


def prepare(args: argparse.Namespace) -> Callable[[list[str]], FaultReport]:
    """The command `args` asks for; ValueError if its arguments do not fit."""
    common: dict[str, Any] = {"registry": args.registry, "data": args.data, "out": args.out}
    run: Callable[[], list[Any]]
    if args.command == "fuzz":
        from benchmarks.faults.fuzzing import FuzzSettings, run_fuzz

        fuzz = FuzzSettings(
            **common, count=args.count, concurrency=args.concurrency, seed=args.seed
        )
        run = lambda: [run_fuzz(fuzz)]  # noqa: E731
        settings: object = fuzz
    elif args.command == "reloads":
        from benchmarks.faults.reloads import ReloadSettings, run_reloads

        settings = ReloadSettings(
            **common, promotions=args.promotions, every=args.every, rate=args.rate
        )
        run = functools.partial(run_reloads, settings)
    elif args.command == "chaos":
        from benchmarks.faults.chaos import ChaosSettings, run_chaos

        settings = ChaosSettings(
            **common,
            scenarios=SCENARIOS if "all" in args.scenario else tuple(dict.fromkeys(args.scenario)),
            rate=args.rate,
            seconds=args.seconds,
            store_outage=args.store_outage,
            registry_outage=args.registry_outage,
            overload_seconds=args.overload_seconds,
            overload_factor=args.overload_factor,
            saturation=args.saturation,
        )
        run = functools.partial(run_chaos, settings)
    else:
        from benchmarks.faults.soak import SoakSettings, run_soak

        settings = SoakSettings(
            **common,
            minutes=args.minutes,
            rate=args.rate,
            load_share=args.load_share,
            promote_every=args.promote_every,
            sighup_every=args.sighup_every,
            sample_every=args.sample_every,
        )
        run = functools.partial(run_soak, settings)
    return functools.partial(_judged, args.command, settings, run)


def _judged(
    command: str, settings: object, run: Callable[[], list[Any]], command_line: list[str]
) -> FaultReport:
    run_description = describe_run()
    scenarios = run()
    after = describe_run()
    run_description["load_average_1m_after"] = after["load_average_1m"]
    shown = {
        name: str(value) if isinstance(value, Path) else value
        for name, value in vars(settings).items()
    }
    return FaultReport(command, run_description, command_line, shown, scenarios)
