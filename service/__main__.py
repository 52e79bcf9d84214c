"""`fraud-serve` (also `python -m service`): the command line of the scoring server.

    arguments and settings → logs → GC policy → metrics endpoint → `service.app.create_app`
    → port open, health NOT_SERVING → champion (and challenger) loaded and warmed up
    → SERVING → the registry followed: a look every `models.poll_seconds`, and one on SIGHUP
      (`service.model.watcher`); a promotion or rollback swaps the model in place
    → SIGTERM or SIGINT → NOT_SERVING at once, calls in progress finish within the grace
    → decision and outcome logs drained and closed

The server never reports SERVING without a verified model, and never exits for want of one
(a restart would find the same registry; exiting made a bad champion a crash loop): a
champion refused at start is replaced by the newest earlier champion that verifies
("champion_fallback"); with none, or no champion at all, the server stays up NOT_SERVING,
scoring by the fallback rules, says why once ("cannot_serve_yet"), and turns SERVING when
a poll finds a champion that verifies. See docs/model-lifecycle.md.

Exit status: 0 after a graceful shutdown, 1 when the server cannot start (a port in use, a
feature state that cannot be opened), 2 for bad arguments or configuration.

With `--workers N` above 1 this process only supervises N worker processes that each run
the whole server on the same port (see `service.grpc_api.server` for what that gives up);
worker i serves its metrics on the metrics port + i, and SIGTERM and SIGHUP are passed on to
every one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import NoReturn

import structlog
from pydantic import ValidationError

from service.app import App, create_app, following_the_registry, signature_policy
from service.config.settings import ConfigError, ServerSettings, ServeSettings, load_settings
from service.grpc_api.server import BindError
from service.model.loading import LoadedModel
from service.observability.gc_policy import configure_garbage_collection
from service.observability.logs import configure_logging
from service.observability.metrics import start_metrics_server
from service.state.errors import StateStoreError

_log = structlog.get_logger("service")

_EPILOG = """\
Every setting can also come from the environment (FRAUD_ prefix, "__" between nested
names, e.g. FRAUD_SERVER__MAX_IN_FLIGHT=512) or from the --config file; flags override both,
and the environment overrides the file. Set FRAUD_CARD_TOKEN_KEY in production.
Exit status: 0 after a graceful shutdown (SIGTERM, SIGINT), 1 when the server cannot start
(a port in use, a feature state that cannot be opened), 2 for bad arguments or
configuration. A registry without a champion that verifies is no reason to exit: the server
stays up NOT_SERVING until one is promoted.
"""


def run_and_exit() -> NoReturn:
    """`fraud-serve`: `main`, then the process exits at once with its status."""
    exit_promptly(main())


def exit_promptly(status: int) -> NoReturn:
    """Exit with `status` without the interpreter's teardown, once output is flushed.

    When `main` returns, the server has stopped its ports and drained and closed its logs
    and feature state. What the interpreter would do next, free every module and object one
    by one (onnxruntime's session, numpy, grpc) and wait for the metrics thread's next poll,
    took 0.8 s of every stop on a 2-core box, while an orchestrator or a rolling update
    waited for the exit.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


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
        "--health-port",
        type=int,
        metavar="N",
        help="also serve grpc.health.v1 alone, in plaintext, on this port: for probes that "
        "cannot use TLS, such as Kubernetes' gRPC probes; 0 picks a free one (default: off)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing the scoring port and the feature state's LMDB store: "
        f"each computes what one would (default: {defaults['workers']})",
    )
    parser.add_argument(
        "--production",
        action="store_true",
        help="production mode (also FRAUD_MODE=production): refuse to start with plaintext, "
        "the development card token key, or no trusted model signing key",
    )
    return parser


def _settings(args: argparse.Namespace) -> ServeSettings:
    """The settings from the environment and file, with the command line's flags on top."""
    settings = load_settings(args.config)
    flags = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "health_port": args.health_port,
        "workers": args.workers,
    }
    server_flags = {name: value for name, value in flags.items() if value is not None}
    try:
        server = ServerSettings.model_validate(settings.server.model_dump() | server_flags)
    except ValidationError as error:
        problems = "; ".join(f"{item['loc'][0]}: {item['msg']}" for item in error.errors())
        raise ConfigError(f"invalid option ({problems})") from None
    if args.production:
        settings = settings.model_copy(update={"mode": "production"})
    _check_signing_keys(settings)
    if settings.mode == "production" and (unsafe := settings.production_problems()):
        raise ConfigError("production mode refuses to start: " + "; ".join(unsafe))
    if server.workers > 1 and 0 in (server.port, server.health_port):
        raise ConfigError("several workers need fixed ports to share, not port 0")
    if server.workers > 1 and settings.state.backend == "memory":  # model_copy skips validators
        raise ConfigError(
            'several workers need a shared feature state (state.backend "lmdb" or "redis"), '
            "not memory: each worker would count its own share of every card"
        )
    registry = settings.registry if args.registry is None else args.registry
    return settings.model_copy(update={"server": server, "registry": registry})


def _check_signing_keys(settings: ServeSettings) -> None:
    """ConfigError naming the setting if a trusted signing key does not parse."""
    try:
        signature_policy(settings.models)
    except ValueError as error:
        raise ConfigError(f"models.trusted_keys: {error}") from None


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
        app = await create_app(settings)
    except (BindError, StateStoreError, OSError) as error:
        _log.error("cannot_start", reason=str(error))
        return 1
    try:
        _, metrics_port = start_metrics_server(settings.server.host, metrics_port)
    except OSError as error:
        _log.error("cannot_start", reason=str(error))
        await app.stop(0)
        app.close()
        return 1
    try:
        return await _serve_until_stopped(app, metrics_port)
    finally:
        # The metrics thread is a daemon, ended with the process (`exit_promptly`): its
        # `shutdown()` waits for its next poll, up to half a second.
        app.close()


async def _serve_until_stopped(app: App, metrics_port: int) -> int:
    settings = app.settings
    stop = _stop_on_signals()
    await app.start()
    _log.info(
        "listening",
        port=app.port,
        metrics_port=metrics_port,
        health_port=app.health_port,
        tls=settings.tls.enabled,
    )

    async def serving(model: LoadedModel) -> None:
        _log.info("serving", port=app.port, metrics_port=metrics_port, model_version=model.version)

    app.watcher.on_first_champion(serving)
    await app.load_champion()  # None: the watcher has said why ("cannot_serve_yet") and polls on
    async with following_the_registry(app.watcher, settings.models.poll_seconds):
        await stop.wait()
    _log.info("shutting_down", grace_seconds=settings.server.grace_seconds)
    await app.stop(settings.server.grace_seconds)
    _log.info("stopped")
    return 0


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
    exit_promptly(_run(settings, base_port + index if base_port else 0))


if __name__ == "__main__":
    run_and_exit()
