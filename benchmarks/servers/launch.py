"""Servers the harness starts itself: `fraud-serve` and the floor servers, as child processes
on free ports of 127.0.0.1.

`serving(spec, log_dir)` starts one, waits until its grpc.health.v1 check says SERVING
(and, for `fraud-serve`, until every worker's metrics report its champion: SERVING on the
shared port is one worker's answer), hands back where to reach it and what to probe, and
on leaving stops it with SIGTERM and checks that it exited 0 (a graceful shutdown). Its
output goes to `<log_dir>/<name>.log`. Every wait is bounded; a server that fails to
start, or will not stop, is killed and reported as a `ServerError`.

`fraud-serve --workers N` needs a fixed scoring port (its workers share it) and serves
metrics on N consecutive ports: both are picked free here. Its outcome log goes to a
temporary directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.load.settings import LOCAL_HOST as LOCAL_HOST

if TYPE_CHECKING:
    from benchmarks.servers.floor import FloorKind

STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
_PORT_ATTEMPTS = 50

# The line of fraud_model_info a worker exports once its champion serves.
_CHAMPION_INFO = 'fraud_model_info{alias="champion"'


@dataclass(frozen=True)
class ServerProbe:
    """Where to read local servers' figures: their process ids (several replicas' CPU is
    summed), their metrics endpoints."""

    pids: tuple[int, ...] = ()
    metrics_urls: tuple[str, ...] = ()


class ServerError(Exception):
    """A server the harness started did not start, serve or stop as it should."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its name (for logs), command, address and environment."""

    name: str
    argv: list[str]
    target: str
    metrics_urls: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningServer:
    """A server that answers SERVING: where to send load and what to probe."""

    name: str
    target: str
    probe: ServerProbe


def fraud_serve_spec(name: str, registry: Path, workers: int = 1) -> ServerSpec:
    """`fraud-serve` on free 127.0.0.1 ports with the registry's champion."""
    port = free_ports(1)
    metrics_port = free_ports(workers)
    argv = [
        *(sys.executable, "-m", "service"),
        *("--registry", str(registry), "--host", LOCAL_HOST),
        *("--port", str(port), "--metrics-port", str(metrics_port), "--workers", str(workers)),
    ]
    urls = tuple(f"http://{LOCAL_HOST}:{metrics_port + i}/metrics" for i in range(workers))
    return ServerSpec(name, argv, f"{LOCAL_HOST}:{port}", urls, {"FRAUD_LOGGING__FORMAT": "json"})


def floor_spec(name: str, kind: FloorKind, model: Path | None) -> ServerSpec:
    """A floor server (`benchmarks.servers.floor`) on a free 127.0.0.1 port."""
    port = free_ports(1)
    argv = [sys.executable, "-m", "benchmarks.servers.floor", "--kind", kind, "--port", str(port)]
    if model is not None:
        argv += ["--model", str(model)]
    return ServerSpec(name, argv, f"{LOCAL_HOST}:{port}")


# Ports given out by `free_ports` in this process: a server is given its ports before it
# binds them, and the kernel may answer the next probe with a port just released (a
# replica once got its gRPC port as its metrics port too, and refused to start).
_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports of 127.0.0.1 free right now, none of them
    given out before by this process."""
    for _ in range(_PORT_ATTEMPTS):
        with socket.socket() as probe:
            probe.bind((LOCAL_HOST, 0))
            first: int = probe.getsockname()[1]
        ports = range(first, first + count)
        if _HANDED_OUT.isdisjoint(ports) and all(_is_free(port) for port in ports[1:]):
            _HANDED_OUT.update(ports)
            return first
    raise ServerError(f"found no {count} consecutive free ports on {LOCAL_HOST}")


@contextlib.contextmanager
def serving(spec: ServerSpec, log_dir: Path) -> Iterator[RunningServer]:
    """Start the server of `spec`, yield it once SERVING, then stop it (exit 0 expected)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="fraud-bench-logs-") as logs,
        (log_dir / f"{spec.name}.log").open("wb") as log,
    ):
        logs_in = {
            "FRAUD_DECISION_LOG__DIRECTORY": f"{logs}/decisions",
            "FRAUD_STATE__PATH": f"{logs}/state",
            "FRAUD_OUTCOME_LOG__DIRECTORY": f"{logs}/outcomes",
        }
        environment = os.environ | logs_in | spec.environment
        process = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
        try:
            wait_serving(spec, process)
            yield RunningServer(
                spec.name, spec.target, ServerProbe((process.pid,), spec.metrics_urls)
            )
        except BaseException:
            _stop(process)
            raise
        status = _stop(process)
        if status != 0:
            raise ServerError(f"{spec.name} exited with status {status} on SIGTERM (see its log)")


def wait_serving(spec: ServerSpec, process: subprocess.Popen[bytes]) -> None:
    """Return once the server of `spec` answers SERVING; ServerError if it exits or is
    not SERVING in time."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with grpc.insecure_channel(spec.target) as channel:
        # The type stubs declare no methods on HealthStub.
        health: Any = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerError(
                    f"{spec.name} exited with status {process.returncode} (see its log)"
                )
            with contextlib.suppress(grpc.RpcError):
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            time.sleep(0.2)
        else:
            raise ServerError(f"{spec.name} was not SERVING within {STARTUP_TIMEOUT:g} s")
    # SERVING came from one worker of the shared port: the others may still be starting.
    pending = list(spec.metrics_urls)
    while pending and time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{spec.name} exited with status {process.returncode} (see its log)")
        pending = [url for url in pending if not _serves_a_champion(url)]
        if pending:
            time.sleep(0.2)
    if pending:
        raise ServerError(f"{spec.name}: no champion reported at {', '.join(pending)} in time")


def _serves_a_champion(metrics_url: str) -> bool:
    """Whether the worker at `metrics_url` reports a champion loaded."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=1.0) as response:
            text: str = response.read().decode()
    except OSError:  # not listening yet (URLError is an OSError)
        return False
    return any(
        line.startswith(_CHAMPION_INFO) and line.rstrip().endswith(" 1.0")
        for line in text.splitlines()
    )


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then the exit status; killed (and -9) if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True
