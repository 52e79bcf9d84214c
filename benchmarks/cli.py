"""`fraud-bench`: the load-test harness of the fraud-scoring server.

    fraud-bench run       one measurement against a running server (--target)
    fraud-bench saturate  the highest open-loop rate a running server holds in a p99 budget
    fraud-bench floors    ONNX inference alone, and the empty and ONNX floor servers
    fraud-bench memory    feature-state memory for 30 days of history, in a fresh process
    fraud-bench suite     all of the above against servers it starts itself
    fraud-bench fuzz      generated and mutated calls across every RPC, judged by criteria
    fraud-bench reloads   champion promotions under load, judged by criteria
    fraud-bench chaos     faults injected under load (kill, store, disk, registry, overload)
    fraud-bench soak      a long open loop with promotions and SIGHUPs, judged by criteria

Every command writes `report.json` and PNG charts into `--out DIR` and prints a table.
Load goes to 127.0.0.1 only, and every run is bounded in time and calls. Exit status 0
on success, 1 when a measurement fails (a server that will not start or stop, a client
that fails, unreadable data) or, for fuzz, reloads, chaos and soak, when a criterion
fails, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks import commands
from benchmarks.faults import commands as fault_commands
from benchmarks.faults.report import FaultReport, render_criteria, write_report
from benchmarks.load.settings import ARRIVALS, LOCAL_HOST, MODES, RPCS
from benchmarks.reporting.report import Report, render_table, write_json
from benchmarks.suite_settings import SuiteSettings
from benchmarks.suite_settings import __doc__ as suite_doc
from service.named_errors import imported_errors

_DEFAULTS = SuiteSettings()
_RUN = """\
Open loop (--mode open): calls sent on a fixed schedule (--rate, --arrivals), latency
measured from each call's due time. Closed loop (--mode closed): --in-flight calls kept in
flight, latency from each send. With --server-pid, the server's CPU per answer (its whole
process tree); with --metrics, its own latency histogram. A server with callers configured
(auth.callers): put a caller's token in FRAUD_BENCH_TOKEN, and every call carries it (kept
off the command line and out of the report)."""
# What a measurement can fail with, short of a bug: reported in a line, exit status 1.
# The harness's and the server's own errors are named, not imported (service.named_errors
# says why).
FAILURES = (
    "benchmarks.servers.launch:ServerError",
    "benchmarks.load.client_pool:ClientError",
    "service.model.registry:RegistryError",
    "service.model.artifact:ArtifactError",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `fraud-bench` command; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    command_line = ["fraud-bench", *arguments]
    try:
        prepared = commands.prepare(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        report = prepared(command_line)
        if isinstance(report, FaultReport):
            return _write_judged(report, args.out)
        _write(report, args.out)
    except failures() as error:
        print(f"fraud-bench: error: {error}", file=sys.stderr)
        return 1
    return 0


def failures() -> tuple[type[Exception], ...]:
    """The errors of `FAILURES` whose modules are imported, with ValueError, OSError and
    RuntimeError."""
    return (*imported_errors(FAILURES), ValueError, OSError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    """The command line of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fraud-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = _subcommand(subcommands, "run", "one measurement against a running server", _RUN)
    _target(run)
    run.add_argument("--mode", choices=MODES, default="open", help="open or closed loop")
    run.add_argument(
        "--rpc", choices=RPCS, default="unary", help="unary Score, ScoreStream or ScoreBatch"
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="--rpc batch: transactions per ScoreBatch call; --rate stays per transaction",
    )
    _rate(run)
    run.add_argument(
        "--rows", type=int, help="history rows to load (by default, what the run needs)"
    )
    run.add_argument("--name", default="run", help="the measurement's name in the report")
    _load(run, _DEFAULTS.seconds)
    _traffic(run, fixed=True)
    saturate = _subcommand(subcommands, "saturate", "highest open-loop rate held in a p99 budget")
    _target(saturate)
    _saturation(saturate)
    _load(saturate, _DEFAULTS.saturation_seconds)
    _traffic(saturate, fixed=True)
    floors = _subcommand(subcommands, "floors", "ONNX inference alone; empty and ONNX floors")
    _registry(floors)
    _rate(floors)
    _onnx_calls(floors)
    _load(floors, _DEFAULTS.seconds)
    _traffic(floors, fixed=False)
    memory = _subcommand(subcommands, "memory", "feature-state memory per card")
    _registry(memory)
    memory.add_argument("--days", type=float, default=_DEFAULTS.memory_days, help="of history")
    suite = _subcommand(
        subcommands, "suite", "everything, against servers it starts itself", suite_doc or ""
    )
    _registry(suite)
    _suite(suite)
    _saturation(suite)
    _load(suite, _DEFAULTS.seconds)
    _traffic(suite, fixed=False)
    fault_commands.add_parsers(subcommands, _subcommand, _registry)
    return parser


def _subcommand(
    subcommands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    details: str = "",
) -> argparse.ArgumentParser:
    return subcommands.add_parser(
        name,
        help=summary,
        description=f"fraud-bench {name}: {summary}.\n\n{details}".rstrip(),
        formatter_class=_Help,
    )


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; each option's default shown, unless it has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        required=True,
        help=f"the server, {LOCAL_HOST}:PORT; several replicas' addresses comma-separated "
        "(calls balanced one by one, round_robin)",
    )
    parser.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="its process id, for its CPU per call (once per replica)",
    )
    parser.add_argument(
        "--metrics",
        action="append",
        default=[],
        type=_local_url,
        help="its metrics URL, for its own latency figures (once per worker)",
    )
    _files(parser)


def _registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", type=Path, default=_DEFAULTS.registry, help="model registry with a champion"
    )
    _files(parser)


def _files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument(
        "--data", type=Path, default=_DEFAULTS.data, help="history CSV (fraud-train simulate)"
    )


def _rate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", type=float, default=_DEFAULTS.rate, help="open loop: calls per second"
    )


def _load(parser: argparse.ArgumentParser, seconds: float) -> None:
    group = parser.add_argument_group("load")
    group.add_argument("--seconds", type=float, default=seconds, help="length of a measurement")
    group.add_argument("--arrivals", choices=ARRIVALS, default="constant", help="open loop")
    group.add_argument(
        "--in-flight",
        type=int,
        default=_DEFAULTS.in_flight,
        help="closed loop: calls in flight, all processes together",
    )
    group.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        help="open loop: most unary calls in flight per process",
    )
    group.add_argument(
        "--processes", type=int, default=_DEFAULTS.processes, help="client processes"
    )
    group.add_argument(
        "--connections", type=int, default=_DEFAULTS.connections, help="TCP connections per process"
    )
    group.add_argument(
        "--streams", type=int, default=_DEFAULTS.streams, help="ScoreStream calls per process"
    )
    group.add_argument(
        "--timeout", type=float, default=_DEFAULTS.timeout, help="deadline of a call, seconds"
    )
    group.add_argument("--seed", type=int, default=0, help="for Poisson arrivals and outcomes")


def _traffic(parser: argparse.ArgumentParser, *, fixed: bool) -> None:
    """Traffic options; `fixed`: the user may fix the run id and the first row."""
    group = parser.add_argument_group("traffic")
    if fixed:
        group.add_argument("--run-id", help="transaction-id prefix (by default, a random one)")
        group.add_argument("--skip-rows", type=int, default=0, help="history rows to skip")
    group.add_argument(
        "--outcome-share",
        type=float,
        default=_DEFAULTS.outcomes.share,
        help="share of frauds whose outcome is reported (ReportOutcome)",
    )
    group.add_argument(
        "--outcome-lag",
        type=int,
        default=_DEFAULTS.outcomes.lag,
        help="calls between a fraud's swipe and its outcome report",
    )


def _saturation(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("saturation search")
    group.add_argument(
        "--budget-ms", type=float, default=_DEFAULTS.budget_ms, help="p99 budget, ms"
    )
    group.add_argument(
        "--start", type=float, default=_DEFAULTS.saturation_start, help="first rate, calls/s"
    )
    group.add_argument(
        "--step", type=float, default=_DEFAULTS.saturation_step, help="rate step, calls/s"
    )
    group.add_argument(
        "--max-rate", type=float, default=_DEFAULTS.saturation_max, help="last rate, calls/s"
    )


def _onnx_calls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--onnx-calls",
        type=int,
        default=_DEFAULTS.onnx_calls,
        help="single-row inferences timed for the ONNX-alone floor",
    )


def _suite(parser: argparse.ArgumentParser) -> None:
    _rate(parser)
    _onnx_calls(parser)
    group = parser.add_argument_group("suite")
    group.add_argument(
        "--stream-rates",
        type=_rates,
        default=_DEFAULTS.stream_rates,
        help="open loops on ScoreStream: transactions per second, comma-separated",
    )
    group.add_argument(
        "--batch-rates",
        type=_rates,
        default=_DEFAULTS.batch_rates,
        help="open loops on ScoreBatch: transactions per second, comma-separated ('' for none)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=_DEFAULTS.batch_size,
        help="transactions per ScoreBatch call",
    )
    group.add_argument(
        "--step-seconds",
        type=float,
        default=_DEFAULTS.saturation_seconds,
        help="length of a saturation step",
    )
    group.add_argument(
        "--memory-days",
        type=float,
        default=_DEFAULTS.memory_days,
        help="days of history for the memory measurement; 0 skips it",
    )
    group.add_argument(
        "--overload-factor",
        type=float,
        default=_DEFAULTS.overload_factor,
        help="overload: this many times the saturation found",
    )
    group.add_argument(
        "--overload-seconds",
        type=float,
        default=_DEFAULTS.overload_seconds,
        help="overload: its length, between two --seconds at half the saturation; 0 skips it",
    )
    peer = parser.add_argument_group("MLServer (optional, not a dependency)")
    peer.add_argument(
        "--mlserver-python",
        type=Path,
        help="the Python of an environment with mlserver and mlserver-lightgbm: adds rows "
        "against MLServer serving the champion's LightGBM model",
    )
    peer.add_argument(
        "--mlserver-workers",
        type=int,
        default=_DEFAULTS.mlserver_workers,
        help="MLServer's parallel_workers (0: inference in its server process; 1 or more "
        "need uvloop<0.22 beside mlserver 1.7)",
    )


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(rate) for rate in text.split(",") if rate.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not rates separated by commas: {text!r}") from None


def _local_url(text: str) -> str:
    if urlsplit(text).hostname != LOCAL_HOST:
        raise argparse.ArgumentTypeError(f"must be on {LOCAL_HOST}: {text!r}")
    return text


def _write_judged(report: FaultReport, directory: Path) -> int:
    paths = write_report(report, directory)
    print(render_criteria(report), end="")
    print(f"fraud-bench: wrote {paths[0]} and {len(paths) - 1} charts", file=sys.stderr)
    return 0 if report.passed else 1


def _write(report: Report, directory: Path) -> None:
    # Imported here, the one use: the charts bring matplotlib, most of a second to import.
    from benchmarks.reporting.charts import write_charts

    path = write_json(report, directory)
    charts = write_charts(report, directory)
    print(render_table(report), end="")
    print(f"fraud-bench: wrote {path} and {len(charts)} charts", file=sys.stderr)
