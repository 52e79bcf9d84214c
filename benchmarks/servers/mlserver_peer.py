"""MLServer serving the champion's LightGBM model: the general-purpose peer the suite
measures beside `fraud-serve` when given an installation (`--mlserver-python PATH`).

MLServer is not a dependency of this project. It runs under the interpreter given, a
Python environment holding `mlserver` and `mlserver-lightgbm` (`check_interpreter`
says so before anything starts). `write_repository` writes its `settings.json` and the
model's `model-settings.json`: the `mlserver_lightgbm.LightGBMModel` runtime on the
champion's own `model.lgb.txt`, on free ports of 127.0.0.1 (HTTP, gRPC, metrics), with
MLServer's debug logging off, `parallel_workers` inference processes and no adaptive
batching (`max_batch_size` 0: each request is predicted on its own, as `fraud-serve`
scores each swipe on its own). It runs with `OMP_NUM_THREADS=1`: its runtime calls
LightGBM's `Booster.predict` with the default threads, whose single-row p99 was 7-12 ms
whenever another process was busy on this kind of machine, against 33-51 µs with one
thread (`fraud-serve`'s ONNX session has one intra-op thread for the same reason).

MLServer gets features, not transactions: `feature_rows` computes each history row's
feature vector with this project's own feature engine (`service.features`), in the
order the model reads them; `serialized_requests` has MLServer's interpreter turn them
into `ModelInferRequest` bytes (`benchmarks.servers.mlserver_requests`), which the
harness's client sends unchanged to `MODEL_INFER`. The comparison is the serving cost
of the model alone, without validation, feature state or decisions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from benchmarks.servers.launch import (
    LOCAL_HOST,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    RunningServer,
    ServerError,
    ServerProbe,
    free_ports,
)
from service.config.settings import DEVELOPMENT_CARD_TOKEN_KEY
from service.core.card_tokens import CardTokenizer
from service.core.validation import ScoringLimits, to_transaction
from service.features import FeatureConfig, FeatureEngine, MemoryStore
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.converters import to_raw_transaction

MODEL_NAME = "fraud-lightgbm"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
RUNTIME = "mlserver_lightgbm.LightGBMModel"
SETTINGS_FILE = "settings.json"
MODEL_SETTINGS_FILE = "model-settings.json"
# The modules the interpreter must import to serve the model.
REQUIRED_MODULES = ("mlserver", "mlserver_lightgbm")
# LightGBM's OpenMP threads per prediction (see the module docstring).
SERVING_ENVIRONMENT = {"OMP_NUM_THREADS": "1"}
_CHECK_TIMEOUT = 60.0
_SERIALIZE_TIMEOUT = 600.0
_REQUESTS_SCRIPT = Path(__file__).with_name("mlserver_requests.py")


@dataclass(frozen=True)
class MLServerPorts:
    """MLServer's three listening ports on 127.0.0.1."""

    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> MLServerPorts:
        """Three ports of 127.0.0.1 free right now."""
        first = free_ports(3)
        return cls(first, first + 1, first + 2)


def check_interpreter(python: Path) -> None:
    """ValueError, saying why, unless `python` is an interpreter that imports MLServer
    and its LightGBM runtime."""
    if not python.is_file() or not os.access(python, os.X_OK):
        raise ValueError(f"--mlserver-python {python}: not an executable file")
    imports = "; ".join(f"import {module}" for module in REQUIRED_MODULES)
    try:
        found = subprocess.run(
            [str(python), "-c", imports], capture_output=True, text=True, timeout=_CHECK_TIMEOUT
        )
    except OSError as error:
        raise ValueError(f"--mlserver-python {python}: cannot run it ({error})") from error
    if found.returncode != 0:
        reason = (found.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(
            f"--mlserver-python {python}: it cannot import {' and '.join(REQUIRED_MODULES)} "
            f"({reason}); install them there (pip install mlserver mlserver-lightgbm)"
        )


def write_repository(
    directory: Path, model_file: Path, version: str, ports: MLServerPorts, workers: int
) -> Path:
    """MLServer's settings and the model's in `directory` (created); `directory`."""
    model_dir = directory / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    server = {
        "debug": False,
        "host": LOCAL_HOST,
        "http_port": ports.http,
        "grpc_port": ports.grpc,
        "metrics_port": ports.metrics,
        "parallel_workers": workers,
        "model_repository_root": str(directory),
        "metrics_dir": str(directory / ".metrics"),
        "environments_dir": str(directory / ".envs"),
    }
    model = {
        "name": MODEL_NAME,
        "implementation": RUNTIME,
        "max_batch_size": 0,
        "max_batch_time": 0,
        "parameters": {"uri": str(model_file.resolve()), "version": version},
    }
    (directory / SETTINGS_FILE).write_text(json.dumps(server, indent=2) + "\n")
    (model_dir / MODEL_SETTINGS_FILE).write_text(json.dumps(model, indent=2) + "\n")
    return directory


def feature_rows(
    requests: Sequence[scoring_pb2.ScoreRequest], config: FeatureConfig
) -> npt.NDArray[np.float32]:
    """Each request's feature vector, as `fraud-serve`'s engine computes it for a fresh
    state fed the requests in order (float32, the precision the model was trained on)."""
    engine = FeatureEngine(config, MemoryStore(horizon_seconds=config.state_horizon_seconds))
    tokenizer = CardTokenizer(DEVELOPMENT_CARD_TOKEN_KEY.encode())
    limits = ScoringLimits()
    rows = [
        engine.observe(to_transaction(to_raw_transaction(r), limits=limits, tokenizer=tokenizer))
        for r in requests
    ]
    return np.array(rows, dtype=np.float32)


def serialized_requests(python: Path, rows: npt.NDArray[np.float32]) -> list[bytes]:
    """One `ModelInferRequest`'s bytes per row, built by MLServer's interpreter `python`."""
    with tempfile.TemporaryDirectory(prefix="fraud-bench-mlserver-") as scratch:
        rows_file, out_file = Path(scratch) / "rows.npy", Path(scratch) / "requests.bin"
        np.save(rows_file, rows)
        # -I: neither the script's directory nor PYTHONPATH on sys.path, only MLServer's own.
        argv = [str(python), "-I", str(_REQUESTS_SCRIPT), str(rows_file), str(out_file), MODEL_NAME]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_SERIALIZE_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"serializing MLServer requests failed: {done.stderr[-2000:]}")
        return _length_prefixed(out_file.read_bytes())


def _length_prefixed(data: bytes) -> list[bytes]:
    payloads, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<I", data, at)
        payloads.append(data[at + 4 : at + 4 + length])
        at += 4 + length
    return payloads


@contextlib.contextmanager
def mlserver_serving(
    name: str, python: Path, repository: Path, ports: MLServerPorts, log_dir: Path
) -> Iterator[RunningServer]:
    """`mlserver start repository` under `python`, yielded once the model is ready; then
    stopped with SIGTERM (its process group killed if it has not stopped in time)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    entry_point = python.parent / "mlserver"
    command = [str(entry_point)] if entry_point.is_file() else [str(python), "-m", "mlserver"]
    with (log_dir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [*command, "start", str(repository)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=repository,
            env=os.environ | SERVING_ENVIRONMENT,
            start_new_session=True,  # its inference workers go with it
        )
        try:
            _wait_ready(name, process, ports)
            yield RunningServer(name, f"{LOCAL_HOST}:{ports.grpc}", ServerProbe((process.pid,)))
        finally:
            _stop(process)


def _wait_ready(name: str, process: subprocess.Popen[bytes], ports: MLServerPorts) -> None:
    url = f"http://{LOCAL_HOST}:{ports.http}/v2/models/{MODEL_NAME}/ready"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{name} exited with status {process.returncode} (see its log)")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1.0) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise ServerError(f"{name}: model not ready within {STARTUP_TIMEOUT:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
