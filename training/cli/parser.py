"""The `fraud-train` command line: every command, its options and its help.

Each command's parser sets `handler`, the function of a `*_commands` module that runs it:
`main` calls it with the parsed arguments, and its result is the exit code.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlsplit

from service.model.registry import ALIASES, CHAMPION
from training.cli import rules_commands
from training.cli.data_commands import handle_config, handle_simulate
from training.cli.model_commands import handle_backtest, handle_evaluate, handle_train
from training.cli.options import (
    add_cluster_option,
    add_config_option,
    add_data_options,
    add_registry_option,
)
from training.cli.registry_commands import (
    handle_keys_generate,
    handle_list,
    handle_promote,
    handle_rollback,
    handle_sign,
)
from training.cli.retrain_commands import handle_logs_compact, handle_retrain
from training.cli.state_commands import StateUrl, handle_state_build


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets `handler`, the function that runs it."""
    parser = argparse.ArgumentParser(
        prog="fraud-train",
        description=(
            "Offline pipeline of the fraud-scoring service: simulate a transaction history, "
            "train, evaluate and publish versioned ONNX models to a registry, and seed the "
            "server's feature state from history."
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
    _add_logs(commands)
    _add_registry(commands)
    _add_keys(commands)
    _add_state(commands)
    _add_rules(commands)
    _add_config(commands)
    return parser


def _add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    command.add_argument(
        "--out", type=Path, required=True, help="CSV file, or .parquet, or with --daily a directory"
    )
    command.add_argument(
        "--daily",
        action="store_true",
        help="write one Parquet file per UTC day (YYYY-MM-DD.parquet) into the directory --out",
    )
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
    command.set_defaults(handler=handle_simulate)


def _add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "train",
        help="train, evaluate, export, gate and publish a model",
        description=(
            "Replay the history through the feature engine, train LightGBM on a time-ordered "
            "split, choose thresholds, export to ONNX, run the quality gates and publish the "
            "artifact; then make it the champion unless --no-promote. Prints the version."
        ),
    )
    add_data_options(command)
    add_cluster_option(command)
    add_registry_option(command)
    add_config_option(command)
    command.add_argument(
        "--no-promote", action="store_true", help="publish without moving the champion alias"
    )
    command.set_defaults(handler=handle_train)


def _add_evaluate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    add_data_options(command)
    add_registry_option(command)
    add_config_option(command)
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
    command.set_defaults(handler=handle_evaluate)


def _add_backtest(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    add_config_option(command)
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
    command.set_defaults(handler=handle_backtest)


def _add_retrain(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    command.add_argument(
        "--compact",
        action="store_true",
        help="with --watch: before each look, write the Parquet twins of the log segments "
        "closed since (as `fraud-train logs compact`; the log directories must be writable)",
    )
    add_cluster_option(
        command, "parse the log segments (and replay --history, checked as by train --dask)"
    )
    add_registry_option(command)
    add_config_option(command)
    command.set_defaults(handler=handle_retrain, usage_error=command.error)


def _add_logs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "logs",
        help="maintain the server's decision and outcome logs",
        description="Work on the server's log directories, beside the server.",
    )
    actions = command.add_subparsers(title="actions", required=True, metavar="ACTION")
    compact = actions.add_parser(
        "compact",
        help="write a Parquet twin of every closed log segment that has none",
        description=(
            "For every closed segment (its writer has opened a later one, or the UTC day it "
            "was opened ended an hour ago), write its parsed rows beside it as "
            "<segment>.parquet, written aside and renamed, 0600 like the segment. Retrain "
            "reads a twin instead of the JSON lines while the segment keeps the size the twin "
            "was made from; the server's retention deletes a twin with its segment. Run it "
            "from cron, or use retrain --watch --compact. Prints what it wrote as JSON."
        ),
    )
    compact.add_argument("--decisions", type=Path, help="the server's decision log directory")
    compact.add_argument("--outcomes", type=Path, help="the server's outcome log directory")
    compact.set_defaults(handler=handle_logs_compact, usage_error=compact.error)


def _add_registry(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    promote.add_argument("--alias", default=CHAMPION, choices=ALIASES, help=f"({CHAMPION})")
    rollback = actions.add_parser("rollback", help="move the champion back to its previous version")
    rollback.add_argument("--reason", default="rolled back by hand", help="recorded in history")
    sign = actions.add_parser(
        "sign",
        help="sign a published version's manifest",
        description=(
            "Sign VERSION's manifest (which lists every file's SHA-256) with an Ed25519 key, "
            "once its files verify: for versions published before signing was set up, and "
            "to sign every served version with a new key during a rotation. Replaces an "
            "earlier signature; the version's files do not change."
        ),
    )
    sign.add_argument("version", help="a published version")
    sign.add_argument(
        "--key",
        type=Path,
        help="private key file (default: the signing_key setting, FRAUD_TRAIN_SIGNING_KEY)",
    )
    for action, handler in (
        (listing, handle_list),
        (promote, handle_promote),
        (rollback, handle_rollback),
        (sign, handle_sign),
    ):
        add_registry_option(action)
        add_config_option(action)
        action.set_defaults(handler=handler)


def _add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "keys",
        help="generate the key pair that signs published models",
        description="Ed25519 keys for manifest signatures (docs/model-lifecycle.md).",
    )
    actions = command.add_subparsers(title="actions", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate",
        help="write a new key pair: NAME.key (private, 0600) and NAME.pub",
        description=(
            "Write a new Ed25519 key pair into --out: NAME.key, the private key that "
            "fraud-train signs with (keep it offline; FRAUD_TRAIN_SIGNING_KEY names it), and "
            "NAME.pub, the public key servers trust (models.trusted_keys). Prints the key "
            "id and the public key. Never overwrites a key."
        ),
    )
    generate.add_argument("--out", type=Path, required=True, help="directory for the two files")
    generate.add_argument(
        "--name", default="model-signing", help="file name of the pair (model-signing)"
    )
    generate.set_defaults(handler=handle_keys_generate)


def _add_state(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "state",
        help="build the feature state a new deployment starts with",
        description="The server's per-card, per-terminal and per-merchant feature state.",
    )
    actions = command.add_subparsers(title="actions", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="seed a feature state store from a history, with the champion's feature settings",
        description=(
            "Replay the history through the server's feature engine exactly as training "
            "does (each fraud label fed back one label delay after its transaction) into a "
            "new LMDB store, then publish it at --state: built in a sibling directory, "
            "synced, and renamed into place, so a server never opens a half-built store. "
            "With a Redis URL as --state, the state is replayed in memory, then written to "
            "that database in pipelined batches: no server may use it until the build ends. "
            "Card numbers are tokenised with the server's card token key "
            "(FRAUD_CARD_TOKEN_KEY, or --server-config): use the key the servers use. "
            "Stop the servers before replacing a store they have open."
        ),
    )
    add_data_options(build)
    build.add_argument(
        "--state",
        type=_state_target,
        required=True,
        help="directory to publish the store at: the servers' state.path (./state unless "
        "set); or the servers' state.url, redis://[:PASSWORD@]HOST:PORT/DB",
    )
    build.add_argument(
        "--replace",
        action="store_true",
        help="replace the store already at --state, once the new one is complete",
    )
    build.add_argument(
        "--server-config",
        type=Path,
        help="the server's TOML settings (fraud-serve --config), for its card token key and "
        "state bounds; FRAUD_* environment variables apply over it, as for the server",
    )
    add_registry_option(build)
    add_config_option(build)
    build.set_defaults(handler=handle_state_build)


def _add_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "config",
        help="print the effective configuration as JSON",
        description="Defaults, then --config FILE, then FRAUD_TRAIN_* environment variables.",
    )
    add_config_option(command)
    command.set_defaults(handler=handle_config)


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


_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def _state_target(text: str) -> Path | StateUrl:
    """A directory (an LMDB store) or a Redis URL: `--state`."""
    if "://" not in text:
        return Path(text)
    if urlsplit(text).scheme not in _REDIS_SCHEMES:  # not repeated: it may hold a password
        raise argparse.ArgumentTypeError(
            f"a URL must be a Redis one ({', '.join(sorted(_REDIS_SCHEMES))}), or give a directory"
        )
    return StateUrl(text)


def _positive_int(text: str) -> int:
    """A whole number of at least 1: `--max-checks`."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return number


def _add_rules(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "rules",
        help="allow/block lists and analyst rules beside the model (docs/rules.md)",
        description="Lists and rules decide before the model's thresholds: block lists, "
        "allow lists, decline rules, review rules, allow rules, then the model. Rule sets "
        "and lists are versioned in the registry (rules/ and lists/), followed by the "
        "servers within models.poll_seconds.",
    )
    rules = command.add_subparsers(title="rules commands", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, *, who: bool = False) -> None:
        add_registry_option(sub)
        add_config_option(sub)
        if who:
            sub.add_argument("--reason", required=True, help="why: kept in the audit trail")
            sub.add_argument("--by", help="who (default: the login name)")

    validate = rules.add_parser("validate", help="compile a rule file as the server will")
    validate.add_argument("file", type=Path, help="rule file, .toml or .json")
    validate.set_defaults(handler=rules_commands.handle_validate)

    publish = rules.add_parser(
        "publish",
        help="publish a rule file as the rules champion (or the shadow)",
        description="Backtests the set on --data first and refuses it when its decline rate "
        "is above rules_max_decline_rate, unless --force.",
    )
    publish.add_argument("file", type=Path, help="rule file, .toml or .json")
    publish.add_argument("--data", type=Path, help="history to backtest on before publishing")
    publish.add_argument("--force", action="store_true", help="publish without the backtest gate")
    publish.add_argument(
        "--shadow", action="store_true", help="publish as the challenger: counted, not deciding"
    )
    common(publish, who=True)
    publish.set_defaults(handler=rules_commands.handle_publish)

    promote = rules.add_parser("promote", help="make the shadow rule set the champion")
    common(promote, who=True)
    promote.set_defaults(handler=rules_commands.handle_promote)

    rollback = rules.add_parser("rollback", help="move the rules champion back one version")
    rollback.add_argument("--lists", action="store_true", help="roll the lists back instead")
    common(rollback, who=True)
    rollback.set_defaults(handler=rules_commands.handle_rollback)

    show = rules.add_parser("show", help="aliases, versions and the audit trail")
    show.add_argument("--last", type=int, default=10, help="history lines per kind (10)")
    common(show)
    show.set_defaults(handler=rules_commands.handle_show)

    backtest = rules.add_parser(
        "backtest", help="what a rule set would have done to a labelled history"
    )
    source = backtest.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="labelled history (CSV/Parquet)")
    source.add_argument(
        "--decisions", type=Path, help="or the server's decision log directory (with --outcomes)"
    )
    backtest.add_argument(
        "--outcomes", type=Path, help="the server's outcome log directory: the labels"
    )
    backtest.add_argument("--rules", type=Path, required=True, help="rule file, .toml or .json")
    backtest.add_argument("--json", action="store_true", help="the report as JSON")
    common(backtest)
    backtest.set_defaults(handler=rules_commands.handle_backtest)

    lists = rules.add_parser("list", help="allow and block lists")
    list_commands = lists.add_subparsers(title="list commands", required=True, metavar="ACTION")
    for action in ("add", "remove"):
        change = list_commands.add_parser(action, help=f"{action} a value")
        change.add_argument("--list", required=True, choices=("block", "allow"))
        change.add_argument(
            "--kind", required=True, choices=("card", "bin", "terminal", "merchant", "country")
        )
        change.add_argument(
            "--value", required=True, help="card token or number (tokenised), BIN, id or code"
        )
        if action == "add":
            change.add_argument("--expires", help="ISO 8601 time the entry stops counting")
        else:
            change.set_defaults(expires=None)
        common(change, who=True)
        change.set_defaults(handler=rules_commands.handle_list_change, action=action)
    show_lists = list_commands.add_parser("show", help="the lists deciding now")
    common(show_lists)
    show_lists.set_defaults(handler=rules_commands.handle_list_show)
