"""Calls a test keeps open on a real server: a ScoreStream that sends when asked, and a
unary Score whose request is never sent (a client that opens the call and stops)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc

SCORE_PATH = "/fraud.v1.FraudScoring/Score"
TIMEOUT = 10.0


def score_request(transaction_id: str) -> scoring_pb2.ScoreRequest:
    """A request carrying only a transaction id (enough for a stand-in core)."""
    return scoring_pb2.ScoreRequest(
        transaction=scoring_pb2.Transaction(transaction_id=transaction_id)
    )


class OpenStream:
    """A ScoreStream kept open: transactions are sent when asked, answers read in order."""

    def __init__(
        self, stub: scoring_pb2_grpc.FraudScoringStub, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._pending: queue.Queue[scoring_pb2.ScoreRequest | None] = queue.Queue()
        self.answers = stub.ScoreStream(
            iter(self._pending.get, None), timeout=60, metadata=metadata
        )

    def send(self, transaction_id: str, request: scoring_pb2.ScoreRequest | None = None) -> str:
        """Send one transaction (`request`, or one with only its id); its answer's id."""
        self._pending.put(request or score_request(transaction_id))
        return next(self.answers).transaction_id

    def close(self) -> None:
        """Half-close, and read what is left until the server ends the call."""
        self._pending.put(None)
        for _ in self.answers:
            pass


class UnsentRequest:
    """A call to the unary Score whose request is not sent until `cancel`."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._release = threading.Event()
        call = channel.stream_unary(
            SCORE_PATH,
            request_serializer=scoring_pb2.ScoreRequest.SerializeToString,
            response_deserializer=scoring_pb2.ScoreResponse.FromString,
        )
        self._future: Any = call.future(self._never_sent(), timeout=60)

    def _never_sent(self) -> Iterator[scoring_pb2.ScoreRequest]:
        self._release.wait()
        yield score_request("sent-at-last")

    def failure(self) -> tuple[grpc.StatusCode, str]:
        """The status and details the server ended the call with (waits for them)."""
        error = self._future.exception(timeout=TIMEOUT)
        assert error is not None, "the call succeeded"
        return error.code(), error.details() or ""

    def cancel(self) -> None:
        """Cancel the call from the client's side."""
        self._future.cancel()
        self._release.set()
