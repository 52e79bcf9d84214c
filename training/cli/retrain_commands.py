"""`fraud-train retrain`: a candidate built from the server's logs, once or whenever a
trigger fires (`--watch`).

Handlers import their pipeline when they run, so that `--help` and the light commands do
not load what only the heavy ones use.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from training.cli.console import EXIT_DECLINED, error, say, show_progress, to_json
from training.cli.options import registry_from, settings_from
from training.config import TrainSettings

if TYPE_CHECKING:
    from service.records.schema import RecordKind
    from training.data.cluster_spec import ClusterSpec
    from training.retraining.log_compaction import Compaction
    from training.retraining.log_reading import LogReading

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def handle_retrain(args: argparse.Namespace) -> int:
    """Retrain once, or watch the triggers and retrain whenever one fires (`--watch`)."""
    _check_retrain_arguments(args)
    settings = settings_from(args)
    if args.metrics_url:
        triggers = settings.triggers.model_copy(update={"metrics_urls": args.metrics_url})
        settings = settings.model_copy(update={"triggers": triggers})
    root = registry_from(args, settings)
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
    else:
        for option, given in (
            ("--max-checks", args.max_checks is not None),
            ("--compact", args.compact),
        ):
            if given:
                usage_error(f"{option} only applies with --watch")
    if args.report is not None:
        directory = args.report.parent
        if not directory.is_dir():
            usage_error(f"--report: directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            usage_error(f"--report: directory {directory} is not writable")


def _watch(args: argparse.Namespace, settings: TrainSettings, root: Path) -> int:
    from training.retraining.watch import watch

    stop = threading.Event()
    with _stopped_by_signals(stop), _log_reading(args.dask) as reading:
        published = watch(
            root,
            args.decisions,
            args.outcomes,
            settings,
            history=args.history,
            max_checks=args.max_checks,
            say=say,
            stop=stop,
            reading=reading,
            compact=args.compact,
        )
    say(f"watch stopped: {published} challenger(s) published")
    return 0


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
    say("watching: SIGTERM or SIGINT stops after the look under way; a second one interrupts it")
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _retrain_once(args: argparse.Namespace, settings: TrainSettings, root: Path) -> int:
    from training.retraining.retrain import retrain

    with _log_reading(args.dask) as reading:
        result = retrain(
            root,
            args.decisions,
            args.outcomes,
            settings,
            history=args.history,
            as_of=args.as_of,
            trigger="requested by hand",
            say=say,
            reading=reading,
        )
    say(result.table)
    if args.report is not None:
        _write_report(args.report, result.report)
    if not result.published:
        error(f"nothing published: {result.reason}")
        return EXIT_DECLINED
    say(f"challenger is now {result.version}: {result.reason}")
    print(result.version)
    return 0


@contextmanager
def _log_reading(cluster: ClusterSpec | None) -> Iterator[LogReading]:
    """Logs read in this process, or on the cluster `--dask` names for as long as the block
    runs (a local cluster stops with it)."""
    from training.retraining.log_reading import IN_PROCESS

    if cluster is None:
        yield IN_PROCESS
        return
    from training.data.cluster import describe_cluster, open_client
    from training.retraining.cluster_logs import reading_on_cluster

    with open_client(cluster) as client:
        say(describe_cluster(client))
        yield reading_on_cluster(client, progress=show_progress())


def handle_logs_compact(args: argparse.Namespace) -> int:
    """Write the Parquet twins of the closed segments; print what was done as JSON."""
    from service.features import FEATURES
    from training.retraining.log_compaction import compact

    usage_error: Callable[[str], NoReturn] = args.usage_error
    if args.decisions is None and args.outcomes is None:
        usage_error("give --decisions, --outcomes or both")
    directories: dict[RecordKind, Path | None] = {
        "decisions": args.decisions,
        "outcomes": args.outcomes,
    }
    done = []
    for kind, directory in directories.items():
        if directory is not None:
            compaction = compact(directory, kind, feature_count=len(FEATURES))
            say(compaction.summary())
            done.append(compaction)
    print(to_json({c.kind: _compaction_json(c) for c in done}))
    return 0


def _compaction_json(done: Compaction) -> dict[str, Any]:
    return {
        "written": done.written,
        "already_current": done.already_current,
        "still_open": done.still_open,
        "source_bytes": done.source_bytes,
        "twin_bytes": done.twin_bytes,
        "seconds": round(done.seconds, 3),
    }


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the retrain's report; a failure only warns, since the retrain is done (and a
    published challenger keeps the report in its artifact)."""
    try:
        path.write_text(to_json(report) + "\n", encoding="utf-8")
    except OSError as failure:
        say(f"fraud-train: warning: report not written to {path}: {failure}")
