"""A grpc.aio FraudScoring servicer on 127.0.0.1, in an event loop on its own thread, so that
a test can load it with the harness's clients from the test's own thread."""

from __future__ import annotations

import asyncio
import threading

import grpc

from benchmarks.servers.floor import start_floor_server
from service.grpc_api._proto.fraud.v1 import scoring_pb2_grpc


class ThreadServer:
    """Serves `servicer` until `stop()`; `target` is its 127.0.0.1 address."""

    def __init__(self, servicer: scoring_pb2_grpc.FraudScoringServicer) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(start_floor_server(servicer), self._loop)
        self._server: grpc.aio.Server
        self._server, port = started.result(timeout=30)
        self.target = f"127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
