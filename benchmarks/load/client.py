"""One load-client process: a grpc.aio event loop that sends its share of a run's calls.

Open loop (`ClientJob.due` set): call i is sent at its due time whatever the earlier
answers are doing, and its latency runs from that due time, so a call that waits (for a
free slot under `in_flight`, for the event loop, for a stream's writer) is late and counts
as such. Closed loop (`due` None): `in_flight` workers each send a call, wait for its
answer and send the next, until `seconds` have passed or the calls run out; latency runs
from the moment a worker sent.

`Score` goes unary or on `ScoreStream` calls (`streams` of them, messages dealt round
robin); `ReportOutcome` is always unary. The calls are spread over `connections`
channels, each with its own TCP connection (so that a server with several worker
processes sharing a port gets several connections to share). Requests travel as the
bytes `benchmarks.load.traffic` serialized, with no message built on the hot path.

The process's CPU share (user plus system time, all threads, over wall time, psutil), the
share of the time its event loop waited for a CPU, and its garbage-collection pauses
(which stop the event loop) say whether the client itself held the run back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import grpc
import psutil

from benchmarks.load.histograms import EncodedLatency
from benchmarks.load.streams import ScoreStreamSender
from benchmarks.load.tally import OK, Tally
from benchmarks.load.traffic import Call, CallKind
from benchmarks.probes.gc_pauses import GcPauses
from benchmarks.probes.process_usage import run_queue_wait_seconds
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.client import balanced_target

Rpc = Literal["unary", "stream"]
RPCS: tuple[Rpc, ...] = get_args(Rpc)
CONNECT_TIMEOUT = 10.0
_SERVICE = scoring_pb2.DESCRIPTOR.services_by_name["FraudScoring"].full_name
# One TCP connection per channel: channels to one target otherwise share a subchannel.
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [("grpc.use_local_subchannel_pool", 1)]
# Several replicas: each call to the next (the recommended client's balancing, without its
# retries, which would hide the errors a run must count).
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


@dataclass(frozen=True)
class ClientJob:
    """One process's share of a run.

    `due`: seconds from the start at which each call is due (open loop), or None (closed
    loop). `in_flight`: the cap on calls in flight (open loop) or the number kept in
    flight (closed loop). `seconds`: how long a closed loop goes on sending. `timeout`:
    each unary call's deadline, and how long the end of the run waits for late answers.
    `metadata`: sent with every call (a caller's token).
    """

    target: str
    calls: Sequence[Call]
    due: Sequence[float] | None
    rpc: Rpc
    in_flight: int
    seconds: float
    timeout: float
    connections: int = 1
    streams: int = 1
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ClientResult:
    """What one client process saw, and what it cost; times in seconds."""

    latency: EncodedLatency
    statuses: Counter[str]
    outcome_statuses: Counter[str]
    decisions: Counter[str]
    fallbacks: int
    last_answer: float
    cpu_seconds: float
    run_queue_wait_seconds: float
    wall_seconds: float
    gc_pauses: list[float]


def run_client(job: ClientJob, ready: Callable[[], object]) -> ClientResult:
    """Connect, call `ready()` (it returns once every client is connected), run `job`."""
    # The calls are long-lived objects: the collector need not scan them again and again.
    gc.collect()
    gc.freeze()
    try:
        with GcPauses() as pauses:
            result = asyncio.run(_run(job, ready))
    finally:
        gc.unfreeze()
    return dataclasses.replace(result, gc_pauses=pauses.seconds)


async def _run(job: ClientJob, ready: Callable[[], object]) -> ClientResult:
    target, options = job.target, _CHANNEL_OPTIONS
    if "," in target:
        target = balanced_target(target.split(","))
        options = [*options, ("grpc.service_config", _ROUND_ROBIN)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(job.connections)]
    try:
        ready_all = asyncio.gather(*(channel.channel_ready() for channel in channels))
        await asyncio.wait_for(ready_all, CONNECT_TIMEOUT)
        await asyncio.to_thread(ready)
        cpu, wait, wall = _cpu_seconds(), _run_queue_wait(), time.perf_counter()
        tally = Tally(wall)
        sender = _Sender(job, channels, tally)
        if job.due is None:
            await _closed_loop(job, sender)
        else:
            await _open_loop(job.calls, job.due, sender, tally.start)
        await sender.finish(job.timeout)
    finally:
        for channel in channels:
            await channel.close()
    return ClientResult(
        latency=tally.latency.encode(),
        statuses=tally.statuses,
        outcome_statuses=tally.outcome_statuses,
        decisions=tally.decisions,
        fallbacks=tally.fallbacks,
        last_answer=tally.last_answer,
        cpu_seconds=_cpu_seconds() - cpu,
        run_queue_wait_seconds=_run_queue_wait() - wait,
        wall_seconds=time.perf_counter() - wall,
        gc_pauses=[],
    )


async def _open_loop(
    calls: Sequence[Call], due: Sequence[float], sender: _Sender, start: float
) -> None:
    for call, offset in zip(calls, due, strict=True):
        # Always yields to the loop, even when late, so that answers keep being taken.
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        sender.dispatch(call, start + offset)


async def _closed_loop(job: ClientJob, sender: _Sender) -> None:
    calls = iter(job.calls)
    stop_at = time.perf_counter() + job.seconds
    await asyncio.gather(*(_worker(calls, sender, w, stop_at) for w in range(job.in_flight)))


async def _worker(calls: Iterator[Call], sender: _Sender, number: int, stop_at: float) -> None:
    for call in calls:  # one iterator shared by every worker: each call is sent once
        now = time.perf_counter()
        if now >= stop_at:
            return
        await sender.complete(call, now, number)


class _Sender:
    """Sends calls unary or on streams and counts their answers in a `Tally`."""

    def __init__(self, job: ClientJob, channels: list[grpc.aio.Channel], tally: Tally) -> None:
        self._tally = tally
        self._timeout = job.timeout
        self._metadata = job.metadata or None
        self._slots = asyncio.Semaphore(job.in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._score = itertools.cycle([_score_method(channel) for channel in channels])
        self._outcome = itertools.cycle([_outcome_method(channel) for channel in channels])
        streams = job.streams if job.rpc == "stream" else 0
        # The stream's deadline only bounds a run that went wrong: the drain ends it sooner.
        deadline = job.seconds + 2 * job.timeout + 60
        self._streams = [
            ScoreStreamSender(
                _stream_method(channel)(timeout=deadline, metadata=self._metadata), tally
            )
            for channel in itertools.islice(itertools.cycle(channels), streams)
        ]
        self._next_stream = itertools.cycle(self._streams)

    def dispatch(self, call: Call, due: float) -> None:
        """Send `call`, due at `due`, without waiting for its answer (open loop)."""
        if call.kind is CallKind.SCORE and self._streams:
            next(self._next_stream).send(call.payload, due, None)
            return
        task = asyncio.create_task(self._capped(call, due))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def complete(self, call: Call, due: float, worker: int) -> None:
        """Send `call` and wait until its answer is counted (closed loop)."""
        if call.kind is CallKind.OUTCOME:
            await self._report(call.payload)
        elif self._streams:
            answered = asyncio.get_running_loop().create_future()
            self._streams[worker % len(self._streams)].send(call.payload, due, answered)
            await answered
        else:
            await self._score_unary(call.payload, due)

    async def finish(self, timeout: float) -> None:
        """Wait for the answers still due: unary calls end by their deadline."""
        if self._tasks:
            await asyncio.wait(self._tasks)
        await asyncio.gather(*(stream.finish(timeout) for stream in self._streams))

    async def _capped(self, call: Call, due: float) -> None:
        async with self._slots:
            if call.kind is CallKind.OUTCOME:
                await self._report(call.payload)
            else:
                await self._score_unary(call.payload, due)

    async def _score_unary(self, payload: bytes, due: float) -> None:
        try:
            response = await next(self._score)(
                payload, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            self._tally.score_failed(error.code().name)
        else:
            self._tally.score_answered(response, due)

    async def _report(self, payload: bytes) -> None:
        try:
            await next(self._outcome)(payload, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            self._tally.outcome_done(error.code().name)
        else:
            self._tally.outcome_done(OK)


def _score_method(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    # No request serializer: the requests are bytes already.
    return channel.unary_unary(
        f"/{_SERVICE}/Score", response_deserializer=scoring_pb2.ScoreResponse.FromString
    )


def _outcome_method(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(
        f"/{_SERVICE}/ReportOutcome", response_deserializer=scoring_pb2.OutcomeResponse.FromString
    )


def _stream_method(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
    return channel.stream_stream(
        f"/{_SERVICE}/ScoreStream", response_deserializer=scoring_pb2.ScoreResponse.FromString
    )


def _run_queue_wait() -> float:
    return run_queue_wait_seconds(os.getpid())


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system
