"""The options several `fraud-train` commands share, added to a command and read back here.

Settings come from defaults, then `--config FILE`, then FRAUD_TRAIN_* environment
variables; `--registry` overrides the settings' registry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import TrainSettings, load_settings
from training.data.cluster_spec import ClusterSpec, parse_cluster


def add_data_options(command: argparse.ArgumentParser) -> None:
    """`--data` (required) and `--rejects`: the history a command reads."""
    command.add_argument(
        "--data",
        type=Path,
        required=True,
        help="transaction history: a CSV or Parquet file, a directory of Parquet files, or "
        "a quoted glob of files (each checked on its own, bad rows named by file and row)",
    )
    command.add_argument(
        "--rejects",
        type=Path,
        help="write bad rows here and go on without them (default: stop at the first)",
    )


_CLUSTER_WORK = "replay (and, when the feature matrix does not fit one worker, fit)"


def add_cluster_option(command: argparse.ArgumentParser, work: str = _CLUSTER_WORK) -> None:
    """`--dask`: the Dask cluster a command runs its `work` on (by default the replay and a
    large fit)."""
    command.add_argument(
        "--dask",
        type=_cluster,
        metavar="ADDRESS|local[:N]",
        help=f"{work} on a Dask cluster: a scheduler's address, or local[:N] for N worker "
        "processes on this machine on 127.0.0.1 (default: one process, no Dask)",
    )


def add_registry_option(command: argparse.ArgumentParser) -> None:
    """`--registry`: the registry a command reads or publishes to."""
    command.add_argument(
        "--registry", type=Path, help="registry directory (default ./models or the config's)"
    )


def add_config_option(command: argparse.ArgumentParser) -> None:
    """`--config`: the TOML file of settings."""
    command.add_argument("--config", type=Path, help="TOML file of settings (see `config`)")


def settings_from(args: argparse.Namespace) -> TrainSettings:
    """The effective settings of a command with `--config`."""
    return load_settings(args.config)


def registry_from(args: argparse.Namespace, settings: TrainSettings) -> Path:
    """The registry `--registry` names, or else the settings' registry."""
    return args.registry if args.registry is not None else settings.registry


def _cluster(text: str) -> ClusterSpec:
    try:
        return parse_cluster(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
