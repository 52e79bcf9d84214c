"""One load-client process: grpc's sync API with futures and callbacks, sending its share of
a run's calls.

Open loop (`ClientJob.due` set): call i is sent at its due time whatever the earlier
answers are doing, and its latency runs from that due time, so a call that waits (for a
free slot under `in_flight`, for a CPU, for a stream's writer) is late and counts as
such. Closed loop (`due` None): `in_flight` chains each send a call and, from its answer's
callback, the next, until `seconds` have passed or the calls run out; latency runs from
the moment a call was sent.

`Score` goes unary, on `ScoreStream` calls (`streams` of them, messages dealt round
robin) or in `ScoreBatch` calls (`benchmarks.load.batches`: each answer's transactions
are timed from the batch's due time, and count as calls sent, one each, for the client's
CPU per transaction); `ReportOutcome` is always unary. The calls are spread over `connections`
channels, each with its own TCP connection (so that a server with several worker
processes sharing a port gets several connections to share).

Cheap on purpose, since it shares the cores with the server it measures: requests travel
as the bytes `benchmarks.load.traffic` serialized, answers are kept as bytes while the run
lasts (an answer's callback notes only when it came), and the answers are parsed and
counted into the histograms once the run is over. The sync API sends from the calling
thread and completes calls on grpc's own thread, with no event loop in between.

The process's CPU share (user plus system time, all threads, over the run's wall time,
psutil; the counting after the run is left out, since it competes with no server), the
share of the time its threads waited for a CPU, and its garbage-collection pauses say
whether the client itself held the run back.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import psutil

from benchmarks.load.histograms import EncodedLatency
from benchmarks.load.settings import RPCS as RPCS
from benchmarks.load.settings import Rpc as Rpc
from benchmarks.load.streams import ScoreStreamSender, StreamAnswers
from benchmarks.load.tally import OK, Tally
from benchmarks.load.traffic import Call, CallKind
from benchmarks.probes.gc_pauses import GcPauses
from benchmarks.probes.process_usage import run_queue_wait_seconds
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.client import balanced_target

CONNECT_TIMEOUT = 10.0
_SERVICE = scoring_pb2.DESCRIPTOR.services_by_name["FraudScoring"].full_name
# One TCP connection per channel: channels to one target otherwise share a subchannel.
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [("grpc.use_local_subchannel_pool", 1)]
# Several replicas: each call to the next (the recommended client's balancing, without its
# retries, which would hide the errors a run must count).
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
_HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
# How often the end of a run looks whether the last answers are in.
_POLL_SECONDS = 0.002
# Beyond the calls' own deadlines, how long the end of a run waits for their callbacks.
_DRAIN_MARGIN_SECONDS = 10.0


@dataclass(frozen=True)
class ClientJob:
    """One process's share of a run.

    `due`: seconds from the start at which each call is due (open loop), or None (closed
    loop). `in_flight`: the cap on unary calls in flight (open loop) or the number kept in
    flight (closed loop). `seconds`: how long a closed loop goes on sending. `timeout`:
    each unary call's deadline, and how long the end of the run waits for late answers.
    `metadata`: sent with every call (a caller's token). `method`: the path `Score` calls
    go to instead, on a peer server that is not fraud-serve (MLServer's
    `/inference.GRPCInferenceService/ModelInfer`): its answers are timed and counted OK,
    not read as `ScoreResponse`s.
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
    method: str | None = None


@dataclass(frozen=True)
class ClientResult:
    """What one client process saw, and what it cost; times in seconds.

    `cpu_seconds` and `calls_sent` cover the run, from the start to the last answer:
    their ratio is the client's CPU per call.
    """

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
    calls_sent: int = 0


def run_client(job: ClientJob, ready: Callable[[], object]) -> ClientResult:
    """Connect, call `ready()` (it returns once every client is connected), run `job`."""
    # The calls are long-lived objects: the collector need not scan them again and again.
    gc.collect()
    gc.freeze()
    try:
        with GcPauses() as pauses:
            result = _run(job, ready)
    finally:
        gc.unfreeze()
    return dataclasses.replace(result, gc_pauses=pauses.seconds)


def _run(job: ClientJob, ready: Callable[[], object]) -> ClientResult:
    target, options = job.target, _CHANNEL_OPTIONS
    if "," in target:
        target = balanced_target(target.split(","))
        options = [*options, ("grpc.service_config", _ROUND_ROBIN)]
    channels = [grpc.insecure_channel(target, options=options) for _ in range(job.connections)]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
        keepers = [
            _keep_spinning(channel, job.seconds + 2 * job.timeout + 60) for channel in channels
        ]
        ready()
        cpu, wait, start = _cpu_seconds(), _run_queue_wait(), time.perf_counter()
        sender = _Sender(job, channels, start)
        if job.due is None:
            sender.closed_loop(job.seconds)
        else:
            sender.open_loop(job.due)
        sender.finish(job.timeout)
        cpu, wait = _cpu_seconds() - cpu, _run_queue_wait() - wait
        wall = time.perf_counter() - start
        for keeper in keepers:
            keeper.cancel()
    finally:
        for channel in channels:
            channel.close()
    tally = sender.count(Tally(start))
    return ClientResult(
        latency=tally.latency.encode(),
        statuses=tally.statuses,
        outcome_statuses=tally.outcome_statuses,
        decisions=tally.decisions,
        fallbacks=tally.fallbacks,
        last_answer=tally.last_answer,
        cpu_seconds=cpu,
        run_queue_wait_seconds=wait,
        wall_seconds=wall,
        gc_pauses=[],
        calls_sent=sender.sent,
    )


class _Sender:
    """Sends calls unary or on streams and keeps what came back until `count`.

    Callbacks run on grpc's threads: each appends what came back to a list (atomic under
    the GIL) and, in a closed loop, sends the next call.
    """

    def __init__(self, job: ClientJob, channels: list[grpc.Channel], start: float) -> None:
        self._calls: Iterator[Call] = iter(job.calls)
        self._timeout = job.timeout
        self._metadata = job.metadata or None
        self._start = start
        self._stop_at = start + job.seconds
        self._slots = threading.Semaphore(job.in_flight)
        self._in_flight = job.in_flight
        self.sent = 0
        self._unary_sent = 0
        # Only what the counting needs, no future: the run keeps few objects for the
        # collector to walk. (due, answered at, response) per Score answer, the status
        # code of each failed Score call and of each outcome report.
        self._scores: list[tuple[float, float, bytes]] = []
        self._batches: list[tuple[float, float, bytes]] = []  # the same, per ScoreBatch
        self._failures: list[tuple[str, int]] = []  # status code, transactions
        self._outcomes: list[str] = []
        self._score = itertools.cycle(
            [_method(channel, "Score", job.method) for channel in channels]
        )
        self._read_answers = job.method is None
        self._outcome = itertools.cycle([_method(channel, "ReportOutcome") for channel in channels])
        self._batch = itertools.cycle([_method(channel, "ScoreBatch") for channel in channels])
        streams = job.streams if job.rpc == "stream" else 0
        # The stream's deadline only bounds a run that went wrong: the drain ends it sooner.
        deadline = job.seconds + 2 * job.timeout + 60
        self._answers = StreamAnswers()
        self._streams = [
            ScoreStreamSender(_stream_method(channel), deadline, self._metadata, self._answers)
            for channel in itertools.islice(itertools.cycle(channels), streams)
        ]
        self._chains_ended = 0
        self._chains_lock = threading.Lock()
        self._all_chains_ended = threading.Event()

    def open_loop(self, due: Sequence[float]) -> None:
        """Send each call at its due time (seconds from the start)."""
        start, next_stream = self._start, itertools.cycle(self._streams)
        for call, offset in zip(self._calls, due, strict=True):
            at = start + offset
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if call.kind is CallKind.SCORE and self._streams:
                next(next_stream).send(call.payload, at, None)
                self.sent += 1
                continue
            self._slots.acquire()  # a call that waits for a slot is late, and counts so
            self._send_unary(call, at, self._slots.release)

    def closed_loop(self, seconds: float) -> None:
        """Keep `in_flight` calls going (chain k on stream k mod streams) for `seconds`."""
        for chain in range(self._in_flight):
            self._advance(chain)
        # Every chain ends by itself: once the time is up, or at an answer's deadline.
        self._all_chains_ended.wait(seconds + 2 * self._timeout + _DRAIN_MARGIN_SECONDS)

    def finish(self, timeout: float) -> None:
        """Wait for the answers still due: unary calls end by their deadline, streams are
        closed and given `timeout` s for their last answers."""
        give_up = time.perf_counter() + timeout + _DRAIN_MARGIN_SECONDS
        while self._unary_done() < self._unary_sent:
            if time.perf_counter() >= give_up:
                break
            time.sleep(_POLL_SECONDS)
        for stream in self._streams:
            stream.close()
        for stream in self._streams:
            stream.finish(timeout)

    def _unary_done(self) -> int:
        scores, batches = len(self._scores), len(self._batches)
        return scores + batches + len(self._failures) + len(self._outcomes)

    def count(self, tally: Tally) -> Tally:
        """Everything that came back, parsed and counted into `tally`."""
        for due, at, payload in self._scores:
            if self._read_answers:
                tally.score_answered(_score_response(payload), due, at)
            else:
                tally.answer_timed(due, at)
        for due, at, payload in self._batches:
            for result in scoring_pb2.ScoreBatchResponse.FromString(payload).results:
                tally.score_answered(result, due, at)
        for code, transactions in self._failures:
            for _ in range(transactions):
                tally.score_failed(code)
        for code in self._outcomes:
            tally.outcome_done(code)
        self._answers.count(tally)
        return tally

    def _advance(self, chain: int) -> None:
        """Send chain `chain`'s next call, or end the chain."""
        now = time.perf_counter()
        call = next(self._calls, None) if now < self._stop_at else None
        if call is None:
            self._end_chain()
            return

        def then() -> None:
            self._advance(chain)

        if call.kind is CallKind.SCORE and self._streams:
            stream = self._streams[chain % len(self._streams)]
            if stream.failed:  # its failure is counted; more sends would only spin
                self._end_chain()
                return
            stream.send(call.payload, now, then)
            self.sent += 1
        else:
            self._send_unary(call, now, then)

    def _end_chain(self) -> None:
        with self._chains_lock:
            self._chains_ended += 1
            if self._chains_ended == self._in_flight:
                self._all_chains_ended.set()

    def _send_unary(self, call: Call, due: float, then: Callable[[], None]) -> None:
        self._unary_sent += 1
        self.sent += call.transactions
        if call.kind is CallKind.OUTCOME:
            outcomes = self._outcomes

            def reported(future: grpc.Future[bytes]) -> None:
                error = future.exception()
                outcomes.append(OK if error is None else _code(error))
                then()

            future = next(self._outcome).future(
                call.payload, timeout=self._timeout, metadata=self._metadata
            )
            future.add_done_callback(reported)
            return
        batch = call.kind is CallKind.BATCH
        scores = self._batches if batch else self._scores
        failures, perf_counter, transactions = self._failures, time.perf_counter, call.transactions

        def answered(future: grpc.Future[bytes]) -> None:
            at = perf_counter()
            error = future.exception()
            if error is None:
                scores.append((due, at, future.result()))
            else:  # each of a failed batch's transactions counts as failed
                failures.append((_code(error), transactions))
            then()

        method = next(self._batch if batch else self._score)
        future = method.future(call.payload, timeout=self._timeout, metadata=self._metadata)
        future.add_done_callback(answered)


def _keep_spinning(channel: grpc.Channel, seconds: float) -> grpc.Call:
    """A health Watch left open for the run, so that `channel` always has a call in flight.

    grpc's sync API reads a channel's completions on a thread that it starts when the
    channel's first call begins and ends when its last call ends: an open loop with a call
    or less in flight per channel would start a thread for nearly every call (tens of µs of
    client CPU each). The watch is one idle server-streaming call; if the server has no
    health service it ends at once, and the client works as before, only dearer.
    """
    watch: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(_HEALTH_WATCH)
    return watch(b"", timeout=seconds)  # b"": the server as a whole


def _score_response(payload: bytes) -> scoring_pb2.ScoreResponse:
    return scoring_pb2.ScoreResponse.FromString(payload)


def _code(error: BaseException) -> str:
    if isinstance(error, grpc.Call):
        code: grpc.StatusCode = error.code()
        return code.name
    return "UNKNOWN"


def _method(
    channel: grpc.Channel, name: str, path: str | None = None
) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    # No serializers: requests are bytes already, answers stay bytes until the run is over.
    return channel.unary_unary(path or f"/{_SERVICE}/{name}")


def _stream_method(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable[bytes, bytes]:
    return channel.stream_stream(f"/{_SERVICE}/ScoreStream")


def _run_queue_wait() -> float:
    return run_queue_wait_seconds(os.getpid())


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system
