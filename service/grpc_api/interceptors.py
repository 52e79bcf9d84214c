"""Admission of the scoring and admin services' calls: who calls and whether it may, calls
already past their deadline, load shedding, the stream budget, how long a call may wait
for its client, and each scoring call's latency, status and arrival time.

Health checks and reflection pass through untouched: they need no caller, and an
overloaded server still answers its probes (grpc's own `maximum_concurrent_rpcs` would
refuse those too). Every method of `fraud.v1.FraudScoring` and `fraud.v1.ModelAdmin` takes
these steps when the server picks its call up, in the call's own asyncio task, before its
request is read:

    identify the caller, check the method's role    UNAUTHENTICATED, PERMISSION_DENIED
      (`service.grpc_api.auth`; skipped for the scoring methods in open mode)
    the call's deadline has passed already          DEADLINE_EXCEEDED, nothing read or done
    the caller's rate for the method (ReportOutcome  RESOURCE_EXHAUSTED, counted by caller
      only: `service.grpc_api.rate_limits`)
    admission (scoring service only): a unary call  RESOURCE_EXHAUSTED, at once
      takes an in-flight slot (`server.max_in_flight`), a ScoreStream a place in the
      stream budget (`connections.max_open_streams`)
    reading: a unary request must arrive within     UNAVAILABLE
      `connections.request_read_seconds` of pickup; a stream's next transaction within
      `stream_idle_seconds`, and none is read once it has been open `stream_max_seconds`
      (a stream's reading ends with the status, in order: what was read before it is
      answered first)

To take those steps before the request is read, the interceptor hands grpc.aio each unary
method as a request-streaming handler (the wire is the same: HTTP/2 cannot tell one
message from a stream of one) and reads the single request itself: a refused call's
bytes are never parsed, and a request that never arrives holds its slot for a bounded
time. The caller's name is set in `service.core.callers.CURRENT_CALLER` for the call's
task, so the decision and outcome records name it.

In flight (`fraud_rpc_in_flight`, what shedding limits and autoscaling reads): a unary
scoring call from pickup until its task ends, however it ends (a done-callback on the task
releases it, so a call cancelled before its request arrived is released too); a stream's
transaction from the moment it is read until its answer is written (a stream answering in
batches may have read several ahead). An open stream holds a place in the stream budget
only, so idle streams never shed unary calls. Calls still queued inside grpc's core, not
yet picked up, are not counted, and under a CPU-bound overload that is where the queue
forms (the loop picks calls up only as fast as it answers them, so the in-flight count
stays far below its limit): `server.max_pending_calls` bounds that queue, and gRPC's core
refuses a call beyond it before this interceptor sees it (the client gets CANCELLED;
`server`).

Latency and status of the scoring calls admitted are recorded as the call's task ends, so
they include sending the answer; a call refused before admission counts its status at
once and no latency. A call cancelled while its task still runs counts as CANCELLED; a
stream cancelled while the server waits for its next message ends, as far as the server
can tell, like one its client closed, and counts as OK. An answer held up because its
client does not read (HTTP/2 flow control) is bounded by the connection's age, not by the
stream limits, which apply while the server waits for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Any, NoReturn, TypeAlias, cast

import grpc
import structlog
from google.protobuf.message import DecodeError

from service.core.callers import CURRENT_CALLER
from service.grpc_api.auth import (
    METHOD_ROLES,
    NO_CALLER,
    Caller,
    CallerDirectory,
    RefusalLog,
    bearer_token,
)
from service.grpc_api.rate_limits import CallerRateLimits
from service.observability.metrics import (
    EARLY_END_COUNTERS,
    IN_FLIGHT,
    OPEN_STREAMS,
    SCORING_SERVICE,
    SHED,
    EarlyEnd,
    RpcMetrics,
    auth_refusal_counters,
    rpc_metrics,
)

# Generic in the type stubs only: a string, so that it is never subscripted at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_UnaryBehavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
_StreamBehavior: TypeAlias = Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]

OVERLOADED_DETAILS = "server overloaded: retry with backoff"
UNAUTHENTICATED_DETAILS = (
    "no caller identified: send the metadata 'authorization: Bearer <token>' with a caller's "
    "token, or connect with a client certificate the server knows"
)
DEADLINE_PASSED_DETAILS = "the call's deadline had passed when the server picked it up"
REQUEST_NOT_SENT_DETAILS = "the request did not arrive within connections.request_read_seconds"
STREAM_IDLE_DETAILS = "no transaction within connections.stream_idle_seconds: open a new stream"
STREAM_LIFETIME_DETAILS = (
    "the stream has been open connections.stream_max_seconds: open a new one "
    "(every transaction it carried has been answered)"
)
NO_REQUEST_DETAILS = "the call carried no request message"
# Bytes that do not parse as the method's message: the caller's error, not the server's
# (grpc would answer UNKNOWN and log a traceback at level error for each).
MALFORMED_DETAILS = "the request is not a valid message"
# Of a refused certificate's subject alternative names, the refusal's log line shows this
# many, each cut to this length: enough to tell which client it was.
_SHOWN_SANS = 4
_SHOWN_SAN_LENGTH = 128
_REFUSAL_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

_CALL: ContextVar[_Call] = ContextVar("fraud_call")
_log = structlog.get_logger(__name__)
# Every interceptor of the process (tests build several): the in-flight and open-stream
# gauges add up their counts when scraped, so that a call costs no gauge update (two locked
# updates a call, 3 µs, were the interceptor's largest metric cost).
_admitting: weakref.WeakSet[AdmissionInterceptor] = weakref.WeakSet()


def _calls_in_flight() -> float:
    return float(sum(interceptor._in_flight for interceptor in list(_admitting)))


def _streams_open() -> float:
    return float(sum(interceptor._open_streams for interceptor in list(_admitting)))


IN_FLIGHT.set_function(_calls_in_flight)
OPEN_STREAMS.set_function(_streams_open)


def call_arrival() -> float:
    """`time.monotonic()` when the server picked up the current call (now, outside one)."""
    call = _CALL.get(None)
    return time.monotonic() if call is None else call.arrived


@dataclass(frozen=True, slots=True)
class CallLimits:
    """How many calls the server takes on at once, and how long it waits for their clients
    (`server.max_in_flight` and the `connections` settings)."""

    max_in_flight: int = 256
    max_open_streams: int = 1024
    request_read_seconds: float = 1.0
    stream_idle_seconds: float = 60.0
    stream_max_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_open_streams < 1:
            raise ValueError("max_in_flight and max_open_streams must be at least 1")
        if min(self.request_read_seconds, self.stream_idle_seconds, self.stream_max_seconds) <= 0:
            raise ValueError("the read, idle and lifetime limits must be above 0")


class _Method:
    """A guarded method, as set up once: its role, its metrics and its wrapped handler."""

    __slots__ = ("handler", "name", "open", "path", "rate_limits", "role", "rpc", "streaming")

    def __init__(
        self, path: str, open_scoring: bool, rate_limits: CallerRateLimits | None = None
    ) -> None:
        self.path = path
        self.rate_limits = rate_limits
        self.name = path.rpartition("/")[2]
        self.role = METHOD_ROLES[path]
        scoring = path.startswith(SCORING_SERVICE)
        # Only the scoring service is admitted and measured: admin calls are rare, and
        # hold no slot a scoring call needs.
        self.rpc: RpcMetrics | None = rpc_metrics(path) if scoring else None
        self.open = scoring and open_scoring
        self.streaming = False
        self.handler: Handler | None = None  # wrapped at its first call


class _Call:
    """One call to a guarded method: what the interceptor learnt of it, the status it ended
    with and, for a stream, its transactions."""

    __slots__ = ("arrived", "code", "method", "read_expired", "requests", "token")

    def __init__(self, method: _Method, arrived: float, token: str | None) -> None:
        self.method = method
        self.arrived = arrived
        self.token = token
        # Until the behaviour ends: a call whose behaviour never finished lost its client
        # (or its deadline) on the way.
        self.code = grpc.StatusCode.CANCELLED
        self.requests: _StreamRequests | None = None
        self.read_expired = False  # its request did not arrive in time: its task cancelled


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Identifies, authorizes, admits and measures the calls of the scoring and admin
    services; lets every other call through."""

    def __init__(
        self,
        limits: CallLimits,
        callers: CallerDirectory | None = None,
        *,
        refusal_log: RefusalLog | None = None,
        rate_limits: Mapping[str, CallerRateLimits] | None = None,
    ) -> None:
        """Admit calls within `limits` from `callers` (None or none configured: the scoring
        methods are open to all, and admin calls refused), each method's within its
        callers' `rate_limits` (by full method path); `refusal_log` chooses which refusals
        are logged."""
        self._limits = limits
        self._callers = callers or CallerDirectory(open_scoring=True)
        rate_limits = rate_limits or {}
        self._methods = {
            path: _Method(path, self._callers.open_scoring, rate_limits.get(path))
            for path in METHOD_ROLES
        }
        self._refusals = auth_refusal_counters(
            [method.name for method in self._methods.values()],
            [NO_CALLER, *self._callers.names],
            _REFUSAL_CODES,
        )
        self._refusal_log = refusal_log or RefusalLog()
        self._in_flight = 0
        self._open_streams = 0
        # Unary calls waiting for their request, by task, and the timer that ends those
        # still waiting at their time: one timer for them all, not one per call.
        self._reading: dict[asyncio.Task[Any], _Call] = {}
        self._read_timer: asyncio.TimerHandle | None = None
        _admitting.add(self)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """The call's handler, guarded, for the scoring and admin services; else as is."""
        arrived = time.monotonic()
        method = self._methods.get(handler_call_details.method)
        if method is None:
            return await continuation(handler_call_details)
        handler = method.handler
        if handler is None:
            # The handlers are registered before the server starts and never change.
            registered = await continuation(handler_call_details)
            if registered is None:  # a service not offered (admin without an admin caller)
                return None
            handler = method.handler = self._guarded(method, registered)
        token = None if method.open else bearer_token(handler_call_details.invocation_metadata)
        _CALL.set(_Call(method, arrived, token))
        return handler

    def _guarded(self, method: _Method, handler: Handler) -> Handler:
        """`handler`'s behaviour behind the admission steps; a unary one as
        request-streaming, so that its request is read after them.

        The guarded services have unary and bidirectional-streaming methods only; grpc.aio
        calls their behaviours as a coroutine function and an async generator function.
        """
        if handler.unary_unary is not None:
            unary = cast(_UnaryBehavior, handler.unary_unary)

            # `freeing_aborts` written in, not wrapped round: a coroutine less a call.
            async def guarded_unary(_requests: object, context: Context) -> object:
                call = _CALL.get()
                try:
                    await self._admit(call, context)
                    request = await self._read_request(call, context)
                    response = await unary(request, context)
                except grpc.aio.AbortError as aborted:
                    call.code = context.code()  # counted only if admitted (`_finish`)
                    _free_when_done(aborted)
                    raise
                except Exception:
                    call.code = grpc.StatusCode.UNKNOWN  # what grpc answers for it
                    raise
                call.code = context.code() or grpc.StatusCode.OK
                return response

            return grpc.stream_unary_rpc_method_handler(
                guarded_unary,
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:
            stream = cast(_StreamBehavior, handler.stream_stream)
            method.streaming = True

            async def guarded_stream(_requests: object, context: Context) -> AsyncIterator[object]:
                call = _CALL.get()
                await self._admit(call, context)
                call.requests = requests = _StreamRequests(self, call, context)
                try:
                    async for response in stream(requests, context):
                        yield response
                        requests.answered()  # grpc asks for more once the answer is written
                except _StreamEnd as end:
                    call.code = end.code
                    await _end_early(context, end.code, end.reason, end.details)
                except grpc.aio.AbortError:
                    call.code = context.code()
                    raise
                except Exception:
                    call.code = grpc.StatusCode.UNKNOWN
                    raise
                call.code = context.code() or grpc.StatusCode.OK

            return grpc.stream_stream_rpc_method_handler(
                _freeing_stream_aborts(guarded_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        raise TypeError(f"no guard for the shape of {handler!r}")

    async def _admit(self, call: _Call, context: Context) -> None:
        """Let `call` on, or end it with the status of the first step it fails."""
        method = call.method
        name = NO_CALLER
        if not method.open:
            caller = self._identify(call, context)
            if caller is None:
                await self._refuse(call, context, None, grpc.StatusCode.UNAUTHENTICATED)
            if method.role not in caller.roles:
                await self._refuse(call, context, caller, grpc.StatusCode.PERMISSION_DENIED)
            name = caller.name
            CURRENT_CALLER.set(name)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self._count_unadmitted(method, grpc.StatusCode.DEADLINE_EXCEEDED)
            await _end_early(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline_passed",
                DEADLINE_PASSED_DETAILS,
            )
        if method.rate_limits is not None:
            over_rate = method.rate_limits.refusal(name)
            if over_rate is not None:
                self._count_unadmitted(method, grpc.StatusCode.RESOURCE_EXHAUSTED)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, over_rate)
        if method.rpc is None:
            return
        if method.streaming:
            if self._open_streams >= self._limits.max_open_streams:
                await self._shed(method, context)
            self._open_streams += 1
        else:
            if self._in_flight >= self._limits.max_in_flight:
                await self._shed(method, context)
            self._take_work()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("grpc.aio runs each call in a task of its own")
        task.add_done_callback(partial(self._finish, call))

    def _identify(self, call: _Call, context: Context) -> Caller | None:
        if call.token is not None:
            return self._callers.by_token(call.token)
        if self._callers.checks_certificates:
            return self._callers.by_certificate(
                context.peer_identity_key(), context.peer_identities()
            )
        return None

    async def _refuse(
        self, call: _Call, context: Context, caller: Caller | None, code: grpc.StatusCode
    ) -> NoReturn:
        method = call.method
        name = NO_CALLER if caller is None else caller.name
        self._refusals[method.name, name, code].inc()
        self._count_unadmitted(method, code)
        suppressed = self._refusal_log.due(method.name, name, code.name)
        if suppressed is not None:
            # Never the token: only whether one was sent.
            _log.warning(
                "call_refused",
                rpc=method.name,
                code=code.name,
                caller=name,
                role=method.role,
                token_sent=call.token is not None,
                certificate_sans=_shown_sans(context),
                peer=context.peer(),
                suppressed=suppressed,
            )
        if caller is None:
            await context.abort(code, UNAUTHENTICATED_DETAILS)
        await context.abort(code, f"caller {name!r} lacks the {method.role!r} role")

    async def _shed(self, method: _Method, context: Context) -> NoReturn:
        SHED.inc()
        self._count_unadmitted(method, grpc.StatusCode.RESOURCE_EXHAUSTED)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED_DETAILS)

    @staticmethod
    def _count_unadmitted(method: _Method, code: grpc.StatusCode) -> None:
        if method.rpc is not None:
            method.rpc.requests[code].inc()

    async def _read_request(self, call: _Call, context: Context) -> object:
        """The unary call's one request, once it has arrived (UNAVAILABLE if it has not
        within `request_read_seconds` of pickup: `_expire_reads`)."""
        task = cast("asyncio.Task[Any]", asyncio.current_task())
        self._reading[task] = call
        if self._read_timer is None:
            self._arm_read_timer(call.arrived)
        try:
            request = await context.read()
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_DETAILS)
        except asyncio.CancelledError:
            if not call.read_expired or task.uncancel():  # cancelled by its client too
                raise
            await _end_early(
                context, grpc.StatusCode.UNAVAILABLE, "request_not_sent", REQUEST_NOT_SENT_DETAILS
            )
        finally:
            self._reading.pop(task, None)
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_REQUEST_DETAILS)
        return request

    def _arm_read_timer(self, arrived: float) -> None:
        """Call `_expire_reads` when the call that arrived at `arrived` is out of time.

        A per-call `asyncio.timeout_at` cost about 6 µs a call (a timer in the loop's heap,
        set and cancelled); a call now costs a dict entry, and the timer is set once a
        second or so while calls come (`time.monotonic`, the clock of `arrived`, is the
        default event loop's too).
        """
        loop = asyncio.get_running_loop()
        when = arrived + self._limits.request_read_seconds
        self._read_timer = loop.call_at(when, self._expire_reads)

    def _expire_reads(self) -> None:
        """Cancel the reads out of time (their calls end UNAVAILABLE), and set the timer
        for the earliest still waiting."""
        self._read_timer = None
        out_of_time = time.monotonic() - self._limits.request_read_seconds
        earliest = None
        for task, call in list(self._reading.items()):
            if call.arrived <= out_of_time:
                del self._reading[task]
                call.read_expired = True
                task.cancel()
            elif earliest is None or call.arrived < earliest:
                earliest = call.arrived
        if earliest is not None:
            self._arm_read_timer(earliest)

    def _take_work(self) -> None:
        self._in_flight += 1

    def _release_work(self) -> None:
        self._in_flight -= 1

    def _finish(self, call: _Call, task: asyncio.Task[Any]) -> None:
        """Record the call's latency and status, then release what it held."""
        # grpc.aio cancels a call's task when the client cancels or its deadline passes, and
        # swallows the CancelledError, but the pending cancellation still shows.
        code = grpc.StatusCode.CANCELLED if task.cancelling() else call.code
        rpc = cast(RpcMetrics, call.method.rpc)
        rpc.duration.observe(time.monotonic() - call.arrived)
        rpc.requests[code].inc()
        if not call.method.streaming:
            self._release_work()
            return
        # The two refer to each other: apart, they are freed without a full collection.
        requests, call.requests = call.requests, None
        if requests is not None:
            requests.release_answered()
        self._open_streams -= 1

    @property
    def limits(self) -> CallLimits:
        """The limits calls are admitted within."""
        return self._limits


class _StreamEnd(Exception):
    """The stream's reading ended with a status: raised by its next read, so that a
    behaviour reading ahead answers what it read before, and the guard then ends the call."""

    def __init__(self, code: grpc.StatusCode, reason: EarlyEnd | None, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.reason = reason
        self.details = details


class _StreamRequests:
    """A stream's transactions, read one at a time within the stream's limits; each counts
    as in flight from its read until its answer is written (`answered`)."""

    __slots__ = ("_call", "_closes_at", "_context", "_interceptor", "_read", "_unanswered")

    def __init__(self, interceptor: AdmissionInterceptor, call: _Call, context: Context) -> None:
        self._interceptor = interceptor
        self._call = call
        self._context = context
        self._closes_at = call.arrived + interceptor.limits.stream_max_seconds
        self._unanswered = 0
        self._read = 0  # messages read so far: the position of the next

    def __aiter__(self) -> _StreamRequests:
        return self

    async def __anext__(self) -> object:
        now = time.monotonic()
        if now >= self._closes_at:
            raise _StreamEnd(
                grpc.StatusCode.UNAVAILABLE, "stream_lifetime", STREAM_LIFETIME_DETAILS
            )
        idle_until = now + self._interceptor.limits.stream_idle_seconds
        try:
            async with asyncio.timeout_at(min(idle_until, self._closes_at)):
                request = await self._context.read()
        except DecodeError:
            details = f"transaction #{self._read}: {MALFORMED_DETAILS}"
            raise _StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, None, details) from None
        except TimeoutError:
            reason: EarlyEnd = "stream_idle" if idle_until <= self._closes_at else "stream_lifetime"
            details = STREAM_IDLE_DETAILS if reason == "stream_idle" else STREAM_LIFETIME_DETAILS
            raise _StreamEnd(grpc.StatusCode.UNAVAILABLE, reason, details) from None
        if request is grpc.aio.EOF:
            raise StopAsyncIteration
        self._read += 1
        self._unanswered += 1
        self._interceptor._take_work()
        return request

    def answered(self) -> None:
        """One transaction's answer is written: it is no longer in flight."""
        if self._unanswered:
            self._unanswered -= 1
            self._interceptor._release_work()

    def release_answered(self) -> None:
        """Release every transaction still in flight (the call has ended; idempotent)."""
        while self._unanswered:
            self.answered()


def freeing_aborts(behavior: _UnaryBehavior) -> _UnaryBehavior:
    """`behavior`, the frames of its abort cleared once its call has ended (see
    `_free_when_done`)."""

    async def freeing(requests: Any, context: Context) -> Any:
        try:
            return await behavior(requests, context)
        except grpc.aio.AbortError as aborted:
            _free_when_done(aborted)
            raise

    return freeing


def _freeing_stream_aborts(behavior: _StreamBehavior) -> _StreamBehavior:
    """`behavior`, the frames of its abort cleared once its call has ended (see
    `_free_when_done`)."""

    async def freeing(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(requests, context):
                yield response
        except grpc.aio.AbortError as aborted:
            _free_when_done(aborted)
            raise

    return freeing


def _free_when_done(aborted: BaseException) -> None:
    """grpc keeps an abort's exception with its call's state, and the frames of the
    exception's traceback hold the call's context, which holds that state: a cycle, which
    the server never collects once it is old (`service.observability.gc_policy`: no full
    collections). The frames it has passed through so far are the call's: once the call's
    task has ended they are done, and clearing them frees the call by reference counting."""
    task = asyncio.current_task()
    if task is not None:
        frames = _frames(aborted)
        task.add_done_callback(lambda _task: _clear(frames))


def _frames(error: BaseException) -> list[FrameType]:
    """The frames of `error`'s traceback and of the exceptions it was raised from."""
    frames: list[FrameType] = []
    chain: list[BaseException | None] = [error]
    seen: set[int] = set()
    while chain:
        link = chain.pop()
        if link is not None and id(link) not in seen:
            seen.add(id(link))
            frames += (frame for frame, _line in traceback.walk_tb(link.__traceback__))
            chain += (link.__cause__, link.__context__)
    return frames


def _clear(frames: list[FrameType]) -> None:
    for frame in frames:
        with contextlib.suppress(RuntimeError):  # still running: not the call's after all
            frame.clear()


async def _end_early(
    context: Context, code: grpc.StatusCode, reason: EarlyEnd | None, details: str
) -> NoReturn:
    if reason is not None:
        EARLY_END_COUNTERS[reason].inc()
    await context.abort(code, details)


def _shown_sans(context: Context) -> list[str]:
    """The client certificate's subject alternative names, as a log line shows them."""
    if context.peer_identity_key() != "x509_subject_alternative_name":
        return []
    identities = itertools.islice(context.peer_identities() or (), _SHOWN_SANS)
    return [san.decode("utf-8", "replace")[:_SHOWN_SAN_LENGTH] for san in identities]
