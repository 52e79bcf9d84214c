"""Admission and accounting of the scoring service's calls: load shedding, in-flight count,
latency and status metrics, and each call's arrival time.

Only the `fraud.v1.FraudScoring` methods pass through here; health checks and reflection are
neither counted nor shed, so an overloaded server still answers its probes (grpc's own
`maximum_concurrent_rpcs` would refuse those too).

A call counts as in flight from the moment the event loop picks it up, before its request
is read, until its task ends, however it ends: the count is released by a done-callback on
the call's asyncio task, which grpc.aio creates per call and runs interceptors in, so a
call cancelled before its handler ran is released too. Calls still queued inside grpc's
core, not yet picked up, are not counted: their clients' deadlines bound them. A
`ScoreStream` call holds one slot for as long as it is open.

Latency and status are recorded as the call's task ends, so they include sending the
answer. A call cancelled while its task still runs counts as CANCELLED; a stream cancelled
while the server waits for its next message ends, as far as the server can tell, like one
its client closed, and counts as OK.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any, TypeAlias, cast

import grpc

from service.observability.metrics import IN_FLIGHT, SCORING_SERVICE, SHED, RpcMetrics, rpc_metrics

# Generic in the type stubs only: a string, so that it is never subscripted at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_UnaryBehavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
_StreamBehavior: TypeAlias = Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]

OVERLOADED_DETAILS = "server overloaded: retry with backoff"

_ARRIVAL: ContextVar[float] = ContextVar("fraud_call_arrival")


def call_arrival() -> float:
    """`time.monotonic()` when the server picked up the current call (now, outside one)."""
    arrival = _ARRIVAL.get(None)
    return time.monotonic() if arrival is None else arrival


class ScoringCallInterceptor(grpc.aio.ServerInterceptor):
    """Sheds scoring calls above `max_in_flight` and measures the ones it admits."""

    def __init__(self, max_in_flight: int) -> None:
        """Refuse new scoring calls with RESOURCE_EXHAUSTED while `max_in_flight` run."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """The call's handler, measured; a refusal instead when too many calls are in flight."""
        arrived = time.monotonic()
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SCORING_SERVICE):
            return handler
        rpc = rpc_metrics(method)
        if self._in_flight >= self._max_in_flight:
            SHED.inc()
            rpc.requests[grpc.StatusCode.RESOURCE_EXHAUSTED].inc()
            return _refusal(handler)
        call = _Call(rpc, arrived)
        self._admit(call)
        _ARRIVAL.set(arrived)
        return _measured(handler, call)

    def _admit(self, call: _Call) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("grpc.aio runs interceptors inside the call's task")
        self._in_flight += 1
        IN_FLIGHT.inc()
        task.add_done_callback(partial(self._finish, call))

    def _finish(self, call: _Call, task: asyncio.Task[Any]) -> None:
        """Record the call's latency and status, then release its slot."""
        # grpc.aio cancels a call's task when the client cancels or its deadline passes, and
        # swallows the CancelledError, but the pending cancellation still shows.
        code = grpc.StatusCode.CANCELLED if task.cancelling() else call.code
        call.rpc.duration.observe(time.monotonic() - call.arrived)
        call.rpc.requests[code].inc()
        self._in_flight -= 1
        IN_FLIGHT.dec()


class _Call:
    """One admitted call: its metric children, its arrival and the status it ended with."""

    __slots__ = ("arrived", "code", "rpc")

    def __init__(self, rpc: RpcMetrics, arrived: float) -> None:
        self.rpc = rpc
        self.arrived = arrived
        # Until the behaviour ends: a call whose behaviour never ran lost its client (or
        # its deadline) before its request was read.
        self.code = grpc.StatusCode.CANCELLED


def _refusal(handler: Handler) -> Handler:
    """A handler of `handler`'s shape that answers RESOURCE_EXHAUSTED without reading on."""

    async def refuse(_request: object, context: Context) -> None:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED_DETAILS)

    # No deserializer: the refused request's bytes are never parsed.
    if handler.request_streaming or handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _measured(handler: Handler, call: _Call) -> Handler:
    """`handler`, noting in `call` the status its behaviour ends the call with.

    The scoring service has unary and bidirectional-streaming methods only; grpc.aio calls
    their behaviours as a coroutine function and an async generator function.
    """
    if handler.unary_unary is not None:
        unary = cast(_UnaryBehavior, handler.unary_unary)

        async def measured_unary(request: object, context: Context) -> object:
            try:
                response = await unary(request, context)
            except grpc.aio.AbortError:
                call.code = context.code()
                raise
            except Exception:
                call.code = grpc.StatusCode.UNKNOWN  # what grpc answers for it
                raise
            call.code = context.code() or grpc.StatusCode.OK
            return response

        return grpc.unary_unary_rpc_method_handler(
            measured_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        stream = cast(_StreamBehavior, handler.stream_stream)

        async def measured_stream(
            requests: AsyncIterator[object], context: Context
        ) -> AsyncIterator[object]:
            try:
                async for response in stream(requests, context):
                    yield response
            except grpc.aio.AbortError:
                call.code = context.code()
                raise
            except Exception:
                call.code = grpc.StatusCode.UNKNOWN
                raise
            call.code = context.code() or grpc.StatusCode.OK

        return grpc.stream_stream_rpc_method_handler(
            measured_stream, handler.request_deserializer, handler.response_serializer
        )
    raise TypeError(f"no measurement for the shape of {handler!r}")
