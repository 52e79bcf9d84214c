"""Latency of the scoring server at a steady, open-loop request rate.

    python -m benchmarks.steady_load --target 127.0.0.1:50051 \\
        --metrics http://127.0.0.1:9464/metrics --data data/transactions.csv \\
        --rate 1000 --seconds 20 [--processes 1] [--concurrency 256] [--server-pid PID]

Sends `Score` requests built from the first rate * seconds rows of a history file (the
CSV `fraud-train simulate` writes, in time order) on a fixed schedule, request i due at
start + i / rate, whatever the earlier answers are doing. Client latency is measured from
each request's due time, not from when it went out, so a client that falls behind shows
it as latency instead of hiding it (no coordinated omission). It splits into the send lag
(due time to send: the client's own delay, at least the event loop's timer slack of up to
a millisecond) and the round trip (send to answer). `--processes` spreads the schedule
over several client processes (grpc.aio, one event loop each) for when one cannot keep
up; `--concurrency` caps the requests in flight per process (a request waiting for a
slot is late, and counts). Start each run against a freshly started server: the server
answers a transaction id it has just scored from memory, without scoring it again.

Server latency comes from the server's own `fraud_rpc_duration_seconds{rpc="Score"}`
histogram, scraped before and after: its quantiles are interpolated linearly within the
bucket holding them, as Prometheus's `histogram_quantile` does, so they are only as fine
as the buckets. That histogram starts when the server's event loop picks a call up, so
time queued before that (in the kernel, in grpc's core, behind other callbacks) is only in
the client's figure.

Each process's CPU share (CPU seconds over wall seconds, all threads) and the share of
the wall time its main thread (the event loop) spent runnable but waiting for a CPU
(`/proc/PID/schedstat`) say whether the machine, rather than the code, set the latency.

Prints one JSON record. Targets are refused unless on 127.0.0.1; runs are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import itertools
import json
import os
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

import grpc
import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.history_requests import request_from_row
from benchmarks.machine import describe_run
from service._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc

LOCAL_HOST = "127.0.0.1"
MAX_RATE = 5_000
MAX_SECONDS = 60
MAX_PROCESSES = 4
SERVER_HISTOGRAM = "fraud_rpc_duration_seconds"
CLIENT_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
# Time for spawned client processes to import and connect before the first request is due.
_SPAWN_LEAD_SECONDS = 4.0
_Floats = npt.NDArray[np.float64]
# Generic in the type stubs only: a string, so that it is never subscripted at run time.
_Score: TypeAlias = (
    "grpc.aio.UnaryUnaryMultiCallable[scoring_pb2.ScoreRequest, scoring_pb2.ScoreResponse]"
)


def load_requests(path: Path, count: int) -> list[scoring_pb2.ScoreRequest]:
    """Requests for the first `count` rows of the CSV history at `path`; ValueError if short."""
    with path.open(newline="") as file:
        requests = [request_from_row(row) for row in itertools.islice(csv.DictReader(file), count)]
    if len(requests) < count:
        raise ValueError(f"{path} has {len(requests)} rows, the run needs {count}")
    return requests


def histogram_quantile(q: float, upper_bounds: Sequence[float], cumulative: _Floats) -> float:
    """Quantile `q` of a cumulative histogram, interpolated linearly inside its bucket.

    As Prometheus's `histogram_quantile`: the first bucket starts at 0, and a quantile in
    the +Inf bucket is the largest finite bound. NaN for an empty histogram.
    """
    total = float(cumulative[-1])
    if total == 0:
        return float("nan")
    rank = q * total
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index == len(upper_bounds) - 1:
        return upper_bounds[-2]
    lower = upper_bounds[index - 1] if index else 0.0
    below = float(cumulative[index - 1]) if index else 0.0
    inside = float(cumulative[index]) - below
    return lower + (upper_bounds[index] - lower) * (rank - below) / inside


def scrape_histogram(url: str, rpc: str) -> tuple[list[float], _Floats]:
    """Upper bounds and cumulative counts of the server's latency histogram for `rpc`."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    buckets = {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == SERVER_HISTOGRAM
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels.get("rpc") == rpc
    }
    bounds = sorted(buckets)
    return bounds, np.array([buckets[bound] for bound in bounds], dtype=np.float64)


def server_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid`, all threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait_seconds(pid: int) -> float:
    """Time the main thread of process `pid` has spent runnable but waiting for a CPU."""
    # schedstat: time on CPU, time waiting on a run queue (both ns), timeslices.
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


@dataclass(frozen=True)
class ClientJob:
    """One client process's share of the schedule: request i of `requests` is due at
    `start_wall` + (`first_index` + i * `stride`) / `rate`, Unix time.
    """

    target: str
    requests: list[bytes]
    first_index: int
    stride: int
    rate: float
    start_wall: float
    concurrency: int
    timeout: float


@dataclass
class ClientResult:
    """What one client process saw: per-request times in seconds, statuses, its own cost.

    `last_answer` is when its last answer came, in seconds from the schedule's start.
    """

    latency: _Floats
    send_lag: _Floats
    codes: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    last_answer: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    run_queue_wait_seconds: float = 0.0
    gc_pauses: list[float] = field(default_factory=list)


def run_client(job: ClientJob) -> ClientResult:
    """Send `job`'s requests on schedule and wait for every answer (one event loop)."""
    pauses: list[float] = []
    started: list[float] = []

    def time_gc(phase: str, _info: dict[str, int]) -> None:
        # Python's collector stops the event loop: its pauses are client-side latency.
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append(time.perf_counter() - started.pop())

    gc.callbacks.append(time_gc)
    try:
        result = asyncio.run(_Client(job).run())
    finally:
        gc.callbacks.remove(time_gc)
    result.gc_pauses = pauses
    return result


class _Client:
    """One event loop's schedule: creates each call when due, records when it ended."""

    def __init__(self, job: ClientJob) -> None:
        self._job = job
        count = len(job.requests)
        self.result = ClientResult(latency=np.full(count, np.nan), send_lag=np.full(count, np.nan))
        self._slots = asyncio.Semaphore(job.concurrency)

    async def run(self) -> ClientResult:
        """Every request sent on schedule and answered (or failed)."""
        job = self._job
        async with grpc.aio.insecure_channel(job.target) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=5)
            score = scoring_pb2_grpc.FraudScoringStub(channel).Score
            # time.time() is common to the client processes; perf_counter() is finer.
            start = time.perf_counter() + job.start_wall - time.time()
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            usage = _own_usage()
            calls = []
            for i, payload in enumerate(job.requests):
                offset = (job.first_index + i * job.stride) / job.rate
                await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
                request = scoring_pb2.ScoreRequest.FromString(payload)
                calls.append(asyncio.create_task(self._call(score, request, i, start, offset)))
            await asyncio.gather(*calls)
        spent = _own_usage() - usage
        self.result.wall_seconds, self.result.cpu_seconds = spent[0], spent[1]
        self.result.run_queue_wait_seconds = spent[2]
        return self.result

    async def _call(
        self, score: _Score, request: scoring_pb2.ScoreRequest, i: int, start: float, offset: float
    ) -> None:
        result, due = self.result, start + offset
        async with self._slots:
            result.send_lag[i] = time.perf_counter() - due
            try:
                response = await score(request, timeout=self._job.timeout)
            except grpc.aio.AioRpcError as error:
                result.codes[error.code().name] += 1
            else:
                result.codes["OK"] += 1
                result.fallbacks += response.decision_source == scoring_pb2.DECISION_SOURCE_FALLBACK
            latency = time.perf_counter() - due
        result.latency[i] = latency
        result.last_answer = max(result.last_answer, offset + latency)


def _own_usage() -> _Floats:
    """This process's wall clock, CPU time and event-loop run-queue wait, in seconds."""
    return np.array([time.perf_counter(), time.process_time(), run_queue_wait_seconds(os.getpid())])


def run_clients(jobs: list[ClientJob]) -> list[ClientResult]:
    """Each job in a client process of its own; a single job runs in this process."""
    if len(jobs) == 1:
        return [run_client(jobs[0])]
    # spawn, not fork: grpc's runtime is not safe to use in a forked child.
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_client, jobs))


def summarise(results: list[ClientResult], server: dict[str, float]) -> dict[str, object]:
    """The run's client and server figures, in milliseconds where a time."""
    latency = np.concatenate([result.latency for result in results]) * 1e3
    lag = np.concatenate([result.send_lag for result in results]) * 1e3
    codes = sum((result.codes for result in results), Counter[str]())
    pauses = [pause * 1e3 for result in results for pause in result.gc_pauses]
    return {
        "requests": int(latency.size),
        "achieved_rate": round(latency.size / max(r.last_answer for r in results), 1),
        "statuses": dict(codes),
        "fallback_answers": sum(result.fallbacks for result in results),
        "client_ms": _quantiles_ms(latency) | {"max": round(float(latency.max()), 2)},
        "send_lag_ms": _quantiles_ms(lag) | {"max": round(float(lag.max()), 2)},
        "round_trip_ms": _quantiles_ms(latency - lag),
        "client_cpu_share": [round(r.cpu_seconds / r.wall_seconds, 2) for r in results],
        "client_run_queue_wait_share": [
            round(r.run_queue_wait_seconds / r.wall_seconds, 2) for r in results
        ],
        "client_gc": {
            "collections": len(pauses),
            "pause_ms_total": round(sum(pauses), 1),
            "pause_ms_max": round(max(pauses, default=0.0), 2),
        },
        **server,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def _quantiles_ms(values_ms: _Floats) -> dict[str, float]:
    quantiles = np.quantile(values_ms, list(CLIENT_QUANTILES.values()))
    return {name: round(float(v), 2) for name, v in zip(CLIENT_QUANTILES, quantiles, strict=True)}


def server_figures(
    before: tuple[list[float], _Floats], after: tuple[list[float], _Floats]
) -> dict[str, float]:
    """Server p50/p99 in ms over the requests between two scrapes of its histogram."""
    bounds, counts = after
    if bounds != before[0]:
        raise ValueError("the server's histogram buckets changed between scrapes")
    delta = counts - before[1]
    return {
        "server_requests": int(delta[-1]),
        "server_p50_ms": round(histogram_quantile(0.5, bounds, delta) * 1e3, 3),
        "server_p99_ms": round(histogram_quantile(0.99, bounds, delta) * 1e3, 3),
    }


def _server_usage(pid: int) -> _Floats:
    return np.array([server_cpu_seconds(pid), run_queue_wait_seconds(pid)])


def _server_cost(used: _Floats, requests: float, wall: float) -> dict[str, float]:
    """The server's CPU per request and share of a core, and its event loop's CPU wait."""
    return {
        "server_cpu_us_per_request": round(used[0] / requests * 1e6),
        "server_cpu_share": round(used[0] / wall, 2),
        "server_run_queue_wait_share": round(used[1] / wall, 2),
    }


def _local_port(text: str, what: str) -> None:
    host = urlsplit(text if "//" in text else f"//{text}").hostname
    if host != LOCAL_HOST:
        raise SystemExit(f"{what} must be on {LOCAL_HOST}, not {host!r}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="scoring server, 127.0.0.1:PORT")
    parser.add_argument("--metrics", required=True, help="http://127.0.0.1:PORT/metrics")
    parser.add_argument("--data", type=Path, required=True, help="history CSV, in time order")
    parser.add_argument("--rate", type=float, required=True, help=f"requests/s, ≤ {MAX_RATE}")
    parser.add_argument("--seconds", type=float, required=True, help=f"≤ {MAX_SECONDS}")
    parser.add_argument("--processes", type=int, default=1, help="client processes (1)")
    parser.add_argument("--concurrency", type=int, default=256, help="in flight per process")
    parser.add_argument("--timeout", type=float, default=1.0, help="per-request deadline, s")
    parser.add_argument("--server-pid", type=int, help="for the server's CPU per request")
    args = parser.parse_args(argv)
    _local_port(args.target, "--target")
    _local_port(args.metrics, "--metrics")
    if not (0 < args.rate <= MAX_RATE and 0 < args.seconds <= MAX_SECONDS):
        parser.error(f"--rate must be in (0, {MAX_RATE}] and --seconds in (0, {MAX_SECONDS}]")
    if not 1 <= args.processes <= MAX_PROCESSES or args.concurrency < 1:
        parser.error(f"--processes must be 1-{MAX_PROCESSES} and --concurrency at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run one bounded steady-load measurement and print its JSON record."""
    args = _parse(argv)
    payloads = [
        request.SerializeToString()
        for request in load_requests(args.data, round(args.rate * args.seconds))
    ]
    lead = _SPAWN_LEAD_SECONDS if args.processes > 1 else 0.5
    start_wall = time.time() + lead
    jobs = [
        ClientJob(
            target=args.target,
            requests=payloads[k :: args.processes],
            first_index=k,
            stride=args.processes,
            rate=args.rate,
            start_wall=start_wall,
            concurrency=args.concurrency,
            timeout=args.timeout,
        )
        for k in range(args.processes)
    ]
    before = scrape_histogram(args.metrics, "Score")
    pid = args.server_pid
    server_before = None if pid is None else _server_usage(pid)
    results = run_clients(jobs)
    server = server_figures(before, scrape_histogram(args.metrics, "Score"))
    if pid is not None and server_before is not None:
        wall = max(result.wall_seconds for result in results)
        server |= _server_cost(_server_usage(pid) - server_before, server["server_requests"], wall)
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "server_pid")}
    record = {
        **describe_run(),
        "benchmark": "steady_load",
        "data": args.data.name,
        **settings,
        **summarise(results, server),
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
