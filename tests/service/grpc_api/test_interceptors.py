"""The admission interceptor on its own, in a real event loop, with a stand-in for grpc's
servicer context: what happens to a call before its request is read, which loopback tests
cannot time (a client that leaves while the request is awaited) or cannot see (whether the
request was read at all)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from service.grpc_api.auth import Caller, CallerDirectory
from service.grpc_api.interceptors import AdmissionInterceptor, CallLimits, call_arrival
from tests.process_metrics import sample_value

TOKEN = "a-token-for-interceptor-tests"


@dataclass
class _Details:
    """What grpc tells interceptors about a call."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


SCORE = _Details("/fraud.v1.FraudScoring/Score")


class _Context:
    """The servicer context's methods the interceptor uses; a request that never arrives
    unless one is given."""

    def __init__(self, *, remaining: float | None = None, request: object = None) -> None:
        self._remaining = remaining
        self._request = request
        self.reads = 0
        self.aborted: grpc.StatusCode | None = None

    def time_remaining(self) -> float | None:
        return self._remaining

    async def read(self) -> object:
        self.reads += 1
        if self._request is None:
            await asyncio.Event().wait()
        return self._request

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self.aborted = code
        raise grpc.aio.AbortError(details)

    def code(self) -> grpc.StatusCode | None:
        return self.aborted

    def peer(self) -> str:
        return "ipv4:127.0.0.1:4242"

    def peer_identity_key(self) -> str | None:
        return None

    def peer_identities(self) -> None:
        return None


class _Behavior:
    """The registered handler's behaviour: answers its request, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: object, _context: object) -> object:
        self.calls += 1
        return request


def _continuation(behavior: _Behavior) -> Any:
    async def continuation(_details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behavior)

    return continuation


def _sample(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


async def _start(
    interceptor: AdmissionInterceptor,
    context: _Context,
    details: _Details = SCORE,
    behavior: _Behavior | None = None,
) -> tuple[_Behavior, asyncio.Task[object]]:
    """The call as grpc.aio runs it: the interceptor, then the handler, in the call's task.
    The interceptor keeps the handler it wrapped first: give each of its calls one
    `behavior`."""
    behavior = behavior or _Behavior()

    async def call() -> object:
        handler: Any = await interceptor.intercept_service(_continuation(behavior), details)
        return await handler.stream_unary(None, context)

    task = asyncio.create_task(call())
    await asyncio.sleep(0)
    return behavior, task


def test_a_call_cancelled_before_its_request_arrived_is_released_and_counted() -> None:
    """The slot of a call cancelled while its request is awaited is freed; it counts
    CANCELLED."""
    cancelled_before = _sample("fraud_rpc_requests_total", rpc="Score", code="CANCELLED")
    in_flight = []

    async def scenario() -> None:
        interceptor = AdmissionInterceptor(CallLimits(max_in_flight=1))
        context = _Context()
        _behavior, task = await _start(interceptor, context)
        in_flight.append(_sample("fraud_rpc_in_flight"))
        assert context.reads == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # done-callbacks run on the next turn of the loop
        in_flight.append(_sample("fraud_rpc_in_flight"))

    asyncio.run(scenario())
    assert in_flight == [1.0, 0.0]
    assert _sample("fraud_rpc_requests_total", rpc="Score", code="CANCELLED") == (
        cancelled_before + 1
    )


def test_the_arrival_is_the_moment_the_interceptor_picked_the_call_up() -> None:
    """Inside an admitted call, call_arrival() is fixed at pickup, not at each read."""
    readings = []

    async def scenario() -> None:
        interceptor = AdmissionInterceptor(CallLimits())
        await interceptor.intercept_service(_continuation(_Behavior()), SCORE)
        readings.append(call_arrival())
        await asyncio.sleep(0.01)
        readings.append(call_arrival())

    asyncio.run(scenario())
    assert readings[0] == readings[1]


def test_a_call_past_its_deadline_is_ended_before_its_request_is_read() -> None:
    """No time left at pickup: DEADLINE_EXCEEDED, the request unread, the behaviour not run,
    no slot taken."""
    outcome: list[object] = []

    async def scenario() -> None:
        interceptor = AdmissionInterceptor(CallLimits(max_in_flight=1))
        context = _Context(remaining=0.0, request="a request")
        behavior, task = await _start(interceptor, context)
        with contextlib.suppress(grpc.aio.AbortError):
            await task
        outcome.extend([context.aborted, context.reads, behavior.calls])
        outcome.append(_sample("fraud_rpc_in_flight"))

    asyncio.run(scenario())
    assert outcome == [grpc.StatusCode.DEADLINE_EXCEEDED, 0, 0, 0.0]


def test_a_caller_without_an_identity_is_refused_before_its_request_is_read() -> None:
    """With callers configured, a call with no token is UNAUTHENTICATED unread; a call with
    a caller's token is read and answered."""
    digest = hashlib.sha256(TOKEN.encode()).digest()
    callers = CallerDirectory([(Caller("pos", frozenset({"score"})), [digest], [])])
    outcomes: list[object] = []

    async def scenario() -> None:
        interceptor = AdmissionInterceptor(CallLimits(), callers)
        anonymous = _Context(request="a request")
        behavior, task = await _start(interceptor, anonymous)
        with contextlib.suppress(grpc.aio.AbortError):
            await task
        outcomes.append((anonymous.aborted, anonymous.reads, behavior.calls))

        identified = _Context(request="a request")
        token = _Details(SCORE.method, (("authorization", f"Bearer {TOKEN}"),))
        behavior, task = await _start(interceptor, identified, token, behavior)
        outcomes.append((await task, identified.reads, behavior.calls))

    asyncio.run(scenario())
    assert outcomes == [
        (grpc.StatusCode.UNAUTHENTICATED, 0, 0),
        ("a request", 1, 1),
    ]


def test_health_checks_pass_through_untouched() -> None:
    """A method of another service gets the registered handler itself: no guard, no count."""
    handlers = []

    async def scenario() -> None:
        interceptor = AdmissionInterceptor(CallLimits(max_in_flight=1))
        behavior = _Behavior()
        registered = await _continuation(behavior)(None)
        health = _Details("/grpc.health.v1.Health/Check")

        async def same(_details: Any) -> Any:
            return registered

        handlers.append((await interceptor.intercept_service(same, health), registered))

    asyncio.run(scenario())
    ((given, registered),) = handlers
    assert given is registered
