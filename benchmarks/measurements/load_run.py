"""One measurement: a server loaded by client processes under one setting, and what it gave.

`measure` deals the calls out to `LoadSettings.processes` client processes (call i to
process i mod P, with its due time in an open loop), runs them together
(`benchmarks.load.client_pool`) and merges what they saw: latency histograms added up, status
codes, the decision mix, each client's CPU share. With a `ServerProbe` it also reads the
server's process tree (CPU time and memory, psutil) when the clients start and once they
are done, for the server's CPU per answer, and scrapes the server's own latency histogram.

The settings (`benchmarks.load.settings`, imported from here too) bound every run: rate,
length, processes and in-flight calls have ceilings, and the target must be on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.load.batches import in_batches
from benchmarks.load.client import ClientJob, ClientResult
from benchmarks.load.client_pool import run_clients
from benchmarks.load.histograms import (
    LatencyRecorder,
    LatencySummary,
    Second,
    percentile_spectrum,
    summarise,
    timeline,
)
from benchmarks.load.schedule import due_offsets
from benchmarks.load.settings import MODES as MODES
from benchmarks.load.settings import LoadSettings as LoadSettings
from benchmarks.load.settings import Mode as Mode
from benchmarks.load.tally import OK
from benchmarks.load.traffic import Call
from benchmarks.measurements.server_latency import ServerLatency, scrape_all, server_latency
from benchmarks.probes.process_usage import ProcessUsage, process_usage
from benchmarks.servers.launch import ServerProbe
from service.grpc_api.client import bearer_metadata

# A server the harness cannot look into: no process to watch, no metrics to scrape.
NO_PROBE = ServerProbe()


@dataclass(frozen=True)
class ServerCost:
    """The server's CPU over the run (its process tree), per OK `Score` answer and as a
    share of a core (with its event loops' run-queue wait, likewise).

    The outcome reports' cost is in the CPU time too: the same share of the calls in
    every run of the same traffic. So is the work on calls that then failed, which is why
    only runs without errors compare fairly.
    """

    cpu_seconds: float
    cpu_us_per_answer: float
    cpu_share: float
    run_queue_wait_share: float
    rss_bytes_after: int
    processes: int


@dataclass(frozen=True)
class Measurement:
    """What one measurement gave. Latency from due (open) or send (closed) time, in ms.

    `errors` counts `Score` calls that did not end OK. Outcome reports are counted apart
    (`outcome_statuses`): a report of a swipe the server never scored, or one that another
    worker scored (each worker has its own feature state), is NOT_FOUND by design.
    `client_cpu_us_per_call`: the client processes' CPU over the run per call they sent
    (outcome reports too).
    """

    name: str
    settings: LoadSettings
    calls_sent: int
    achieved_rate: float
    latency: LatencySummary
    statuses: dict[str, int]
    outcome_statuses: dict[str, int]
    decisions: dict[str, int]
    fallbacks: int
    errors: int
    client_cpu_share: list[float]
    client_cpu_us_per_call: float
    client_run_queue_wait_share: list[float]
    client_gc_pause_max_ms: float
    server: ServerCost | None
    server_latency: ServerLatency | None
    spectrum: list[tuple[float, float]]
    timeline: list[Second]


def measure(
    name: str,
    settings: LoadSettings,
    calls: Sequence[Call],
    probe: ServerProbe = NO_PROBE,
    *,
    token: str | None = None,
) -> Measurement:
    """Run one measurement of `calls` (an open loop sends the first `calls_needed()`), each
    call carrying `token` as a caller's bearer token when given (kept out of the result)."""
    metadata = () if token is None else bearer_metadata(token)
    jobs = client_jobs(settings, calls, metadata)
    scrape = bool(probe.metrics_urls) and settings.rpc == "unary"
    histogram_before = scrape_all(probe.metrics_urls, "Score") if scrape else None
    started: list[tuple[float, ProcessUsage | None]] = []

    def on_start() -> None:
        usage = process_usage(*probe.pids) if probe.pids else None
        started.append((time.perf_counter(), usage))

    results = run_clients(jobs, on_start)
    wall = time.perf_counter() - started[0][0]
    usage_before = started[0][1]
    measurement = _summarise(name, settings, results)
    if histogram_before is not None:
        after = scrape_all(probe.metrics_urls, "Score")
        measurement = dataclasses.replace(
            measurement, server_latency=server_latency(histogram_before, after)
        )
    if probe.pids and usage_before is not None:
        after_usage = process_usage(*probe.pids)
        answers = measurement.statuses.get(OK, 0)
        cost = _server_cost(usage_before, after_usage, answers, wall)
        measurement = dataclasses.replace(measurement, server=cost)
    return measurement


def client_jobs(
    settings: LoadSettings, calls: Sequence[Call], metadata: tuple[tuple[str, str], ...] = ()
) -> list[ClientJob]:
    """Each client process's share: call i to process i mod P, with its due time if open
    (a batch run's calls are its batches); every call carries `metadata`."""
    processes = settings.processes
    due: list[float] | None = None
    if settings.mode == "open":
        count = settings.calls_needed()
        if len(calls) < count:
            raise ValueError(f"the run needs {count} calls, {len(calls)} were given")
        calls = calls[:count]
        due = due_offsets(count, settings.rate, settings.arrivals, settings.seed).tolist()
    if settings.rpc == "batch":  # dealt out whole: each batch's swipes are consecutive
        calls, due = in_batches(calls, due, settings.batch_size)
    return [
        ClientJob(
            target=settings.target,
            calls=calls[k::processes],
            due=None if due is None else due[k::processes],
            rpc=settings.rpc,
            in_flight=_share(settings, k),
            seconds=settings.seconds,
            timeout=settings.timeout,
            connections=settings.connections,
            streams=settings.streams,
            metadata=metadata,
            method=settings.method,
        )
        for k in range(processes)
    ]


def _share(settings: LoadSettings, k: int) -> int:
    if settings.mode == "open":
        return settings.max_in_flight
    whole, rest = divmod(settings.in_flight, settings.processes)
    return whole + (k < rest)


def _summarise(name: str, settings: LoadSettings, results: list[ClientResult]) -> Measurement:
    latency = LatencyRecorder.merged(result.latency for result in results)
    statuses = sum((result.statuses for result in results), Counter[str]())
    outcomes = sum((result.outcome_statuses for result in results), Counter[str]())
    last_answer = max(result.last_answer for result in results)
    pauses = [pause for result in results for pause in result.gc_pauses]
    return Measurement(
        name=name,
        settings=settings,
        calls_sent=sum(statuses.values()) + sum(outcomes.values()),
        achieved_rate=round(statuses[OK] / last_answer, 1) if last_answer else 0.0,
        latency=summarise(latency.overall),
        statuses=dict(statuses),
        outcome_statuses=dict(outcomes),
        decisions=dict(sum((result.decisions for result in results), Counter[str]())),
        fallbacks=sum(result.fallbacks for result in results),
        errors=sum(count for code, count in statuses.items() if code != OK),
        client_cpu_share=[round(r.cpu_seconds / r.wall_seconds, 3) for r in results],
        client_cpu_us_per_call=_per_call(results),
        client_run_queue_wait_share=[
            round(r.run_queue_wait_seconds / r.wall_seconds, 3) for r in results
        ],
        client_gc_pause_max_ms=round(max(pauses, default=0.0) * 1e3, 2),
        server=None,
        server_latency=None,
        spectrum=percentile_spectrum(latency.overall),
        timeline=timeline(latency),
    )


def _per_call(results: list[ClientResult]) -> float:
    """Every client process's CPU over the run, per call it sent, in µs."""
    sent = sum(result.calls_sent for result in results)
    cpu = sum(result.cpu_seconds for result in results)
    return round(cpu / sent * 1e6, 1) if sent else 0.0


def _server_cost(
    before: ProcessUsage, after: ProcessUsage, answers: int, wall: float
) -> ServerCost:
    cpu = after.cpu_seconds - before.cpu_seconds
    return ServerCost(
        cpu_seconds=round(cpu, 3),
        cpu_us_per_answer=round(cpu / answers * 1e6, 1) if answers else 0.0,
        cpu_share=round(cpu / wall, 3),
        run_queue_wait_share=round(
            (after.run_queue_wait_seconds - before.run_queue_wait_seconds) / wall, 3
        ),
        rss_bytes_after=after.rss_bytes,
        processes=after.processes,
    )
