"""What a call leaves behind once it has ended, over real loopback gRPC: nothing that only
Python's cyclic garbage collector could free. The server runs without full collections
(`service.observability.gc_policy`), so a reference cycle that outlives two young
collections, as a long-lived stream's does, would never be freed.

The scoring core is a stand-in that approves at once: what is tested is the gRPC layer.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from service.config.settings import ServerSettings, ServeSettings
from service.grpc_api._proto.fraud.v1 import scoring_pb2_grpc
from service.grpc_api.interceptors import AdmissionInterceptor
from tests.service.grpc_api.held_calls import score_request
from tests.service.grpc_api.test_call_limits import CountingCore
from tests.service.loopback import LoopbackServer

TIMEOUT = 10.0  # generous: the machine is shared; no test relies on it running out
CALLS = 20
# The interceptor's own objects of a call: one of each per call, while it runs.
CALL_TYPES = ("_Call", "_StreamRequests")
SCORE = "/fraud.v1.FraudScoring/Score"
SCORE_STREAM = "/fraud.v1.FraudScoring/ScoreStream"
MALFORMED = b"\xff\xff\xff"  # no protobuf message parses from it


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    started = LoopbackServer(
        ServeSettings(server=ServerSettings(host="127.0.0.1", port=0)), CountingCore()
    )
    yield started
    started.stop()


def _wait_until_no_stream_is_open() -> None:
    """The server ends a stream's task after its client has read the status."""
    deadline = time.monotonic() + TIMEOUT
    while REGISTRY.get_sample_value("fraud_streams_open") != 0:
        assert time.monotonic() < deadline, "a stream stayed open"
        time.sleep(0.01)


def _left_behind() -> dict[str, int]:
    """The interceptor's call objects still tracked by the garbage collector."""
    module = AdmissionInterceptor.__module__
    counts = dict.fromkeys(CALL_TYPES, 0)
    for tracked in gc.get_objects():
        kind = type(tracked)
        if kind.__module__ == module and kind.__name__ in CALL_TYPES:
            counts[kind.__name__] += 1
    return counts


def test_ended_calls_are_freed_without_the_cycle_collector(server: LoopbackServer) -> None:
    gc.collect()
    gc.disable()  # what survives now would survive a server without full collections
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = scoring_pb2_grpc.FraudScoringStub(channel)
            for call in range(CALLS):
                requests = [score_request(f"stream-{call}-{n}") for n in range(3)]
                assert len(list(stub.ScoreStream(iter(requests), timeout=TIMEOUT))) == 3
                stub.Score(score_request(f"unary-{call}"), timeout=TIMEOUT)
        _wait_until_no_stream_is_open()
        server.run(asyncio.sleep(0))  # the callbacks of the streams' ends have run
        left = _left_behind()
    finally:
        gc.enable()
    assert left == dict.fromkeys(CALL_TYPES, 0)


def test_calls_ended_on_bad_bytes_are_freed_without_the_cycle_collector(
    server: LoopbackServer,
) -> None:
    """grpc keeps an abort's exception with its call, and the exception's frames hold the
    call's context: ended so, a call is in a reference cycle unless the server breaks it."""
    valid = score_request("valid").SerializeToString()
    gc.collect()
    gc.disable()
    try:
        with grpc.insecure_channel(server.target) as channel:
            score: Any = channel.unary_unary(SCORE)  # raw bytes, as any client can send
            stream: Any = channel.stream_stream(SCORE_STREAM)
            for _ in range(CALLS):
                with pytest.raises(grpc.RpcError) as refused:
                    score(MALFORMED, timeout=TIMEOUT)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                with pytest.raises(grpc.RpcError) as ended:
                    list(stream(iter([valid, MALFORMED]), timeout=TIMEOUT))
                assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _wait_until_no_stream_is_open()
        server.run(asyncio.sleep(0))
        left = _left_behind()
    finally:
        gc.enable()
    assert left == dict.fromkeys(CALL_TYPES, 0)
