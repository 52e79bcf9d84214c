"""The suite's rows against MLServer (`fraud-bench suite --mlserver-python PATH`): the same
open loop and closed loop as `fraud-serve`'s, against MLServer serving the champion's
LightGBM model (`benchmarks.servers.mlserver_peer`), each on a freshly started MLServer.

The requests are the feature rows our engine computes for the history rows the other
rows send, serialized by MLServer's own interpreter and sent by the harness's client
unchanged, so the client's cost per call is comparable; the server's CPU is MLServer's
whole process tree (its inference workers too).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from benchmarks.load.traffic import Call, CallKind, History
from benchmarks.measurements.load_run import LoadSettings, Measurement, Mode, measure
from benchmarks.measurements.memory import champion_feature_config
from benchmarks.servers.mlserver_peer import (
    MODEL_INFER,
    MLServerPorts,
    feature_rows,
    mlserver_serving,
    serialized_requests,
    write_repository,
)
from service.model.artifact import NATIVE_MODEL_FILE
from service.model.registry import Registry

# Rows a closed loop gets per second of run: more than MLServer answers on one machine.
CLOSED_LOOP_ROWS_PER_SECOND = 5_000
# Calls made one by one before a row is measured: fraud-serve warms its model up before
# it says SERVING, MLServer's first predictions pay for lazy set-up (hundreds of ms here).
WARM_UP_CALLS = 200
ROWS: tuple[tuple[str, Mode], ...] = (
    ("mlserver-open-unary", "open"),
    ("mlserver-closed-unary", "closed"),
)


@dataclasses.dataclass(frozen=True)
class MLServerSetup:
    """Which MLServer, with how many inference workers (`parallel_workers`), where its
    repositories (`<out>/mlserver/<row>/`) and logs go."""

    python: Path
    workers: int
    out: Path
    logs: Path


def measure_mlserver(
    setup: MLServerSetup,
    registry: Path,
    history: History,
    load_for: Callable[[str, Mode], LoadSettings],
    on_row: Callable[[str], None] = lambda row: None,
) -> list[Measurement]:
    """The open and closed loop of `load_for(target, mode)` against MLServer serving the
    registry's champion, with the first history rows either loop needs (the closed loop's
    `CLOSED_LOOP_ROWS_PER_SECOND` a second at most); `on_row(name)` as each row starts."""
    models = Registry(registry)
    champion = models.champion()
    if champion is None:
        raise ValueError(f"{registry} has no champion: train a model first")
    version = champion[0]
    model_file = models.artifact_dir(version) / NATIVE_MODEL_FILE
    open_loop = load_for("127.0.0.1:0", "open")
    count = max(open_loop.calls_needed(), round(CLOSED_LOOP_ROWS_PER_SECOND * open_loop.seconds))
    _progress(f"mlserver: feature rows and requests for {min(count, len(history)):,} rows")
    rows = feature_rows(history.requests[:count], champion_feature_config(registry))
    calls = [Call(CallKind.SCORE, payload) for payload in serialized_requests(setup.python, rows)]
    measurements = []
    for name, mode in ROWS:
        ports = MLServerPorts.free()
        repository = write_repository(
            setup.out / "mlserver" / name, model_file, version, ports, setup.workers
        )
        with mlserver_serving(name, setup.python, repository, ports, setup.logs) as server:
            load = dataclasses.replace(load_for(server.target, mode), method=MODEL_INFER)
            warm_up(server.target, calls[:WARM_UP_CALLS])
            on_row(name)
            _progress(f"{name}: {mode} loop, ModelInfer, {load.seconds:g} s")
            measurements.append(measure(name, load, calls, server.probe))
    return measurements


def warm_up(target: str, calls: Sequence[Call]) -> None:
    """Send `calls` to MLServer one after another (it keeps no state: the row measured
    next may send them again at the same cost)."""
    with grpc.insecure_channel(target) as channel:
        infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(MODEL_INFER)
        for call in calls:
            infer(call.payload, timeout=10.0)


def _progress(message: str) -> None:
    print(f"fraud-bench: {message}", file=sys.stderr, flush=True)
