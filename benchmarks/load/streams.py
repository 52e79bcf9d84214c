"""One `ScoreStream` call of a load client (grpc's sync API): requests written as they are
sent, answers matched to them in order.

The contract (`proto/fraud/v1/scoring.proto`) answers a stream's transactions in order,
so each message sent puts its due time in a queue that the next answer takes from.
`send` never blocks: it hands the bytes to the generator grpc's own thread writes from,
so an open-loop schedule is never held up by a slow stream; a message that waits to be
written is late, and counts as such. A reader thread takes the answers, keeping each as
bytes with the moment it came, for `StreamAnswers.count` once the run is over.

When the call fails, every message still waiting (written or not) is counted with the
call's status code; so is every message sent after that.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from benchmarks.load.tally import UNANSWERED, Tally
from service.grpc_api._proto.fraud.v1 import scoring_pb2

# Run after a message's answer, or its failure, is noted (a closed loop sends its next).
Then = Callable[[], None] | None


class StreamAnswers:
    """Answers and failures of a process's streams, noted on their threads, counted after."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, float, bytes]] = []  # due, answered at, response
        self.failures: list[str] = []

    def count(self, tally: Tally) -> None:
        """Parse and count everything noted into `tally`."""
        for due, at, payload in self.answers:
            tally.score_answered(scoring_pb2.ScoreResponse.FromString(payload), due, at)
        for code in self.failures:
            tally.score_failed(code)


class ScoreStreamSender:
    """Sends serialized `ScoreRequest`s on one open `ScoreStream` call, notes the answers."""

    def __init__(
        self,
        method: grpc.StreamStreamMultiCallable[bytes, bytes],
        deadline: float,
        metadata: tuple[tuple[str, str], ...] | None,
        answers: StreamAnswers,
    ) -> None:
        self._answers = answers
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._waiting: deque[tuple[float, Then]] = deque()
        # Taken to send, and to fail what waits: no message is both sent and left uncounted.
        self._lock = threading.Lock()
        self._failed_with: str | None = None
        self._cancelled = False
        self._call: Any = method(self._requests(), timeout=deadline, metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def failed(self) -> bool:
        """Whether the call has ended: a closed loop's chain stops sending on it."""
        return self._failed_with is not None

    def send(self, payload: bytes, due: float, then: Then) -> None:
        """Queue a message due at `due`; `then` (if any) runs once its answer is noted."""
        with self._lock:
            failed = self._failed_with
            if failed is None:
                self._waiting.append((due, then))
                self._outgoing.put(payload)
        if failed is not None:
            self._answers.failures.append(failed)
            if then is not None:
                then()

    def close(self) -> None:
        """Close the sending side once the messages queued are written."""
        self._outgoing.put(None)

    def finish(self, timeout: float) -> None:
        """Wait up to `timeout` s for the answers still due, then cancel the call."""
        self._reader.join(timeout)
        if self._reader.is_alive():
            self._cancelled = True
            self._call.cancel()
            self._reader.join()

    def _requests(self) -> Iterator[bytes]:
        while (payload := self._outgoing.get()) is not None:
            yield payload

    def _read(self) -> None:
        code = UNANSWERED  # unless the call fails: the stream ended before every answer
        answers, waiting, perf_counter = self._answers.answers, self._waiting, time.perf_counter
        try:
            for response in self._call:
                due, then = waiting.popleft()
                answers.append((due, perf_counter(), response))
                if then is not None:
                    then()
        except grpc.RpcError as error:
            if not self._cancelled:  # cancelled by `finish`: what waits is unanswered
                code = _code(error)
        self._fail_waiting(code)

    def _fail_waiting(self, code: str) -> None:
        with self._lock:
            self._failed_with = code
            failed = list(self._waiting)
            self._waiting.clear()
        for _due, then in failed:
            self._answers.failures.append(code)
            if then is not None:
                then()
        self._outgoing.put(None)  # grpc's writer may still be waiting for a message


def _code(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        status: grpc.StatusCode = error.code()
        return status.name
    return "UNKNOWN"
