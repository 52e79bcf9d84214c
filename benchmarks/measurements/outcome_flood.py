"""What an outcome flood costs: `--calls` ReportOutcome calls with made-up ids against a real
`fraud-serve`, from one grpc.aio client (this process) with `--in-flight` calls in flight,
the flooding caller allowed `--rate` calls a second (a high rate: every call is answered
NOT_FOUND and quarantined; a low one: most are refused with RESOURCE_EXHAUSTED before their
request is read).

    python -m benchmarks.measurements.outcome_flood --calls 100000
    python -m benchmarks.measurements.outcome_flood --calls 100000 --rate 50

Prints one JSON record: the answers by status, the wall time and calls a second, the
server's and this client's CPU per call (user plus system time, psutil), and the run's
machine and commit. The server has no model (outcomes need none: it answers once alive),
keeps its state in LMDB and its quarantine at 1 MiB, as `tests/test_outcome_flood.py`'s
server does, so the figures are those of that test's flood.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.probes.machine import describe_run
from benchmarks.servers.launch import fraud_serve_spec
from service.grpc_api.client import bearer_metadata, build_outcome_request

REPORT_METHOD = "/fraud.v1.FraudScoring/ReportOutcome"
TOKEN = "outcome-flood-measurement-token-0123456789"
CALL_TIMEOUT = 30.0
SERVING = health_pb2.HealthCheckResponse.SERVING


async def flood(target: str, calls: int, in_flight: int) -> Counter[str]:
    """`calls` made-up reports, `in_flight` at a time; each call's status, read from the
    call (no exception raised per refusal, which would cost the client more than the call)."""
    now = datetime.now(UTC)
    requests = iter(
        build_outcome_request(f"made-up-{number}", True, now).SerializeToString()
        for number in range(calls)
    )
    metadata = bearer_metadata(TOKEN)
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        report: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(REPORT_METHOD)

        async def sender() -> None:
            for payload in requests:
                call = report(payload, timeout=CALL_TIMEOUT, metadata=metadata)
                codes[(await call.code()).name] += 1

        await asyncio.gather(*(sender() for _ in range(in_flight)))
    return codes


def measure(calls: int, in_flight: int, rate: float) -> dict[str, Any]:
    caller = {
        "name": "flooder",
        "roles": ["report"],
        "token_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()],
        "report_per_second": rate,
        "report_burst": 1000,
    }
    with tempfile.TemporaryDirectory(prefix="outcome-flood-") as directory:
        files = Path(directory)
        (files / "models").mkdir()
        spec = fraud_serve_spec("outcome-flood", files / "models")
        environment = os.environ | {
            "FRAUD_AUTH__CALLERS": json.dumps([caller]),
            "FRAUD_LOGGING__SAMPLE_RATE": "0",
            "FRAUD_OUTCOME_QUARANTINE__MAX_BYTES": str(1 << 20),
            "FRAUD_OUTCOME_QUARANTINE__SEGMENT_BYTES": str(64 << 10),
            "FRAUD_DECISION_LOG__DIRECTORY": str(files / "decisions"),
            "FRAUD_OUTCOME_LOG__DIRECTORY": str(files / "outcomes"),
            "FRAUD_STATE__PATH": str(files / "state"),
        }
        with (files / "server.log").open("wb") as log:
            server = subprocess.Popen(
                spec.argv, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
            try:
                _wait_alive(spec.target, server)
                server_process = psutil.Process(server.pid)
                server_before = server_process.cpu_times()
                client_before = psutil.Process().cpu_times()
                started = time.perf_counter()
                codes = asyncio.run(flood(spec.target, calls, in_flight))
                seconds = time.perf_counter() - started
                server_after = server_process.cpu_times()
                client_after = psutil.Process().cpu_times()
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=60)

    def per_call_us(before: Any, after: Any) -> float:
        spent = float(after.user + after.system - before.user - before.system)
        return round(spent / calls * 1e6, 1)

    return {
        "calls": calls,
        "in_flight": in_flight,
        "rate": rate,
        "codes": dict(codes),
        "seconds": round(seconds, 2),
        "calls_per_second": round(calls / seconds),
        "server_cpu_us_per_call": per_call_us(server_before, server_after),
        "client_cpu_us_per_call": per_call_us(client_before, client_after),
        "run": describe_run(),
    }


def _wait_alive(target: str, server: subprocess.Popen[bytes]) -> None:
    """Return once the server's `liveness` health service answers SERVING."""
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(target) as channel:
        # The type stubs declare no methods on HealthStub.
        health: Any = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}")
            with contextlib.suppress(grpc.RpcError):
                request = health_pb2.HealthCheckRequest(service="liveness")
                if health.Check(request, timeout=1.0).status == SERVING:
                    return
            time.sleep(0.2)
    raise RuntimeError("the server was not alive within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1e6, help="the caller's calls a second")
    arguments = parser.parse_args()
    record = measure(arguments.calls, arguments.in_flight, arguments.rate)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
