"""The load client against a peer server's method (not fraud-serve's `Score`): calls go to
that path as the bytes given, and OK answers are timed and counted without being read."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from benchmarks.load.traffic import Call, CallKind
from benchmarks.measurements.load_run import LoadSettings, Mode, measure

PEER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# Not a ScoreResponse: field 5 holds bytes that are not UTF-8, where ScoreResponse has a string.
PEER_ANSWER = b"\x2a\x02\xff\xfe"


class PeerServer:
    """A sync gRPC server with one generic method at `PEER_METHOD` that echoes nothing but
    `PEER_ANSWER`, and records the requests it got."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self._answer
        )
        service = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": handler}
        )
        self._server = grpc.server(ThreadPoolExecutor(4), handlers=[service])
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.target = f"127.0.0.1:{port}"

    def _answer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.requests.append(request)
        return PEER_ANSWER

    def stop(self) -> None:
        self._server.stop(0).wait()


@pytest.fixture
def peer() -> Iterator[PeerServer]:
    server = PeerServer()
    yield server
    server.stop()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_calls_go_to_the_method_given_and_answers_count_ok(peer: PeerServer, mode: Mode):
    """Every request reaches the peer's method byte for byte; each answer counts OK, timed,
    with no decision (it is not a ScoreResponse)."""
    calls = [Call(CallKind.SCORE, f"request-{n}".encode()) for n in range(100)]
    load = LoadSettings(
        target=peer.target, mode=mode, rpc="unary", seconds=0.5, rate=200.0, in_flight=4,
        method=PEER_METHOD,
    )  # fmt: skip

    measurement = measure("peer", load, calls)

    assert measurement.statuses == {"OK": len(peer.requests)}
    assert measurement.latency.count == len(peer.requests)
    assert measurement.decisions == {}
    assert set(peer.requests) <= {call.payload for call in calls}
    if mode == "open":
        assert sorted(peer.requests) == sorted(call.payload for call in calls)


def test_a_peer_method_on_streams_is_refused():
    """A peer server's method is unary: asking for ScoreStream with it is a ValueError."""
    with pytest.raises(ValueError, match="unary only"):
        LoadSettings(target="127.0.0.1:1", mode="open", rpc="stream", seconds=1, method=PEER_METHOD)
