"""`fraud-train`: simulate histories, train and publish models, evaluate, manage the registry.

Exit codes: 0 success; 1 unexpected error; 2 bad input or usage (the message says which
file, row, column or setting); 3 a quality gate failed and nothing was published; 4 a
retrain declined to publish (no new labels, or the candidate is not better; it says why).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, NoReturn

from service.model.artifact import ArtifactError
from service.model.registry import CHALLENGER, CHAMPION, RegistryError
from training.config import ConfigError, TrainSettings, load_settings
from training.data.loading import DataError
from training.data.split import SplitError
from training.evaluation.evaluate import EvaluationError
from training.model_build.gates import GateFailure
from training.retraining.feedback import FeedbackError

EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_DECLINED = 4

_BAD_INPUT = (
    ArtifactError,
    ConfigError,
    DataError,
    EvaluationError,
    FeedbackError,
    RegistryError,
    SplitError,
    FileNotFoundError,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except GateFailure as failure:
        _error(str(failure))
        return EXIT_GATE_FAILED
    except _BAD_INPUT as error:
        _error(str(error))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraud-train",
        description=(
            "Offline pipeline of the fraud-scoring service: simulate a transaction history, "
            "train, evaluate and publish versioned ONNX models to a registry."
        ),
        epilog=(
            "Exit codes: 0 ok, 1 unexpected error, 2 bad input or usage, 3 gate failed, "
            "4 retrain declined to publish."
        ),
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_simulate(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_backtest(commands)
    _add_retrain(commands)
    _add_registry(commands)
    _add_config(commands)
    return parser


def _add_simulate(commands: Any) -> None:
    command = commands.add_parser(
        "simulate",
        help="write a seeded, simulated card-transaction history",
        description=(
            "Generate a reproducible history following the Fraud Detection Handbook's "
            "simulator (customers and terminals on a plane; three fraud scenarios), extended "
            "with merchant, MCC, entry mode, country and currency, card testing and "
            "card-not-present sprees. Same seed and options, same file."
        ),
    )
    command.add_argument("--out", type=Path, required=True, help="CSV file, or .parquet")
    command.add_argument("--days", type=int, default=183, help="days of history (183)")
    command.add_argument("--customers", type=int, default=5000, help="cards (5000)")
    command.add_argument("--terminals", type=int, default=10000, help="terminals (10000)")
    command.add_argument("--seed", type=int, default=0, help="random seed (0)")
    command.add_argument(
        "--start", type=date.fromisoformat, default=date(2018, 4, 1), help="first day (2018-04-01)"
    )
    command.add_argument(
        "--profile",
        choices=("extended", "handbook"),
        default="extended",
        help="'handbook': only the handbook's three fraud scenarios, for comparisons "
        "with its published results; 'extended' (default) adds the new patterns",
    )
    command.set_defaults(handler=_simulate)


def _add_train(commands: Any) -> None:
    command = commands.add_parser(
        "train",
        help="train, evaluate, export, gate and publish a model",
        description=(
            "Replay the history through the feature engine, train LightGBM on a time-ordered "
            "split, choose thresholds, export to ONNX, run the quality gates and publish the "
            "artifact; then make it the champion unless --no-promote. Prints the version."
        ),
    )
    _data_options(command)
    _registry_option(command)
    _config_option(command)
    command.add_argument(
        "--no-promote", action="store_true", help="publish without moving the champion alias"
    )
    command.set_defaults(handler=_train)


def _add_evaluate(commands: Any) -> None:
    command = commands.add_parser(
        "evaluate",
        help="score a history with a published model and print its metrics as JSON",
        description=(
            "Replay the file in time order (each fraud label fed back one label delay after "
            "its transaction), score every transaction after the warm-up days with the "
            "model's ONNX graph, and print auc_roc, average_precision, "
            "card_precision_at_100 and more as JSON."
        ),
    )
    _data_options(command)
    _registry_option(command)
    _config_option(command)
    command.add_argument("--version", help="model version (default: the champion)")
    command.add_argument(
        "--warmup-days",
        type=int,
        default=30,
        help="first days that only fill the feature state and are not scored (30)",
    )
    command.add_argument(
        "--scores-out", type=Path, help="write transaction_id,score for every scored row"
    )
    command.set_defaults(handler=_evaluate)


def _add_backtest(commands: Any) -> None:
    command = commands.add_parser(
        "backtest",
        help="the handbook's prequential protocol, for comparison with its published results",
        description=(
            "Train with the default model configuration on short windows and test on the "
            "window one label delay later, over several folds, exactly as the Fraud "
            "Detection Handbook's chapter 5 does; prints per-fold and mean metrics as JSON."
        ),
    )
    command.add_argument("--data", type=Path, required=True, help="history, CSV or Parquet")
    _config_option(command)
    command.add_argument(
        "--start",
        type=date.fromisoformat,
        default=date(2018, 7, 25),
        help="first training day of the earliest fold (2018-07-25, as in the handbook)",
    )
    command.add_argument("--folds", type=int, default=4, help="folds, one week apart (4)")
    command.add_argument("--train-days", type=int, default=7, help="training window (7)")
    command.add_argument("--test-days", type=int, default=7, help="test window (7)")
    command.add_argument(
        "--handbook-features",
        action="store_true",
        help="use only our equivalents of the handbook's 15 baseline features, to compare "
        "feature sets on the same data with the same learner",
    )
    command.set_defaults(handler=_backtest)


def _add_retrain(commands: Any) -> None:
    command = commands.add_parser(
        "retrain",
        help="build a candidate from the server's decision log and outcomes; publish it as "
        "challenger when it beats the champion",
        description=(
            "Label the server's logged decisions as of the newest record (a fraud report counts "
            "from its report time; silence counts as genuine once the label delay has passed), "
            "train a candidate with the same pipeline and gates as `train`, score it and the "
            "champion on the most recent labelled days, and publish it as challenger when it "
            "is better by [retrain] min_improvement. A person promotes it (`registry promote "
            "challenger`) unless [promotion] mode is automatic. --watch keeps looking at the "
            "triggers (schedule, drift, live precision) and retrains when one fires; SIGTERM "
            "or SIGINT ends it after the look under way, a second one interrupts that look."
        ),
    )
    command.add_argument(
        "--decisions", type=Path, required=True, help="the server's decision log directory"
    )
    command.add_argument(
        "--outcomes", type=Path, required=True, help="the server's outcome log directory"
    )
    command.add_argument(
        "--history", type=Path, help="also learn from this history file (CSV or Parquet)"
    )
    command.add_argument(
        "--as-of",
        type=_aware_datetime,
        help="ISO 8601 time to label as of (default: the newest record in the logs)",
    )
    command.add_argument(
        "--report", type=Path, help="also write the comparison report here, as JSON"
    )
    command.add_argument(
        "--watch", action="store_true", help="loop: retrain whenever a trigger fires"
    )
    command.add_argument(
        "--max-checks",
        type=_positive_int,
        help="with --watch: stop after this many looks (default: never)",
    )
    command.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        help="a server's /metrics address for the drift trigger and the shadow agreement "
        "(repeatable; replaces [triggers] metrics_urls)",
    )
    _registry_option(command)
    _config_option(command)
    command.set_defaults(handler=_retrain, usage_error=command.error)


def _add_registry(commands: Any) -> None:
    command = commands.add_parser(
        "registry",
        help="list versions, promote one, roll back",
        description="Inspect and move the registry's aliases; every move is recorded.",
    )
    actions = command.add_subparsers(title="actions", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="versions with their test metrics and aliases")
    promote = actions.add_parser(
        "promote", help="make VERSION (or the challenger's version) the champion"
    )
    promote.add_argument(
        "version", help="a published version, or 'challenger' for the challenger's version"
    )
    promote.add_argument("--reason", default="promoted by hand", help="recorded in history")
    promote.add_argument(
        "--alias", default="champion", choices=("champion", "challenger"), help="(champion)"
    )
    rollback = actions.add_parser("rollback", help="move the champion back to its previous version")
    rollback.add_argument("--reason", default="rolled back by hand", help="recorded in history")
    for action, handler in ((listing, _list), (promote, _promote), (rollback, _rollback)):
        _registry_option(action)
        _config_option(action)
        action.set_defaults(handler=handler)


def _add_config(commands: Any) -> None:
    command = commands.add_parser(
        "config",
        help="print the effective configuration as JSON",
        description="Defaults, then --config FILE, then FRAUD_TRAIN_* environment variables.",
    )
    _config_option(command)
    command.set_defaults(handler=_config)


def _data_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--data", type=Path, required=True, help="transaction history, CSV or Parquet"
    )
    command.add_argument(
        "--rejects",
        type=Path,
        help="write bad rows here and go on without them (default: stop at the first)",
    )


def _registry_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--registry", type=Path, help="registry directory (default ./models or the config's)"
    )


def _config_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", type=Path, help="TOML file of settings (see `config`)")


def _settings(args: argparse.Namespace) -> TrainSettings:
    return load_settings(args.config)


def _registry(args: argparse.Namespace, settings: TrainSettings) -> Path:
    return args.registry if args.registry is not None else settings.registry


def _progress() -> bool:
    return sys.stderr.isatty()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print(f"fraud-train: error: {message}", file=sys.stderr, flush=True)


def _json(value: object) -> str:
    """Strict JSON: an undefined metric (NaN, e.g. one class only) is written as null."""

    def strict(item: object) -> object:
        if isinstance(item, float) and math.isnan(item):
            return None
        if isinstance(item, dict):
            return {key: strict(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [strict(inner) for inner in item]
        return item

    return json.dumps(strict(value), indent=2, allow_nan=False)


def _simulate(args: argparse.Namespace) -> int:
    from training.simulation.history_files import write_transactions
    from training.simulation.params import SimulationParams
    from training.simulation.simulate import simulate

    params = SimulationParams(
        customers=args.customers,
        terminals=args.terminals,
        days=args.days,
        start_date=args.start,
        seed=args.seed,
        profile=args.profile,
    )
    frame = simulate(params)
    write_transactions(frame, args.out)
    frauds = int(frame["is_fraud"].sum())
    _say(f"wrote {len(frame)} transactions ({frauds} frauds) to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.model_build.pipeline import train

    settings = _settings(args)
    result = train(
        args.data,
        _registry(args, settings),
        settings,
        promote=not args.no_promote,
        rejects_path=args.rejects,
        progress=_progress(),
        say=_say,
    )
    _say(result.report)
    promoted = "champion" if result.promoted else "published, not promoted"
    _say(f"{promoted}: {result.artifact_dir}")
    print(result.manifest.version)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluation.evaluate import evaluate_history

    settings = _settings(args)
    metrics = evaluate_history(
        args.data,
        _registry(args, settings),
        version=args.version,
        warmup_days=args.warmup_days,
        scores_out=args.scores_out,
        rejects_path=args.rejects,
        alert_rate=settings.thresholds.alert_rate,
        k=settings.card_precision_k,
        progress=_progress(),
    )
    print(_json(metrics))
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from training.evaluation.backtest import HANDBOOK_FEATURES, BacktestWindows, run_backtest

    windows = BacktestWindows(
        earliest_start=args.start,
        folds=args.folds,
        train_days=args.train_days,
        test_days=args.test_days,
    )
    if args.handbook_features:
        windows = replace(windows, features=HANDBOOK_FEATURES)
    result = run_backtest(args.data, _settings(args), windows, progress=_progress(), say=_say)
    print(_json(result))
    return 0


def _retrain(args: argparse.Namespace) -> int:
    _check_retrain_arguments(args)
    settings = _settings(args)
    if args.metrics_url:
        triggers = settings.triggers.model_copy(update={"metrics_urls": args.metrics_url})
        settings = settings.model_copy(update={"triggers": triggers})
    root = _registry(args, settings)
    if args.watch:
        return _watch(args, settings, root)
    return _retrain_once(args, settings, root)


def _check_retrain_arguments(args: argparse.Namespace) -> None:
    """Usage errors (exit 2) found before any work: options that do not go together, and a
    report that could not be written once the retrain has published."""
    usage_error: Callable[[str], NoReturn] = args.usage_error
    if args.watch:
        for option, value in (("--as-of", args.as_of), ("--report", args.report)):
            if value is not None:
                usage_error(f"{option} cannot be combined with --watch: it applies to one retrain")
    elif args.max_checks is not None:
        usage_error("--max-checks only applies with --watch")
    if args.report is not None:
        directory = args.report.parent
        if not directory.is_dir():
            usage_error(f"--report: directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            usage_error(f"--report: directory {directory} is not writable")


def _watch(args: argparse.Namespace, settings: TrainSettings, root: Path) -> int:
    from training.retraining.watch import watch

    stop = threading.Event()
    with _stopped_by_signals(stop):
        published = watch(
            root,
            args.decisions,
            args.outcomes,
            settings,
            history=args.history,
            max_checks=args.max_checks,
            say=_say,
            stop=stop,
        )
    _say(f"watch stopped: {published} challenger(s) published")
    return 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """The first SIGTERM or SIGINT sets `stop`: the loop ends after the look under way. Any
    later one raises KeyboardInterrupt at once (exit 130), for a person who will not wait
    for a long retrain to finish. The handlers in place before are restored on the way out."""

    def stop_then_interrupt(_signum: int, _frame: object) -> None:
        stop.set()
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.default_int_handler)

    previous = {signum: signal.signal(signum, stop_then_interrupt) for signum in _STOP_SIGNALS}
    _say("watching: SIGTERM or SIGINT stops after the look under way; a second one interrupts it")
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _retrain_once(args: argparse.Namespace, settings: TrainSettings, root: Path) -> int:
    from training.retraining.retrain import retrain

    result = retrain(
        root,
        args.decisions,
        args.outcomes,
        settings,
        history=args.history,
        as_of=args.as_of,
        trigger="requested by hand",
        say=_say,
    )
    _say(result.table)
    if args.report is not None:
        _write_report(args.report, result.report)
    if not result.published:
        _error(f"nothing published: {result.reason}")
        return EXIT_DECLINED
    _say(f"challenger is now {result.version}: {result.reason}")
    print(result.version)
    return 0


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the retrain's report; a failure only warns, since the retrain is done (and a
    published challenger keeps the report in its artifact)."""
    try:
        path.write_text(_json(report) + "\n", encoding="utf-8")
    except OSError as error:
        _say(f"fraud-train: warning: report not written to {path}: {error}")


def _aware_datetime(text: str) -> datetime:
    """An ISO 8601 time with a zone: `--as-of`."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2026-09-01T00:00Z"
        ) from None
    if moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. 2026-09-01T00:00Z")
    return moment


def _positive_int(text: str) -> int:
    """A whole number of at least 1: `--max-checks`."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return number


def _list(args: argparse.Namespace) -> int:
    from training.registry.publishing import format_versions, list_versions

    print(format_versions(list_versions(_registry(args, _settings(args)))))
    return 0


def _promote(args: argparse.Namespace) -> int:
    from training.registry.publishing import promote, promote_challenger

    root = _registry(args, _settings(args))
    if args.version == CHALLENGER:
        if args.alias != CHAMPION:
            raise RegistryError("only the champion can take the challenger's version")
        version = promote_challenger(root, reason=args.reason)
    else:
        version = args.version
        promote(root, version, alias=args.alias, reason=args.reason)
    _say(f"{args.alias} is now {version}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from training.registry.publishing import rollback

    version = rollback(_registry(args, _settings(args)), reason=args.reason)
    _say(f"champion rolled back to {version}")
    print(version)
    return 0


def _config(args: argparse.Namespace) -> int:
    print(_settings(args).model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
