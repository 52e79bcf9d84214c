"""Load clients against real grpc.aio servers in a thread: open vs closed loop, unary and
streams, status codes, several client processes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hdrh.histogram import HdrHistogram

from benchmarks.load.client import run_client
from benchmarks.load.histograms import LatencyRecorder
from benchmarks.load.traffic import Call, CallKind, OutcomeMix, build_calls, load_history
from benchmarks.measurements.load_run import LoadSettings, client_jobs, measure
from benchmarks.servers.floor import EmptyFloorServicer
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from tests.benchmarks.thread_server import ThreadServer

STALL_SECONDS = 0.2


class StallOnce(EmptyFloorServicer):
    """Blocks its event loop for 200 ms at one call, as a long pause in a server would."""

    def __init__(self, stalled_call: int) -> None:
        super().__init__()
        self._stalled_call = stalled_call
        self._calls = 0

    def answer(self, request: scoring_pb2.ScoreRequest) -> scoring_pb2.ScoreResponse:
        self._calls += 1
        if self._calls == self._stalled_call:
            time.sleep(STALL_SECONDS)
        return super().answer(request)


class RefuseEveryTenth(EmptyFloorServicer):
    """Answers RESOURCE_EXHAUSTED to every tenth Score call."""

    def __init__(self) -> None:
        super().__init__()
        self._calls = 0

    async def Score(self, request, context):
        self._calls += 1
        if self._calls % 10 == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shedding")
        return self.answer(request)


class EndStreamAtFifth(EmptyFloorServicer):
    """Ends every ScoreStream with INVALID_ARGUMENT at its fifth message."""

    async def ScoreStream(
        self, request_iterator: AsyncIterator[scoring_pb2.ScoreRequest], context
    ) -> AsyncIterator[scoring_pb2.ScoreResponse]:
        position = 0
        async for request in request_iterator:
            position += 1
            if position == 5:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad transaction")
            yield self.answer(request)


@pytest.fixture(scope="module")
def calls(small_history: Path) -> list[Call]:
    """1,200 rows of the small history, frauds reported 50 calls later."""
    history = load_history(small_history, 1200)
    return build_calls(history, "test", OutcomeMix(share=1.0, lag=50))


@pytest.fixture
def empty_server() -> Iterator[ThreadServer]:
    server = ThreadServer(EmptyFloorServicer())
    yield server
    server.stop()


def _load(target: str, **changes: Any) -> LoadSettings:
    """An open loop of unary calls, 400/s for 0.75 s, but for `changes`."""
    base = LoadSettings(target=target, mode="open", rpc="unary", seconds=0.75, rate=400.0)
    return dataclasses.replace(base, **changes)


def _scores(calls: list[Call]) -> int:
    return sum(call.kind is CallKind.SCORE for call in calls)


def test_open_loop_shows_a_server_stall_that_a_closed_loop_hides(calls: list[Call]):
    """A 200 ms stall delays every call due in it (open loop), not just the one in flight."""
    slow: dict[str, int] = {}
    for mode in ("open", "closed"):
        server = ThreadServer(StallOnce(stalled_call=100))
        try:
            load = _load(server.target, mode=mode, in_flight=1, seconds=1.5)
            recorder = _recorder(load, calls)
        finally:
            server.stop()
        slow[mode] = _count_at_least(recorder.overall, 150_000)

    assert slow["open"] >= 10
    assert slow["closed"] <= 2


def test_unary_calls_are_all_answered_and_counted(empty_server: ThreadServer, calls: list[Call]):
    """An open loop's Score and ReportOutcome calls all end OK and count once each."""
    load = _load(empty_server.target)

    measurement = measure("unary", load, calls)

    sent = calls[: load.calls_needed()]
    assert len(sent) > _scores(sent)  # outcome reports among them
    assert measurement.statuses == {"OK": _scores(sent)}
    assert measurement.outcome_statuses == {"OK": len(sent) - _scores(sent)}
    assert measurement.decisions == {"APPROVE": _scores(sent)}
    assert measurement.latency.count == _scores(sent)
    assert measurement.errors == 0


def test_error_statuses_are_counted_by_code(calls: list[Call]):
    """Calls the server refuses count under their gRPC status code, and as errors."""
    server = ThreadServer(RefuseEveryTenth())
    try:
        measurement = measure("refused", _load(server.target), calls)
    finally:
        server.stop()

    scores = _scores(calls[:300])
    assert measurement.statuses == {"OK": scores - scores // 10, "RESOURCE_EXHAUSTED": scores // 10}
    assert measurement.errors == scores // 10


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_stream_answers_are_matched_to_every_message(
    empty_server: ThreadServer, calls: list[Call], mode: str
):
    """On ScoreStream calls, open or closed loop, every message gets its answer counted."""
    load = _load(empty_server.target, mode=mode, rpc="stream", streams=3, in_flight=6)

    measurement = measure("stream", load, calls)

    scores = measurement.statuses["OK"]
    assert measurement.statuses == {"OK": scores}
    assert measurement.latency.count == scores
    if mode == "open":
        assert scores == _scores(calls[:300])


def test_a_failed_stream_counts_its_unanswered_messages_with_its_code(calls: list[Call]):
    """When the server ends a stream with an error, the messages it left count with that code."""
    server = ThreadServer(EndStreamAtFifth())
    try:
        load = _load(server.target, rpc="stream", streams=1, rate=200.0, seconds=0.5)
        measurement = measure("failed stream", load, calls)
    finally:
        server.stop()

    scores = _scores(calls[:100])
    assert measurement.statuses == {"OK": 4, "INVALID_ARGUMENT": scores - 4}


def test_two_client_processes_share_the_schedule(empty_server: ThreadServer, calls: list[Call]):
    """With two processes, every call is sent once and each process reports its CPU share;
    the run reports the client's CPU per call."""
    load = _load(empty_server.target, processes=2)

    measurement = measure("two", load, calls)

    assert measurement.statuses == {"OK": _scores(calls[:300])}
    assert len(measurement.client_cpu_share) == 2
    assert all(share > 0 for share in measurement.client_cpu_share)
    assert measurement.client_cpu_us_per_call > 0


def _recorder(load: LoadSettings, calls: list[Call]) -> LatencyRecorder:
    (job,) = client_jobs(load, calls)
    return LatencyRecorder.merged([run_client(job, lambda: None).latency])


def _count_at_least(histogram: HdrHistogram, microseconds: int) -> int:
    return sum(
        item.count_at_value_iterated_to
        for item in histogram.get_recorded_iterator()
        if item.value_iterated_to >= microseconds
    )
