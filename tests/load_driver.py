"""Continuous `Score` traffic from another process, for tests that change the server under
load: swipes from a simulated history, one call at a time and in order, so that the test
can replay the same transactions and know each one's features exactly.

Run in a spawned process (`start_driver`); it stops at the stop event or after the history
runs out, whichever is first, and writes one JSON line per call to `results_path`.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import grpc

from benchmarks.load.history_requests import request_from_row
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc

CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class DriverRun:
    """A driver process and where its results go."""

    process: multiprocessing.process.BaseProcess
    stop: Event
    answered: Synchronized[int]
    results_path: Path

    def wait_for_answers(self, more: int, timeout: float = 120.0) -> None:
        """Return once the driver has had `more` answers since the call."""
        target = self.answered.value + more
        deadline = time.monotonic() + timeout
        while self.answered.value < target:
            assert self.process.is_alive(), "the load driver stopped (history exhausted?)"
            assert time.monotonic() < deadline, f"fewer than {more} answers in {timeout} s"
            time.sleep(0.01)

    def finish(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Stop sending, wait for the process, and read what every call got."""
        self.stop.set()
        self.process.join(timeout)
        assert self.process.exitcode == 0, f"load driver exited with {self.process.exitcode}"
        lines = self.results_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


def history_requests(history: Path, id_prefix: str) -> Iterator[scoring_pb2.ScoreRequest]:
    """The history's swipes as Score requests, in file (time) order, ids prefixed."""
    with history.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            request = request_from_row(row)
            request.transaction.transaction_id = id_prefix + request.transaction.transaction_id
            yield request


def start_driver(target: str, history: Path, id_prefix: str, results_path: Path) -> DriverRun:
    """Start sending the history to `target` (host:port on 127.0.0.1) from a new process;
    returns once the first answer has come back."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    answered = context.Value("q", 0)
    process = context.Process(
        target=drive,
        args=(target, str(history), id_prefix, str(results_path), stop, answered),
        name="load-driver",
    )
    process.start()
    run = DriverRun(process, stop, answered, results_path)
    run.wait_for_answers(1)
    return run


def drive(
    target: str,
    history: str,
    id_prefix: str,
    results_path: str,
    stop: Event,
    answered: Synchronized[int],
) -> None:
    """The driver process: one call at a time until `stop` or the end of the history."""
    assert target.startswith("127.0.0.1:"), "load only ever goes to the loopback interface"
    results = []
    with grpc.insecure_channel(target) as channel:
        stub = scoring_pb2_grpc.FraudScoringStub(channel)
        for request in history_requests(Path(history), id_prefix):
            if stop.is_set():
                break
            results.append(_call(stub, request))
            with answered.get_lock():
                answered.value += 1
    with Path(results_path).open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(result) + "\n" for result in results)


def _call(stub: scoring_pb2_grpc.FraudScoringStub, request: scoring_pb2.ScoreRequest) -> Any:
    sent = time.time()
    began = time.perf_counter()
    try:
        response = stub.Score(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        return {
            "transaction_id": request.transaction.transaction_id,
            "sent": sent,
            "code": error.code().name,
        }
    return {
        "transaction_id": response.transaction_id,
        "sent": sent,
        "seconds": time.perf_counter() - began,
        "code": "OK",
        "model_version": response.model_version,
        "score": response.score,
        "source": scoring_pb2.DecisionSource.Name(response.decision_source),
        "decision": scoring_pb2.Decision.Name(response.decision),
    }
