"""Load-client processes started together, so that the client is not the bottleneck.

Each job runs in a process of its own (spawned, not forked: a forked grpc runtime is not
safe to use). The processes import, connect, then wait at a barrier with the parent; they
all start their schedules when the last one is ready, and the parent calls `on_start` at
that moment (to read the server's CPU time then, not while clients are still starting).
A single job runs in this process, with no barrier. Every wait is bounded: a client that
fails or hangs fails the run, and its processes are killed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from benchmarks.load.client import CONNECT_TIMEOUT, ClientJob, ClientResult, run_client

# Time for a spawned process to import grpc, numpy and the stubs, and to connect.
START_TIMEOUT = 60.0
# Beyond a job's own length and drain, time allowed for its results to come back.
_RESULT_MARGIN_SECONDS = 60.0


class ClientError(Exception):
    """A load-client process failed or did not finish in time."""


def run_clients(jobs: Sequence[ClientJob], on_start: Callable[[], object]) -> list[ClientResult]:
    """Run every job at once, each in its own process (one job: in this one)."""
    if len(jobs) == 1:
        return [run_client(jobs[0], on_start)]
    context = get_context("spawn")
    barrier = context.Barrier(len(jobs) + 1, timeout=START_TIMEOUT + CONNECT_TIMEOUT)
    results: Queue[ClientResult | str] = context.Queue()
    processes = [
        context.Process(target=_client_process, args=(job, barrier, results), daemon=True)
        for job in jobs
    ]
    for process in processes:
        process.start()
    try:
        _wait_for_clients(barrier, results)
        on_start()
        return _collect(results, len(jobs), max(_length(job) for job in jobs))
    finally:
        _end(processes)


def _client_process(job: ClientJob, barrier: Barrier, results: Queue[ClientResult | str]) -> None:
    try:
        results.put(run_client(job, barrier.wait))
    except Exception as error:
        barrier.abort()
        results.put(f"client process failed: {error!r}")


def _wait_for_clients(barrier: Barrier, results: Queue[ClientResult | str]) -> None:
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        raise ClientError(_first_failure(results)) from None


def _first_failure(results: Queue[ClientResult | str]) -> str:
    try:
        message = results.get(timeout=5)
    except queue.Empty:
        return "the client processes did not all start in time"
    return message if isinstance(message, str) else "a client process did not start"


def _collect(results: Queue[ClientResult | str], count: int, seconds: float) -> list[ClientResult]:
    collected: list[ClientResult] = []
    for _ in range(count):
        try:
            result = results.get(timeout=seconds + _RESULT_MARGIN_SECONDS)
        except queue.Empty:
            raise ClientError("a client process did not finish in time") from None
        if isinstance(result, str):
            raise ClientError(result)
        collected.append(result)
    return collected


def _length(job: ClientJob) -> float:
    """Longest a job can take once started: its schedule, then its answers' deadlines."""
    return job.seconds + 2 * job.timeout


def _end(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
