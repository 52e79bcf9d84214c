"""A stream's requests in batches of those waiting: one task reads the stream as fast as
its messages come, the handler takes whatever has arrived each time it comes round (after
one turn of the event loop, which lets reads already completed land), and never waits for
a batch to fill (latency first).

The reading ends as the stream does: at its end, or with the error its next read raised,
handed over after every request read before it, so that those are answered first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Generic, Self, TypeVar

_T = TypeVar("_T")


class _Ended:
    """The stream's end: its reading's error, or None when the client closed it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class WaitingBatches(Generic[_T]):
    """Batches of at most `max_size` of `requests`; at most `max_size` more are read ahead of
    the handler (then the client's flow control holds the rest). An async context: leaving
    it stops the reading."""

    def __init__(self, requests: AsyncIterator[_T], max_size: int) -> None:
        self._requests = requests
        self._max_size = max_size
        self._read: asyncio.Queue[_T | _Ended] = asyncio.Queue(max_size)
        self._reader: asyncio.Task[None] | None = None
        self._ended = False
        self._error: BaseException | None = None

    async def __aenter__(self) -> Self:
        self._reader = asyncio.get_running_loop().create_task(self._read_all())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def next_batch(self) -> list[_T]:
        """The requests read and not yet taken, at least one, waiting for the first if none
        is; empty once the stream has ended; the reading's error after the last request."""
        self._raise_error()
        if self._ended:
            return []
        batch: list[_T] = []
        # One turn of the loop first: each read completes on a turn of its own, so without
        # it a stream's batches stay as small as its last (answers and reads alternate);
        # with it they grow by one a round while requests wait, up to `max_size`.
        await asyncio.sleep(0)
        item = await self._read.get()
        while not isinstance(item, _Ended):
            batch.append(item)
            if len(batch) >= self._max_size or self._read.empty():
                return batch
            item = self._read.get_nowait()
        self._ended = True
        self._error = item.error  # raised at the next call, once this batch is answered
        del item
        if not batch:
            self._raise_error()
        return batch

    def _raise_error(self) -> None:
        # No local names the error: its traceback holds these frames, and a cycle through
        # them would wait for a full collection, which the server never runs (gc_policy).
        if self._error is not None:
            try:
                raise self._error
            finally:
                self._error = None

    async def _read_all(self) -> None:
        try:
            async for request in self._requests:
                await self._read.put(request)
        except Exception as error:  # the stream's end status, or its failure: the handler's
            await self._read.put(_Ended(error))
        else:
            await self._read.put(_Ended(None))
