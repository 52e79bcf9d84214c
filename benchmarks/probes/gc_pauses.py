"""Pauses of Python's garbage collector: each one stops the process's event loop.

A collection of the oldest generation with hundreds of thousands of live objects can take
tens of milliseconds; in a load client that is latency the server never caused, so the
client reports its pauses next to its latencies.
"""

from __future__ import annotations

import gc
import time
from types import TracebackType
from typing import Self


class GcPauses:
    """Within a `with` block, the duration in seconds of every collection, in `seconds`."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def __enter__(self) -> Self:
        gc.callbacks.append(self._time)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        gc.callbacks.remove(self._time)

    def _time(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds.append(time.perf_counter() - self._started)
