"""What a call leaves behind once it has ended, over real loopback gRPC: nothing that only
Python's cyclic garbage collector could free. The server runs without full collections
(`service.observability.gc_policy`), so a reference cycle that outlives two young
collections, as a long-lived stream's does, would never be freed.

The scoring core is a stand-in that approves at once: what is tested is the gRPC layer.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from service.config.settings import ServerSettings, ServeSettings
from service.grpc_api._proto.fraud.v1 import scoring_pb2_grpc
from tests.process_metrics import sample_value
from tests.service.grpc_api.held_calls import score_request
from tests.service.grpc_api.test_call_limits import CountingCore
from tests.service.loopback import LoopbackServer

TIMEOUT = 10.0  # generous: the machine is shared; no test relies on it running out
CALLS = 20
# The interceptor's own objects of a call, and grpc's exception of an aborted call.
CALL_TYPES = ("_Call", "_StreamRequests", "AbortError")
SCORE = "/fraud.v1.FraudScoring/Score"
SCORE_STREAM = "/fraud.v1.FraudScoring/ScoreStream"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
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
    while sample_value("fraud_streams_open") != 0:
        assert time.monotonic() < deadline, "a stream stayed open"
        time.sleep(0.01)


def _cyclic_garbage() -> dict[str, int]:
    """Objects of `CALL_TYPES` only the cycle collector could free: a full collection that
    keeps what it finds in `gc.garbage`."""
    flags = gc.get_debug()
    gc.set_debug(flags | gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = Counter(type(unreachable).__name__ for unreachable in gc.garbage)
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
    return {kind: found[kind] for kind in CALL_TYPES}


NONE_LEFT = dict.fromkeys(CALL_TYPES, 0)


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
        garbage = _cyclic_garbage()
    finally:
        gc.enable()
    assert garbage == NONE_LEFT


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
        garbage = _cyclic_garbage()
    finally:
        gc.enable()
    assert garbage == NONE_LEFT


def test_health_checks_ended_on_bad_bytes_are_freed_without_the_cycle_collector(
    server: LoopbackServer,
) -> None:
    """Health goes around the interceptor, with a refusal of its own for bytes that do not
    parse: the same cycle, the same freeing."""
    gc.collect()
    gc.disable()
    try:
        with grpc.insecure_channel(server.target) as channel:
            check: Any = channel.unary_unary(HEALTH_CHECK)
            for _ in range(CALLS):
                with pytest.raises(grpc.RpcError) as refused:
                    check(MALFORMED, timeout=TIMEOUT)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        garbage = _cyclic_garbage()
    finally:
        gc.enable()
    assert garbage == NONE_LEFT
