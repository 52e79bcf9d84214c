"""`fraud-bench run --rpc batch`: swipes grouped into ScoreBatch calls, due with their last
swipe, and the load client counting each transaction of a batch's answer against a real
grpc.aio server in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from benchmarks.load.batches import in_batches
from benchmarks.load.traffic import Call, CallKind, OutcomeMix, build_calls, load_history
from benchmarks.measurements.load_run import LoadSettings, client_jobs, measure
from benchmarks.servers.floor import EmptyFloorServicer
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from tests.benchmarks.thread_server import ThreadServer


class RefuseEveryFifthBatch(EmptyFloorServicer):
    """Answers RESOURCE_EXHAUSTED to every fifth ScoreBatch call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    async def ScoreBatch(self, request, context):
        self.batches += 1
        if self.batches % 5 == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shedding")
        return await super().ScoreBatch(request, context)


@pytest.fixture(scope="module")
def calls(small_history: Path) -> list[Call]:
    """600 rows of the small history, frauds reported 50 calls later."""
    return build_calls(load_history(small_history, 600), "test", OutcomeMix(share=1.0, lag=50))


def test_swipes_go_in_order_in_batches_due_with_their_last_and_outcomes_stay_apart(
    calls: list[Call],
) -> None:
    due = [float(n) for n in range(len(calls))]
    batched, batched_due = in_batches(calls, due, 7)
    assert batched_due is not None
    swipes = [call for call in calls if call.kind is CallKind.SCORE]
    in_order = []
    for call, at in zip(batched, batched_due, strict=True):
        if call.kind is CallKind.OUTCOME:
            assert due[calls.index(call)] == at
            continue
        request = scoring_pb2.ScoreBatchRequest.FromString(call.payload)
        assert call.transactions == len(request.transactions) <= 7
        in_order += [one.SerializeToString() for one in request.transactions]
        assert at == due[calls.index(swipes[len(in_order) - 1])]  # its last swipe's
    assert in_order == [swipe.payload for swipe in swipes]
    assert {call.transactions for call in batched if call.kind is CallKind.BATCH} == {7, 600 % 7}
    assert in_batches(calls, None, 7)[1] is None


@pytest.fixture
def server() -> Iterator[tuple[ThreadServer, RefuseEveryFifthBatch]]:
    servicer = RefuseEveryFifthBatch()
    running = ThreadServer(servicer)
    yield running, servicer
    running.stop()


def test_each_transaction_of_a_batch_is_answered_or_failed_once_and_counted_as_sent(
    server: tuple[ThreadServer, RefuseEveryFifthBatch], calls: list[Call]
) -> None:
    """400 swipes/s for 1 s in batches of 10 from two processes: every transaction is
    counted once, OK or with its batch's status, and as a call sent."""
    running, servicer = server
    load = LoadSettings(
        target=running.target, mode="open", rpc="batch", seconds=1.0, rate=400.0,
        processes=2, batch_size=10,
    )  # fmt: skip
    sent = calls[: load.calls_needed()]
    swipes = sum(call.kind is CallKind.SCORE for call in sent)
    jobs = client_jobs(load, calls)
    batches = sum(call.kind is CallKind.BATCH for job in jobs for call in job.calls)

    measurement = measure("batch", load, calls)

    assert servicer.batches == batches
    batched = sum(
        call.transactions for job in jobs for call in job.calls if call.kind is CallKind.BATCH
    )
    assert batched == swipes
    assert measurement.statuses["OK"] + measurement.statuses["RESOURCE_EXHAUSTED"] == swipes
    assert 0 < measurement.statuses["RESOURCE_EXHAUSTED"] < swipes
    assert measurement.decisions == {"APPROVE": measurement.statuses["OK"]}
    assert measurement.outcome_statuses == {"OK": len(sent) - swipes}
    assert measurement.latency.count == measurement.statuses["OK"]
