"""The scoring-call interceptor on its own, in a real event loop: what grpc.aio does with a
call whose client leaves before the request is read, which loopback tests cannot time.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import REGISTRY

from service.grpc_api.interceptors import ScoringCallInterceptor, call_arrival


@dataclass
class _Details:
    """What grpc tells interceptors about a call."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


SCORE = _Details("/fraud.v1.FraudScoring/Score")


async def _continuation(_details: Any) -> Any:
    async def behavior(_request: object, _context: object) -> None:
        """Never called here."""

    return grpc.unary_unary_rpc_method_handler(behavior)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_call_cancelled_before_its_handler_ran_is_released_and_counted() -> None:
    """The slot of a call cancelled while its request is read is freed; it counts CANCELLED."""
    cancelled_before = _sample("fraud_rpc_requests_total", rpc="Score", code="CANCELLED")
    in_flight = []

    async def scenario() -> None:
        interceptor = ScoringCallInterceptor(max_in_flight=1)

        async def call() -> None:
            # As in grpc.aio: the interceptor runs in the call's task, then the request is read.
            await interceptor.intercept_service(_continuation, SCORE)
            await asyncio.Event().wait()  # a request that never arrives

        task = asyncio.create_task(call())
        await asyncio.sleep(0)
        in_flight.append(_sample("fraud_rpc_in_flight"))
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


def test_the_arrival_is_the_moment_the_interceptor_admitted_the_call() -> None:
    """Inside an admitted call, call_arrival() is fixed at admission, not at each read."""
    readings = []

    async def scenario() -> None:
        interceptor = ScoringCallInterceptor(max_in_flight=1)
        await interceptor.intercept_service(_continuation, SCORE)
        readings.append(call_arrival())
        await asyncio.sleep(0.01)
        readings.append(call_arrival())

    asyncio.run(scenario())
    assert readings[0] == readings[1]
