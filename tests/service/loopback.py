"""A real gRPC server on 127.0.0.1 for tests, in an event loop on its own thread, so tests
call it with the same blocking clients backends use."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc

from service.config.settings import ServeSettings
from service.grpc_api.admin import ModelAdministration
from service.grpc_api.server import HealthServicer, build_server, create_health, shut_down
from service.grpc_api.servicer import ScoringCore

T = TypeVar("T")


class LoopbackServer:
    """A `build_server` server on 127.0.0.1, in an event loop on its own thread."""

    def __init__(
        self,
        settings: ServeSettings,
        scorer: ScoringCore,
        *,
        models: ModelAdministration | None = None,
    ) -> None:
        """Serve `scorer`, and `models` behind the admin service when `settings` give some
        caller the admin role."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self.health, self.server, self.port = self.run(self._start(settings, scorer, models))
        except BaseException:
            self._close_loop()
            raise
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` in the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coroutine` in the server's loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self) -> None:
        self.run(shut_down(self.server, self.health, 0))
        self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @staticmethod
    async def _start(
        settings: ServeSettings, scorer: ScoringCore, models: ModelAdministration | None
    ) -> tuple[HealthServicer, grpc.aio.Server, int]:
        health = await create_health()
        server, port = build_server(settings, scorer, health, models=models)
        await server.start()
        return health, server, port
