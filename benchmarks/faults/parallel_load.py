"""`RecordingLoad`'s records from several client processes: for loads one process cannot
offer on this machine (an overload at 3 x saturation), where a client that falls behind
its schedule would hide what the server does.

The schedule is dealt round robin to `processes` spawned processes (a forked grpc runtime
is not safe to use), each with grpc's sync API, futures and callbacks on `connections`
channels of its own: the cheapest client per call this project has (`benchmarks.load.
client`). They connect, wait for each other, and start on one shared clock
(`time.perf_counter`, CLOCK_MONOTONIC, the same in every process of the machine), so the
records of all of them count from one start. During the run a callback notes only when
its call ended and how; responses are parsed once the run is over. Each process reports
its CPU time over the run. Every wait is bounded: a process that hangs is killed and fails
the load.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from typing import Any

import grpc
import psutil

from benchmarks.faults.driver import OK, OUTCOME, SCORE, Record, Schedule, answered
from benchmarks.load.traffic import Call, CallKind
from service.grpc_api._proto.fraud.v1 import scoring_pb2

_SERVICE = "/fraud.v1.FraudScoring"
_METHODS = ((CallKind.SCORE, "Score"), (CallKind.OUTCOME, "ReportOutcome"))
UNFINISHED = "UNFINISHED"  # no status by the end of the run: a failure like any other
# One TCP connection per channel, and no retry that would hide a refusal.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
# Time for a spawned process to import grpc and the stubs, and to connect.
_START_TIMEOUT = 60.0
# Between the last process ready and the first call due: every process is past its barrier.
_START_DELAY = 0.2
# Beyond the schedule and the calls' deadline, time allowed for the records to come back.
_MARGIN_SECONDS = 30.0


@dataclass(frozen=True)
class _Share:
    """One process's calls, each with the second it is due."""

    target: str
    calls: Sequence[Call]
    due: Sequence[float]
    timeout: float
    connections: int


@dataclass(frozen=True)
class _Outcome:
    records: list[Record]
    cpu_seconds: float


class ParallelRecordingLoad:
    """Runs a `Schedule` against `target` from `processes` client processes; `join()` gives
    the records, `cpu_seconds` each process's CPU time over the run."""

    def __init__(
        self,
        target: str,
        schedule: Schedule,
        *,
        processes: int = 2,
        timeout: float = 1.0,
        connections: int = 2,
    ) -> None:
        if processes < 1:
            raise ValueError("at least one client process")
        self._shares = [
            _Share(
                target,
                schedule.calls[k::processes],
                schedule.due[k::processes],
                timeout,
                connections,
            )
            for k in range(processes)
        ]
        self._length = (schedule.due[-1] if schedule.due else 0.0) + timeout
        context = get_context("spawn")
        self._ready = context.Barrier(processes + 1, timeout=_START_TIMEOUT)
        self._go = context.Barrier(processes + 1, timeout=_START_TIMEOUT)
        self._start: Synchronized[float] = context.Value("d", 0.0)
        self._results: Queue[_Outcome | str] = context.Queue()
        self._processes: list[BaseProcess] = [
            context.Process(
                target=_run_share,
                args=(share, self._ready, self._go, self._start, self._results),
                daemon=True,
            )
            for share in self._shares
        ]
        self.start = 0.0
        self.cpu_seconds: list[float] = []

    def begin(self) -> float:
        """Start the processes; returns, once they are all connected, the
        `perf_counter()` value the records count from (a moment later)."""
        for process in self._processes:
            process.start()
        try:
            self._ready.wait()
            self.start = time.perf_counter() + _START_DELAY
            self._start.value = self.start
            self._go.wait()
        except threading.BrokenBarrierError:
            self._end()
            raise RuntimeError(f"the client processes did not start: {self._failure()}") from None
        return self.start

    def now(self) -> float:
        """Seconds since the load started (the records' clock)."""
        return time.perf_counter() - self.start

    def join(self) -> list[Record]:
        """Wait for every process's records; the records, by due time."""
        records: list[Record] = []
        try:
            for _ in self._processes:
                wait = max(0.0, self._length - self.now()) + _MARGIN_SECONDS
                try:
                    outcome = self._results.get(timeout=wait)
                except queue.Empty:
                    raise RuntimeError("a client process did not finish in time") from None
                if isinstance(outcome, str):
                    raise RuntimeError(outcome)
                records.extend(outcome.records)
                self.cpu_seconds.append(outcome.cpu_seconds)
        finally:
            self._end()
        return sorted(records, key=lambda record: record.sent)

    def _failure(self) -> str:
        try:
            message = self._results.get(timeout=5)
        except queue.Empty:
            return "none reported why"
        return message if isinstance(message, str) else "none reported why"

    def _end(self) -> None:
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def _run_share(
    share: _Share,
    ready: Barrier,
    go: Barrier,
    start: Synchronized[float],
    results: Queue[_Outcome | str],
) -> None:
    try:
        results.put(_send(share, ready, go, start))
    except Exception as error:
        ready.abort()
        go.abort()
        results.put(f"client process failed: {error!r}")


def _send(share: _Share, ready: Barrier, go: Barrier, start: Synchronized[float]) -> _Outcome:
    channels = [
        grpc.insecure_channel(share.target, options=_CHANNEL_OPTIONS)
        for _ in range(share.connections)
    ]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=_START_TIMEOUT)
        ready.wait()
        go.wait()
        begin = start.value
        methods: dict[CallKind, Iterator[Any]] = {
            kind: itertools.cycle(
                [channel.unary_unary(f"{_SERVICE}/{name}") for channel in channels]
            )
            for kind, name in _METHODS
        }
        ends: list[tuple[int, float, str, str, bytes]] = []
        all_ended = threading.Event()
        cpu = _cpu_seconds()
        for number, (call, due) in enumerate(zip(share.calls, share.due, strict=True)):
            delay = begin + due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            future = next(methods[call.kind]).future(call.payload, timeout=share.timeout)
            future.add_done_callback(_Ended(number, begin, ends, len(share.calls), all_ended))
        if share.calls:
            all_ended.wait(share.timeout + _MARGIN_SECONDS)
        cpu = _cpu_seconds() - cpu
        ended_by = time.perf_counter() - begin
    finally:
        for channel in channels:
            channel.close()
    return _Outcome(_records(share, list(ends), ended_by), cpu)


class _Ended:
    """A call's callback: notes when it ended and how (on grpc's thread: appends only)."""

    __slots__ = ("_all_ended", "_begin", "_count", "_ends", "_number")

    def __init__(
        self,
        number: int,
        begin: float,
        ends: list[tuple[int, float, str, str, bytes]],
        count: int,
        all_ended: threading.Event,
    ) -> None:
        self._number = number
        self._begin = begin
        self._ends = ends
        self._count = count
        self._all_ended = all_ended

    def __call__(self, future: Any) -> None:
        at = time.perf_counter() - self._begin
        code: grpc.StatusCode = future.code()
        if code is grpc.StatusCode.OK:
            self._ends.append((self._number, at, OK, "", future.result()))
        else:
            self._ends.append((self._number, at, code.name, (future.details() or "")[:100], b""))
        if len(self._ends) == self._count:
            self._all_ended.set()


def _records(
    share: _Share, ends: list[tuple[int, float, str, str, bytes]], ended_by: float
) -> list[Record]:
    """The records of the calls; one still open at the end is UNFINISHED, at `ended_by`."""
    finished = {number for number, *_ in ends}
    unfinished = [
        (number, ended_by, UNFINISHED, "", b"")
        for number in range(len(share.calls))
        if number not in finished
    ]
    records = []
    for number, done, code, details, response in ends + unfinished:
        call, due = share.calls[number], share.due[number]
        if call.kind is CallKind.OUTCOME:
            outcome = scoring_pb2.OutcomeRequest.FromString(call.payload)
            records.append(Record(OUTCOME, due, done, code, outcome.transaction_id))
        elif code == OK:
            response_message = scoring_pb2.ScoreResponse.FromString(response)
            records.append(answered(SCORE, due, done, response_message))
        else:
            request = scoring_pb2.ScoreRequest.FromString(call.payload)
            transaction_id = request.transaction.transaction_id
            records.append(Record(SCORE, due, done, code, transaction_id, details=details))
    return records


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)
