"""CPU time and memory of a process tree, read with psutil."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

from benchmarks.probes.process_usage import process_usage, run_queue_wait_seconds

# Burns 0.3 s of CPU, says so, then idles until killed. One write(2) of the whole line: two
# children share the parent's pipe, and print() may write "done" and its newline apart, so
# their lines could interleave ("donedone\n", seen in CI).
BUSY = (
    "import os, time\n"
    "end = time.process_time() + 0.3\n"
    "while time.process_time() < end: pass\n"
    "os.write(1, b'done\\n')\n"
    "time.sleep(60)\n"
)
# Starts two busy children, then idles.
PARENT = (
    "import subprocess, sys, time\n"
    f"children = [subprocess.Popen([sys.executable, '-c', {BUSY!r}]) for _ in range(2)]\n"
    "time.sleep(60)\n"
)


@contextlib.contextmanager
def running(script: str, busy_processes: int) -> Iterator[int]:
    """The pid of a process running `script`, once its busy processes are done."""
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            for _ in range(busy_processes):
                assert process.stdout.readline() == "done\n"
            yield process.pid
        finally:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()


def test_a_lone_process_counts_its_own_cpu_time_and_memory():
    """One process: its 0.3 s of CPU (and its startup's) and its resident memory."""
    with running(BUSY, busy_processes=1) as pid:
        usage = process_usage(pid)

    assert usage.processes == 1
    assert 0.3 <= usage.cpu_seconds < 5
    assert usage.rss_bytes > 1_000_000


def test_a_tree_counts_its_childrens_cpu_time():
    """A parent idling over two busy children counts their 0.6 s, as over server workers."""
    with running(PARENT, busy_processes=2) as pid:
        usage = process_usage(pid)

    assert usage.processes == 3
    assert usage.cpu_seconds >= 0.6


def test_run_queue_wait_is_read_for_a_live_process_and_zero_for_none():
    """A live process reads its kernel's run queue wait, which only grows; a gone one reads 0."""
    before = run_queue_wait_seconds(os.getpid())
    # The kernel's figure in between: schedstat's second field, in nanoseconds.
    kernel = int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    after = run_queue_wait_seconds(os.getpid())
    # This process has waited for a CPU at some point since it started, so 0 is no reading.
    assert 0.0 < before <= kernel <= after
    assert run_queue_wait_seconds(2**22 + 12_345) == 0.0
