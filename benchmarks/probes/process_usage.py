"""CPU time and memory of a local server process and every process under it (psutil).

A server with worker processes (`fraud-serve --workers N`) does its work in children of
the process started, so the figures sum the whole tree (and the trees of every replica
given). The CPU time is user plus system
time of every thread; it only grows, so the difference between two readings is the work
done in between.

On a shared machine a process can be ready to run and get no CPU: the time each main
thread (the event loop) spent runnable but waiting on a run queue (Linux's
`/proc/PID/schedstat`; 0 elsewhere) tells that latency apart from the process's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessUsage:
    """CPU seconds so far and resident memory now, summed over a process tree."""

    cpu_seconds: float
    run_queue_wait_seconds: float
    rss_bytes: int
    processes: int


def process_usage(*pids: int) -> ProcessUsage:
    """The usage of processes `pids` and all their descendants; psutil.NoSuchProcess if one
    is gone."""
    roots = [psutil.Process(pid) for pid in pids]
    cpu, wait, rss, count = 0.0, 0.0, 0, 0
    for process in (tree for root in roots for tree in (root, *root.children(recursive=True))):
        try:
            with process.oneshot():
                times = process.cpu_times()
                rss += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue  # a child that ended between the listing and the reading
        cpu += times.user + times.system
        wait += run_queue_wait_seconds(process.pid)
        count += 1
    return ProcessUsage(cpu, wait, rss, count)


def run_queue_wait_seconds(pid: int) -> float:
    """Time the main thread of `pid` has spent runnable but waiting for a CPU, so far."""
    try:
        # schedstat: time on CPU, time waiting on a run queue (both ns), timeslices.
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0
