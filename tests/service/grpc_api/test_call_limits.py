"""Limits on streams, connections and calls that hold them open, over real loopback gRPC:
the stream budget apart from the in-flight limit, idle and lifetime limits of a stream, a
unary request that never arrives, a call already past its deadline, the per-connection
call cap, idle connections and keepalive enforcement.

The scoring core is a stand-in that answers at once and counts its calls: what is tested
is what reaches it, not how it scores.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest

from service.config.settings import ConnectionSettings, ServerSettings, ServeSettings
from service.core.domain import (
    Decision,
    DecisionSource,
    ModelSummary,
    RawOutcome,
    RawTransaction,
    ScoreResult,
)
from service.core.scoring import BatchAnswers, score_one_by_one
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.interceptors import (
    OVERLOADED_DETAILS,
    REQUEST_NOT_SENT_DETAILS,
    STREAM_IDLE_DETAILS,
    STREAM_LIFETIME_DETAILS,
)
from tests.process_metrics import sample_value
from tests.service.grpc_api.held_calls import OpenStream, UnsentRequest, score_request
from tests.service.loopback import LoopbackServer

TIMEOUT = 10.0  # generous: the machine is shared; no test relies on it running out
Status = grpc.StatusCode


class CountingCore:
    """Approves every transaction at once and counts the calls that reached it."""

    def __init__(self) -> None:
        self.scored: list[str] = []

    def score(self, raw: RawTransaction, *, deadline: float | None) -> ScoreResult:
        self.scored.append(raw.transaction_id)
        return ScoreResult(
            raw.transaction_id, 0.01, Decision.APPROVE, (), "v1", DecisionSource.MODEL, None
        )

    def score_batch(
        self,
        requests: Sequence[tuple[RawTransaction, float | None]],
        *,
        validate_all_first: bool = False,
    ) -> BatchAnswers:
        return score_one_by_one(self.score, requests)

    def report_outcome(self, raw: RawOutcome) -> None:
        """Accepts every outcome."""

    def model_summary(self) -> ModelSummary:
        raise NotImplementedError


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[LoopbackServer, CountingCore]]]:
    """Start loopback servers over a counting core; all are stopped after the test."""
    servers: list[LoopbackServer] = []

    def start(
        *, server: ServerSettings | None = None, connections: ConnectionSettings | None = None
    ) -> tuple[LoopbackServer, CountingCore]:
        settings = ServeSettings(
            server=server or ServerSettings(host="127.0.0.1", port=0),
            connections=connections or ConnectionSettings(),
        )
        core = CountingCore()
        servers.append(LoopbackServer(settings, core))
        return servers[-1], core

    yield start
    for started in servers:
        started.stop()


def _sample(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error: Any = raised.value  # an RpcError that is also a grpc.Call
    return error.code(), error.details() or ""


def test_idle_streams_hold_no_in_flight_slot_and_have_a_budget_of_their_own(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """With the stream budget full of idle streams, unary calls are still answered (the old
    design shed them); a stream beyond the budget is RESOURCE_EXHAUSTED, and a stream that
    closes makes room."""
    server, _core = serve(
        server=ServerSettings(host="127.0.0.1", port=0, max_in_flight=1),
        connections=ConnectionSettings(max_open_streams=2),
    )
    stub = scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(server.target))
    streams = [OpenStream(stub) for _ in range(2)]
    assert [stream.send(f"idle-{n}") for n, stream in enumerate(streams)] == ["idle-0", "idle-1"]
    _wait_until(lambda: _sample("fraud_rpc_in_flight") == 0)
    assert _sample("fraud_streams_open") == 2
    shed_before = _sample("fraud_shed_total")

    assert [
        stub.Score(score_request(f"u-{n}"), timeout=TIMEOUT).transaction_id for n in range(5)
    ] == [f"u-{n}" for n in range(5)]
    refused = stub.ScoreStream(iter([score_request("third")]), timeout=TIMEOUT)
    assert _failure(lambda: next(refused)) == (Status.RESOURCE_EXHAUSTED, OVERLOADED_DETAILS)
    assert _sample("fraud_shed_total") == shed_before + 1

    streams[0].close()
    _wait_until(lambda: _sample("fraud_streams_open") == 1)
    admitted = OpenStream(stub)
    assert admitted.send("after") == "after"
    for stream in (streams[1], admitted):
        stream.close()
    _wait_until(lambda: _sample("fraud_streams_open") == 0)


def test_a_stream_quiet_for_the_idle_limit_is_ended_and_frees_its_place(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """A stream whose client sends nothing for stream_idle_seconds ends UNAVAILABLE after
    the answers it was owed; its place in the budget is free again."""
    server, _core = serve(
        connections=ConnectionSettings(max_open_streams=1, stream_idle_seconds=0.3)
    )
    stub = scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(server.target))
    idle_before = _sample("fraud_calls_ended_early_total", reason="stream_idle")
    stream = OpenStream(stub)
    assert stream.send("before-quiet") == "before-quiet"
    started = time.monotonic()
    assert _failure(lambda: next(stream.answers)) == (Status.UNAVAILABLE, STREAM_IDLE_DETAILS)
    assert time.monotonic() - started >= 0.25
    assert _sample("fraud_calls_ended_early_total", reason="stream_idle") == idle_before + 1
    _wait_until(lambda: _sample("fraud_streams_open") == 0)
    assert OpenStream(stub).send("next-stream") == "next-stream"


def test_a_stream_open_for_its_lifetime_is_ended_before_its_next_transaction(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """A stream that keeps sending is ended UNAVAILABLE once it has been open
    stream_max_seconds: every transaction read was answered, none is read after."""
    server, core = serve(
        connections=ConnectionSettings(stream_idle_seconds=5, stream_max_seconds=0.6)
    )
    stub = scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(server.target))
    lifetime_before = _sample("fraud_calls_ended_early_total", reason="stream_lifetime")

    def steady() -> Iterator[scoring_pb2.ScoreRequest]:
        for number in range(50):
            yield score_request(f"steady-{number}")
            time.sleep(0.05)

    answered: list[str] = []

    def read_answers() -> None:
        for answer in stub.ScoreStream(steady(), timeout=TIMEOUT):
            answered.append(answer.transaction_id)

    assert _failure(read_answers) == (Status.UNAVAILABLE, STREAM_LIFETIME_DETAILS)
    assert 3 <= len(answered) < 50
    assert core.scored == answered  # nothing read was left unanswered
    assert _sample("fraud_calls_ended_early_total", reason="stream_lifetime") == (
        lifetime_before + 1
    )


def test_a_unary_request_that_never_arrives_holds_its_slot_for_the_read_limit_only(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """A Score call whose request does not come holds the one in-flight slot (other calls
    are shed) until request_read_seconds, then ends UNAVAILABLE, and calls flow again."""
    server, core = serve(
        server=ServerSettings(host="127.0.0.1", port=0, max_in_flight=1),
        connections=ConnectionSettings(request_read_seconds=1.0),
    )
    channel = grpc.insecure_channel(server.target)
    stub = scoring_pb2_grpc.FraudScoringStub(channel)
    unsent_before = _sample("fraud_calls_ended_early_total", reason="request_not_sent")
    unsent = UnsentRequest(channel)
    _wait_until(lambda: _sample("fraud_rpc_in_flight") == 1)
    code, _details = _failure(lambda: stub.Score(score_request("shed"), timeout=TIMEOUT))
    assert code == Status.RESOURCE_EXHAUSTED

    assert unsent.failure() == (Status.UNAVAILABLE, REQUEST_NOT_SENT_DETAILS)
    assert _sample("fraud_calls_ended_early_total", reason="request_not_sent") == (
        unsent_before + 1
    )
    _wait_until(lambda: _sample("fraud_rpc_in_flight") == 0)
    assert stub.Score(score_request("after"), timeout=TIMEOUT).transaction_id == "after"
    assert core.scored == ["after"]
    unsent.cancel()


def test_unary_requests_that_never_arrive_each_end_at_their_own_read_limit(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """Two Score calls whose requests do not come, picked up at different times, both end
    UNAVAILABLE (one timer serves every waiting read: the second's is set after the
    first's has gone off), while calls whose requests come meanwhile are answered."""
    server, core = serve(connections=ConnectionSettings(request_read_seconds=0.4))
    channel = grpc.insecure_channel(server.target)
    stub = scoring_pb2_grpc.FraudScoringStub(channel)
    unsent_before = _sample("fraud_calls_ended_early_total", reason="request_not_sent")
    first = UnsentRequest(channel)
    assert stub.Score(score_request("between"), timeout=TIMEOUT).transaction_id == "between"
    time.sleep(0.2)
    second = UnsentRequest(channel)

    assert first.failure() == (Status.UNAVAILABLE, REQUEST_NOT_SENT_DETAILS)
    assert second.failure() == (Status.UNAVAILABLE, REQUEST_NOT_SENT_DETAILS)
    assert stub.Score(score_request("after"), timeout=TIMEOUT).transaction_id == "after"
    assert _sample("fraud_calls_ended_early_total", reason="request_not_sent") == (
        unsent_before + 2
    )
    assert core.scored == ["between", "after"]
    _wait_until(lambda: _sample("fraud_rpc_in_flight") == 0)
    first.cancel()
    second.cancel()


def test_calls_past_their_deadline_when_picked_up_are_refused_without_work(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """Calls that waited past their deadline for a busy server (its event loop held) are
    answered DEADLINE_EXCEEDED when it picks them up: the core never sees them."""
    server, core = serve()
    stub = scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(server.target))
    assert stub.Score(score_request("warm"), timeout=TIMEOUT).transaction_id == "warm"
    passed_before = _sample("fraud_calls_ended_early_total", reason="deadline_passed")
    exceeded_before = _sample("fraud_rpc_requests_total", rpc="Score", code="DEADLINE_EXCEEDED")

    async def hold_the_loop() -> None:
        time.sleep(0.6)  # blocks the server's event loop: calls queue meanwhile

    held = server.submit(hold_the_loop())
    time.sleep(0.05)
    late = [stub.Score.future(score_request(f"late-{n}"), timeout=0.2) for n in range(3)]
    for call in late:
        assert _failure(call.result)[0] == Status.DEADLINE_EXCEEDED
    held.result(timeout=TIMEOUT)

    assert stub.Score(score_request("on-time"), timeout=TIMEOUT).transaction_id == "on-time"
    assert core.scored == ["warm", "on-time"]
    _wait_until(
        lambda: (
            _sample("fraud_calls_ended_early_total", reason="deadline_passed") == passed_before + 3
        )
    )
    assert _sample("fraud_rpc_requests_total", rpc="Score", code="DEADLINE_EXCEEDED") == (
        exceeded_before + 3
    )


def test_one_connection_cannot_open_more_calls_than_its_cap(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """With max_calls_per_connection 2, a third stream on the same connection waits on the
    client's side (the server never sees it) until one of the two closes."""
    server, _core = serve(connections=ConnectionSettings(max_calls_per_connection=2))
    stub = scoring_pb2_grpc.FraudScoringStub(grpc.insecure_channel(server.target))
    streams = [OpenStream(stub) for _ in range(2)]
    assert [stream.send(f"s-{n}") for n, stream in enumerate(streams)] == ["s-0", "s-1"]
    third = OpenStream(stub)
    answered: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: answered.put(third.send("third")), daemon=True).start()
    time.sleep(0.5)
    assert answered.empty()
    assert _sample("fraud_streams_open") == 2

    streams[0].close()
    assert answered.get(timeout=TIMEOUT) == "third"
    for stream in (streams[1], third):
        stream.close()


def test_a_connection_without_calls_for_max_idle_is_sent_away(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """A connection with no call for max_idle_seconds gets a GOAWAY: the channel goes back
    to IDLE, and its next call connects again and is answered."""
    server, _core = serve(connections=ConnectionSettings(max_idle_seconds=0.3))
    channel = grpc.insecure_channel(server.target)
    states: list[grpc.ChannelConnectivity] = []
    channel.subscribe(states.append)
    stub = scoring_pb2_grpc.FraudScoringStub(channel)
    assert stub.Score(score_request("first"), timeout=TIMEOUT).transaction_id == "first"
    # Connectivity changes reach the callback on grpc's own thread, a moment later.
    _wait_until(lambda: grpc.ChannelConnectivity.READY in states)
    _wait_until(lambda: states[-1] == grpc.ChannelConnectivity.IDLE)
    assert stub.Score(score_request("again"), timeout=TIMEOUT).transaction_id == "again"
    channel.close()


def test_a_client_pinging_more_often_than_allowed_is_sent_away(
    serve: Callable[..., tuple[LoopbackServer, CountingCore]],
) -> None:
    """Keepalive enforcement: a client pinging every 100 ms, against the server's minimum
    of 1 s, is sent away after two such pings, and its open stream ends UNAVAILABLE."""
    server, _core = serve(
        server=ServerSettings(host="127.0.0.1", port=0, min_client_ping_seconds=1)
    )
    eager = grpc.insecure_channel(
        server.target,
        options=[
            ("grpc.keepalive_time_ms", 100),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    stream = OpenStream(scoring_pb2_grpc.FraudScoringStub(eager))
    assert stream.send("pinging") == "pinging"
    code, details = _failure(lambda: next(stream.answers))
    assert (code, details) == (Status.UNAVAILABLE, "Too many pings")
    eager.close()
