"""An open-loop load that keeps every call's story: when it was sent and ended, its status,
and for a `Score` answer the model version, the decision source and the score.

The fault runs judge their criteria from these records (errors while a store is down, the
version of every answer after a swap, the time the first model answer came back), which a
summary histogram cannot tell. One client process, a grpc.aio event loop on a thread of
its own, so the caller injects faults meanwhile; calls are due on the schedule whatever
the answers do, and a call still due when the server is down fails fast (UNAVAILABLE) and
is recorded as such. `Score` goes unary, or for a share of the calls (`stream_share`) on
`streams` long-lived `ScoreStream` calls, each reopened when it ends; the transactions a
stream ended with UNAVAILABLE had not answered (the server ends a stream so at
`connections.stream_max_seconds`, its client expected to open another) are sent once
more on the next, as a POS backend does: a transaction id is scored once. Every wait is
bounded by the calls' deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from benchmarks.load.traffic import Call, CallKind
from service.grpc_api._proto.fraud.v1 import scoring_pb2

_SERVICE = "/fraud.v1.FraudScoring"
SCORE, STREAM, OUTCOME = "score", "stream", "outcome"
OK = "OK"
MODEL = scoring_pb2.DECISION_SOURCE_MODEL
# A call that fails at once (nothing listening) would make a tight loop of failures
# otherwise: the driver never sends faster than the schedule anyway. A channel whose server
# is gone tries to connect again after gRPC's backoff, 1 s then 1.6 times longer each time:
# a 3 s restart could be seen up to 2.6 s late (4.76 s against 3.04 s in CI), which would
# judge the client, not the server. 100 ms, at most 250 ms apart instead.
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
]


class Record(NamedTuple):
    """One call: `sent` and `done` in seconds from the load's start."""

    kind: str
    sent: float
    done: float
    code: str
    transaction_id: str
    version: str = ""
    source: int = 0
    score: float = 0.0
    fallback_reason: str = ""
    details: str = ""  # a failed call's status details


@dataclass(frozen=True)
class Schedule:
    """Calls and the second (from the start) each is due."""

    calls: Sequence[Call]
    due: Sequence[float]


def phased_schedule(calls: Sequence[Call], phases: Sequence[tuple[float, float]]) -> Schedule:
    """Constant-rate phases, (seconds, rate) each, one after the other; ValueError if the
    calls run out."""
    due: list[float] = []
    start = 0.0
    for seconds, rate in phases:
        count = round(seconds * rate)
        due.extend(start + k / rate for k in range(count))
        start += seconds
    if len(due) > len(calls):
        raise ValueError(f"the schedule needs {len(due)} calls, the history gives {len(calls)}")
    return Schedule(calls[: len(due)], due)


class RecordingLoad:
    """Runs a `Schedule` against `target` on a thread; `join()` gives the records."""

    def __init__(
        self,
        target: str,
        schedule: Schedule,
        *,
        timeout: float = 1.0,
        stream_share: float = 0.0,
        streams: int = 2,
        connections: int = 2,
        max_in_flight: int = 2000,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """`channel_options` replace the driver's own (no retries, no shared subchannels):
        e.g. the service config a POS backend is told to use."""
        self._target = target
        self._channel_options = list(channel_options) or _CHANNEL_OPTIONS
        self._schedule = schedule
        self._timeout = timeout
        self._stream_every = round(1 / stream_share) if stream_share > 0 else 0
        self._streams = streams
        self._connections = connections
        self._max_in_flight = max_in_flight
        self.records: list[Record] = []
        self.start = 0.0
        self.start_wall = 0.0  # time.time() at `start`: to place the server's log lines
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="recording-load", daemon=True)

    def begin(self) -> float:
        """Start sending; returns the `perf_counter()` value the records count from."""
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the load did not start")
        return self.start

    def now(self) -> float:
        """Seconds since the load started (the records' clock)."""
        return time.perf_counter() - self.start

    def join(self) -> list[Record]:
        """Wait for the schedule and the answers still due; the records, by send time."""
        length = (self._schedule.due[-1] if self._schedule.due else 0.0) + 4 * self._timeout
        self._thread.join(timeout=length + 60)
        if self._thread.is_alive():
            raise RuntimeError("the load did not finish in time")
        if self._error is not None:
            raise RuntimeError(f"the load failed: {self._error!r}") from self._error
        return sorted(self.records, key=lambda record: record.sent)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # handed to join()
            self._error = error
            self._started.set()

    async def _run(self) -> None:
        channels = [
            grpc.aio.insecure_channel(self._target, options=self._channel_options)
            for _ in range(self._connections)
        ]
        score: Iterator[Any] = itertools.cycle(
            [c.unary_unary(f"{_SERVICE}/Score", response_deserializer=_score) for c in channels]
        )
        outcome: Iterator[Any] = itertools.cycle(
            [c.unary_unary(f"{_SERVICE}/ReportOutcome") for c in channels]
        )
        streams = [_Stream(channels[k % len(channels)], self) for k in range(self._streams)]
        next_stream = itertools.cycle(streams)
        slots = asyncio.Semaphore(self._max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        self.start = time.perf_counter()
        self.start_wall = time.time()
        self._started.set()
        try:
            for number, (call, offset) in enumerate(
                zip(self._schedule.calls, self._schedule.due, strict=True)
            ):
                await asyncio.sleep(max(0.0, self.start + offset - time.perf_counter()))
                if call.kind is CallKind.OUTCOME:
                    coroutine = self._outcome(next(outcome), call.payload, slots)
                elif self._stream_every and number % self._stream_every == 0:
                    next(next_stream).send(call.payload, offset)
                    continue
                else:
                    coroutine = self._score(next(score), call.payload, offset, slots)
                task = asyncio.create_task(coroutine)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)
            await asyncio.gather(*(stream.finish(self._timeout) for stream in streams))
        finally:
            for channel in channels:
                await channel.close()

    async def _score(
        self, method: Any, payload: bytes, due: float, slots: asyncio.Semaphore
    ) -> None:
        async with slots:
            try:
                response = await method(payload, timeout=self._timeout)
            except grpc.aio.AioRpcError as error:
                code, details = error.code().name, (error.details() or "")[:100]
                transaction_id = _transaction_id(payload)
                self.records.append(
                    Record(SCORE, due, self.now(), code, transaction_id, details=details)
                )
            else:
                self.records.append(answered(SCORE, due, self.now(), response))

    async def _outcome(self, method: Any, payload: bytes, slots: asyncio.Semaphore) -> None:
        async with slots:
            sent = self.now()
            try:
                await method(payload, timeout=self._timeout)
                code = OK
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            request = scoring_pb2.OutcomeRequest.FromString(payload)
            self.records.append(Record(OUTCOME, sent, self.now(), code, request.transaction_id))


def answered(kind: str, sent: float, done: float, response: scoring_pb2.ScoreResponse) -> Record:
    """The record of a `Score` answer."""
    return Record(
        kind,
        sent,
        done,
        OK,
        response.transaction_id,
        response.model_version,
        response.decision_source,
        response.score,
        response.fallback_reason,
    )


class _Stream:
    """One `ScoreStream` call at a time, reopened after it ends; answers matched in order."""

    def __init__(self, channel: grpc.aio.Channel, load: RecordingLoad) -> None:
        self._method: Any = channel.stream_stream(
            f"{_SERVICE}/ScoreStream", response_deserializer=_score
        )
        self._load = load
        self._call: Any = None
        self._queue: asyncio.Queue[bytes | None] | None = None
        # due, transaction id, payload, and whether it is already a second try
        self._waiting: deque[tuple[float, str, bytes, bool]] = deque()
        self._tasks: list[asyncio.Task[None]] = []

    def send(self, payload: bytes, due: float, *, again: bool = False) -> None:
        if self._queue is None:
            self._open()
        assert self._queue is not None
        self._waiting.append((due, _transaction_id(payload), payload, again))
        self._queue.put_nowait(payload)

    async def finish(self, timeout: float) -> None:
        # A stream ended with UNAVAILABLE opens the next for what it owed: that one is
        # finished too (its transactions are second tries, so there is no third).
        while self._queue is not None:
            self._queue.put_nowait(None)
            tasks = self._tasks
            _, late = await asyncio.wait(tasks, timeout=timeout)
            if late:
                self._call.cancel()
                for task in tasks:  # a writer still waiting for its queue, too
                    task.cancel()
                await asyncio.wait(tasks)
                return
            if self._tasks is tasks:
                return

    def _open(self) -> None:
        self._call = self._method(timeout=3600)
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._write(self._call, self._queue)),
            asyncio.create_task(self._read(self._call, self._queue)),
        ]

    async def _write(self, call: Any, queue: asyncio.Queue[bytes | None]) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while (payload := await queue.get()) is not None:
                await call.write(payload)
            await call.done_writing()

    async def _read(self, call: Any, queue: asyncio.Queue[bytes | None]) -> None:
        code = "UNANSWERED"
        try:
            async for response in call:
                due = self._waiting.popleft()[0]
                self._load.records.append(answered(STREAM, due, self._load.now(), response))
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        except asyncio.CancelledError:
            pass
        # The call is over: what it still owed goes again on the next stream if it ended
        # with UNAVAILABLE (once), or failed with its status; later sends reopen.
        queue.put_nowait(None)  # its writer, if waiting for more, ends
        if call is self._call:
            self._queue = None
        owed = list(self._waiting)
        self._waiting.clear()
        for due, transaction_id, payload, again in owed:
            if code == "UNAVAILABLE" and not again:
                self.send(payload, due, again=True)
            else:
                record = Record(STREAM, due, self._load.now(), code, transaction_id)
                self._load.records.append(record)


def _score(data: bytes) -> scoring_pb2.ScoreResponse:
    return scoring_pb2.ScoreResponse.FromString(data)


def _transaction_id(payload: bytes) -> str:
    return scoring_pb2.ScoreRequest.FromString(payload).transaction.transaction_id
