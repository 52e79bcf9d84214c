"""`fraud-serve` (also `python -m service`): the composition root of the scoring server.

    settings → logs → metrics endpoint → champion's feature config → feature engine
    → decision and outcome logs → scorer → health NOT_SERVING → server started
    → champion (and challenger) loaded and warmed up → SERVING
    → the registry followed: a look every `models.poll_seconds`, and one on SIGHUP
      (`service.model.watcher`); a promotion or rollback swaps the model in place
    → SIGTERM or SIGINT → NOT_SERVING at once, calls in progress finish within the grace
    → decision and outcome logs drained and closed

The port opens before the model is loaded, so probes get an answer (NOT_SERVING) while it
warms up; scoring calls in that window get the fallback decision ("model_unavailable").
The server never reports SERVING without a verified model: without a champion, or with one
that fails its checks, it exits.

Exit status: 0 after a graceful shutdown, 1 when the server cannot start or serve (no
champion, a refused model, a port in use), 2 for bad arguments or configuration.

With `--workers N` above 1 this process only supervises N worker processes that each run
the whole server on the same port (see `service.grpc_api.server` for what that gives up);
worker i serves its metrics on the metrics port + i, and SIGTERM and SIGHUP are passed on to
every one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import TypeVar

import prometheus_client
import structlog
from pydantic import ValidationError

from service.config.settings import (
    ConfigError,
    RecordLogSettings,
    ServerSettings,
    ServeSettings,
    load_settings,
)
from service.core.card_tokens import CardTokenizer
from service.core.scoring import (
    DecisionSink,
    DriftSink,
    FallbackPolicy,
    ModelSource,
    OutcomeSink,
    Scorer,
    ShadowSink,
)
from service.core.validation import ScoringLimits
from service.features import FeatureConfig, FeatureEngine
from service.grpc_api.server import (
    BindError,
    HealthServicer,
    build_server,
    create_health,
    set_serving,
    shut_down,
)
from service.model.artifact import ArtifactError, read_manifest
from service.model.registry import CHAMPION, Registry, RegistryError, no_champion
from service.model.shadow import ShadowScorer
from service.model.store import LoadedModel, ModelStore
from service.model.watcher import ModelWatcher
from service.observability.drift import DriftCollector
from service.observability.gc_policy import configure_garbage_collection
from service.observability.logs import RequestLogSampler, configure_logging
from service.observability.metrics import start_metrics_server, track_feature_state
from service.records.decision_writer import DecisionLog
from service.records.outcome_writer import OutcomeLog
from service.records.segment_log import LogLimits

_log = structlog.get_logger("service")
_LogT = TypeVar("_LogT")

_EPILOG = """\
Every setting can also come from the environment (FRAUD_ prefix, "__" between nested
names, e.g. FRAUD_SERVER__MAX_IN_FLIGHT=512) or from the --config file; flags override both,
and the environment overrides the file. Set FRAUD_CARD_TOKEN_KEY in production.
Exit status: 0 after a graceful shutdown (SIGTERM, SIGINT), 1 when the server cannot start,
2 for bad arguments or configuration.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scoring server until SIGTERM or SIGINT; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    settings = parse_settings(arguments)
    configure_logging(settings.logging)
    if settings.server.workers > 1:
        return _supervise(arguments, settings.server.workers)
    return _run(settings, settings.server.metrics_port)


def parse_settings(arguments: Sequence[str]) -> ServeSettings:
    """The settings for a `fraud-serve` command line: its flags over the environment over
    the `--config` file. Exits with status 2 and the reason on a bad argument or setting.
    """
    parser = _parser()
    try:
        return _settings(parser.parse_args(arguments))
    except ConfigError as error:
        parser.error(str(error))


def build_scorer(
    settings: ServeSettings,
    engine: FeatureEngine,
    store: ModelSource,
    *,
    outcome_sink: OutcomeSink | None = None,
    shadow: ShadowSink | None = None,
    drift: DriftSink | None = None,
    decisions: DecisionSink | None = None,
) -> Scorer:
    """The scoring core over `engine`'s state and `store`'s model, configured by `settings`;
    accepted outcomes also go to `outcome_sink`, decided transactions to `shadow` and
    `drift`, answers to `decisions`."""
    limits = settings.limits
    return Scorer(
        engine,
        store,
        tokenizer=CardTokenizer(settings.card_token_key.get_secret_value().encode()),
        limits=ScoringLimits(
            max_string_length=limits.max_string_length,
            max_amount_minor=limits.max_amount_minor,
            max_future_skew_seconds=limits.max_future_skew_seconds,
        ),
        fallback=FallbackPolicy(settings.fallback.policy, settings.fallback.approve_below_minor),
        outcome_sink=outcome_sink,
        shadow=shadow,
        drift=drift,
        decisions=decisions,
    )


async def load_and_serve(watcher: ModelWatcher, health: HealthServicer) -> LoadedModel:
    """Load and warm up the champion (and any challenger) off the event loop, then report
    SERVING.

    RegistryError when there is no champion fit to serve; health stays NOT_SERVING then.
    """
    await watcher.refresh()
    store = watcher.store
    model = store.current
    if model is None:
        refused = [refusal.detail for refusal in store.refusals if refusal.alias == CHAMPION]
        raise RegistryError(refused[0]) if refused else no_champion(store.registry.root)
    await set_serving(health)
    return model


def _parser() -> argparse.ArgumentParser:
    defaults = {name: field.default for name, field in ServerSettings.model_fields.items()}
    registry = ServeSettings.model_fields["registry"].default
    parser = argparse.ArgumentParser(
        prog="fraud-serve",
        description="Serve real-time card fraud scores over gRPC with the registry's champion.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    parser.add_argument(
        "--registry", type=Path, metavar="DIR", help=f"model registry (default: {registry})"
    )
    parser.add_argument(
        "--host",
        metavar="HOST",
        help=f"interface of the scoring and metrics ports (default: {defaults['host']}: all)",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        help=f"gRPC scoring port; 0 picks a free one (default: {defaults['port']})",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help=f"Prometheus /metrics port; 0 picks a free one (default: {defaults['metrics_port']})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing the scoring port; each keeps its own feature state, so "
        f"only 1 keeps every card's features exact (default: {defaults['workers']})",
    )
    return parser


def _settings(args: argparse.Namespace) -> ServeSettings:
    """The settings from the environment and file, with the command line's flags on top."""
    settings = load_settings(args.config)
    flags = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "workers": args.workers,
    }
    server_flags = {name: value for name, value in flags.items() if value is not None}
    try:
        server = ServerSettings.model_validate(settings.server.model_dump() | server_flags)
    except ValidationError as error:
        problems = "; ".join(f"{item['loc'][0]}: {item['msg']}" for item in error.errors())
        raise ConfigError(f"invalid option ({problems})") from None
    if server.workers > 1 and server.port == 0:
        raise ConfigError("several workers need a fixed port to share, not port 0")
    registry = settings.registry if args.registry is None else args.registry
    return settings.model_copy(update={"server": server, "registry": registry})


def _run(settings: ServeSettings, metrics_port: int) -> int:
    _log.info("starting", settings=settings.describe())
    configure_garbage_collection(full_collections=settings.server.full_gc)
    if settings.uses_development_card_token_key:
        _log.warning(
            "development_card_token_key",
            advice="card numbers sent as card_id are hashed with a public key: "
            "set FRAUD_CARD_TOKEN_KEY",
        )
    return asyncio.run(_serve(settings, metrics_port))


async def _serve(settings: ServeSettings, metrics_port: int) -> int:
    try:
        feature_config = _champion_feature_config(settings.registry)
        metrics_server, metrics_port = start_metrics_server(settings.server.host, metrics_port)
    except (RegistryError, ArtifactError, OSError) as error:
        _log.error("cannot_start", reason=str(error))
        return 1
    try:
        return await _serve_until_stopped(settings, feature_config, metrics_port)
    except BindError as error:
        _log.error("cannot_start", reason=str(error))
        return 1
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()


def _champion_feature_config(registry_root: Path) -> FeatureConfig:
    """The feature config the champion was trained with: the engine must compute the same.

    Read from its manifest alone: loading the champion verifies every file moments later.
    """
    registry = Registry(registry_root)
    version = registry.alias(CHAMPION)
    if version is None:
        raise no_champion(registry_root)
    return read_manifest(registry.artifact_dir(version)).feature_config


async def _serve_until_stopped(
    settings: ServeSettings, feature_config: FeatureConfig, metrics_port: int
) -> int:
    decision_log = _open_log(
        functools.partial(DecisionLog, feature_config=feature_config), settings.decision_log
    )
    outcome_log = _open_log(OutcomeLog, settings.outcome_log)
    try:
        return await _serve_scorer(
            settings,
            feature_config,
            metrics_port,
            decisions=decision_log,
            outcome_sink=None if outcome_log is None else outcome_log.record,
        )
    finally:
        # The server has stopped: no decision or outcome can arrive any more.
        for log in (decision_log, outcome_log):
            if log is not None:
                log.close()


def _open_log(
    kind: Callable[[Path, LogLimits], _LogT], settings: RecordLogSettings
) -> _LogT | None:
    """The log `settings` ask for, writing from now on; None when they keep no log."""
    if settings.directory is None:
        return None
    return kind(settings.directory, LogLimits(**settings.model_dump(exclude={"directory"})))


async def _serve_scorer(
    settings: ServeSettings,
    feature_config: FeatureConfig,
    metrics_port: int,
    *,
    decisions: DecisionSink | None,
    outcome_sink: OutcomeSink | None,
) -> int:
    models = settings.models
    store = ModelStore(
        settings.registry,
        feature_config=feature_config,
        allow_major_library_difference=models.allow_major_library_difference,
    )
    engine = FeatureEngine(feature_config)
    track_feature_state(engine)
    health = await create_health()
    shadow = ShadowScorer(
        store,
        asyncio.get_running_loop().call_soon,
        log_sampler=RequestLogSampler(settings.logging.sample_rate),
        backlog_limit=models.shadow_backlog,
    )
    drift = DriftCollector(window=settings.drift.window, min_rows=settings.drift.min_rows)
    prometheus_client.REGISTRY.register(drift)
    scorer = build_scorer(
        settings,
        engine,
        store,
        outcome_sink=outcome_sink,
        shadow=shadow,
        drift=drift,
        decisions=decisions,
    )
    watcher = ModelWatcher(store)
    server, port = build_server(settings, scorer, health, models=watcher)
    stop = _stop_on_signals()
    await server.start()
    _log.info("listening", port=port, metrics_port=metrics_port, tls=settings.tls.enabled)
    try:
        model = await load_and_serve(watcher, health)
    except RegistryError as error:
        # The watcher has logged the refusal itself ("model_refused", with its reason code).
        _log.error("cannot_start", reason=str(error))
        await shut_down(server, health, 0)
        return 1
    _log.info("serving", port=port, metrics_port=metrics_port, model_version=model.version)
    async with _following_the_registry(watcher, models.poll_seconds):
        await stop.wait()
    _log.info("shutting_down", grace_seconds=settings.server.grace_seconds)
    await shut_down(server, health, settings.server.grace_seconds)
    _log.info("stopped")
    return 0


@contextlib.asynccontextmanager
async def _following_the_registry(
    watcher: ModelWatcher, poll_seconds: float
) -> AsyncIterator[None]:
    """Hot reload while the context lasts: a poll (unless 0) and SIGHUP for a look now."""
    looks: set[asyncio.Task[object]] = set()  # referenced until done, or asyncio may drop them

    def look_now() -> None:
        _log.info("reload_requested", trigger="SIGHUP")
        task: asyncio.Task[object] = asyncio.create_task(watcher.reload())
        looks.add(task)
        task.add_done_callback(looks.discard)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, look_now)
    polling = asyncio.create_task(watcher.run(poll_seconds)) if poll_seconds > 0 else None
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in (polling, *looks):
            if task is not None:
                task.cancel()


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (repeats are harmless)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _supervise(arguments: list[str], workers: int) -> int:
    """Run `workers` server processes on the shared port until they all exit."""
    processes = _worker_processes(arguments, workers)
    _pass_signals_on(processes)
    for process in processes:
        process.start()
    _log.info("supervising", workers=workers, pids=[process.pid for process in processes])
    for process in processes:
        process.join()
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        _log.error("workers_failed", workers=failed)
        return 1
    return 0


def _worker_processes(arguments: list[str], workers: int) -> list[SpawnProcess]:
    # spawn, not fork: a forked grpc or onnxruntime runtime is not safe to use. Spawned
    # children never import a module run as `python -m service` (it is `__main__` there), so
    # the target comes from this module imported under its real name.
    import service.__main__ as entry_point

    context = multiprocessing.get_context("spawn")
    return [
        context.Process(
            target=entry_point.run_worker, args=(arguments, index), name=f"worker-{index}"
        )
        for index in range(workers)
    ]


def _pass_signals_on(processes: list[SpawnProcess]) -> None:
    """SIGTERM and SIGINT here become SIGTERM in every worker still running; SIGHUP (look
    at the registry now) is passed on as it is."""

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker shuts down gracefully

    def reload(_signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)


def run_worker(arguments: list[str], index: int) -> None:
    """One worker process: the same arguments and environment, its own metrics port."""
    settings = parse_settings(arguments)
    configure_logging(settings.logging)
    structlog.contextvars.bind_contextvars(worker=index)
    base_port = settings.server.metrics_port
    sys.exit(_run(settings, base_port + index if base_port else 0))


if __name__ == "__main__":
    sys.exit(main())
