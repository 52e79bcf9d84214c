"""One `ScoreStream` call of a load client: requests written as they are sent, answers
matched to them in order.

The contract (`proto/fraud/v1/scoring.proto`) answers a stream's transactions in order,
so the due time of each message written waits in a queue for the next answer. A writer
task writes the messages one at a time (gRPC allows one write in flight per call) and a
reader task takes the answers; `send` never blocks, so an open-loop schedule is never
held up by a slow stream: a message that waits to be written is late, and counts as such.

When the call fails, every message still waiting (written or not) is counted with the
call's status code; so is every message sent after that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TypeAlias

import grpc

from benchmarks.load.tally import UNANSWERED, Tally
from service.grpc_api._proto.fraud.v1 import scoring_pb2

# Generic in the type stubs only: a string, so that it is never subscripted at run time.
StreamCall: TypeAlias = "grpc.aio.StreamStreamCall[bytes, scoring_pb2.ScoreResponse]"
# A message to write: payload, due time, and the future its answer resolves (closed loop).
_Message: TypeAlias = "tuple[bytes, float, asyncio.Future[None] | None]"


class ScoreStreamSender:
    """Sends serialized `ScoreRequest`s on one open `ScoreStream` call, counts the answers."""

    def __init__(self, call: StreamCall, tally: Tally) -> None:
        self._call = call
        self._tally = tally
        self._queue: asyncio.Queue[_Message | None] = asyncio.Queue()
        self._waiting: deque[tuple[float, asyncio.Future[None] | None]] = deque()
        self._failed_with: str | None = None
        self._writer = asyncio.create_task(self._write())
        self._reader = asyncio.create_task(self._read())

    def send(self, payload: bytes, due: float, answered: asyncio.Future[None] | None) -> None:
        """Queue a message due at `due`; `answered` (if any) resolves once it is counted."""
        if self._failed_with is None:
            self._queue.put_nowait((payload, due, answered))
        else:
            self._tally.score_failed(self._failed_with)
            _resolve(answered)

    async def finish(self, timeout: float) -> None:
        """Close the sending side and wait up to `timeout` s for the answers still due."""
        self._queue.put_nowait(None)
        _, late = await asyncio.wait({self._reader}, timeout=timeout)
        if late:
            self._call.cancel()
            await self._reader

    async def _write(self) -> None:
        try:
            while (message := await self._queue.get()) is not None:
                payload, due, answered = message
                self._waiting.append((due, answered))
                await self._call.write(payload)
            await self._call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the call has ended: the reader counts what was waiting

    async def _read(self) -> None:
        code = UNANSWERED  # unless the call fails: the stream ended before every answer
        try:
            async for response in self._call:
                due, answered = self._waiting.popleft()
                self._tally.score_answered(response, due)
                _resolve(answered)
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        except asyncio.CancelledError:
            pass  # `finish` cancelled the call (not this task): what waits is unanswered
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._fail_waiting(code)

    def _fail_waiting(self, code: str) -> None:
        self._failed_with = code
        while self._waiting:
            _due, answered = self._waiting.popleft()
            self._tally.score_failed(code)
            _resolve(answered)
        while not self._queue.empty():
            message = self._queue.get_nowait()
            if message is not None:
                self._tally.score_failed(code)
                _resolve(message[2])


def _resolve(answered: asyncio.Future[None] | None) -> None:
    if answered is not None and not answered.done():
        answered.set_result(None)
