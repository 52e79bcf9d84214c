"""The standard `grpc.health.v1` service, registered so that bytes which are no health
request get INVALID_ARGUMENT, as on the scoring service.

grpc's own registration (`health_pb2_grpc.add_HealthServicer_to_server`) parses requests
with a deserializer that raises: grpc then answers UNKNOWN and logs a traceback at level
error for each such call (found by `fraud-bench fuzz`). Health is open to anyone who
reaches the port, so that was a log flood for the asking. Here the deserializer returns
None for such bytes, and the behaviour refuses them before the servicer sees them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2
from grpc_health.v1.health import aio as health_aio

from service.grpc_api.interceptors import MALFORMED_DETAILS, freeing_aborts

_Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def add_health_service(servicer: health_aio.HealthServicer, server: grpc.aio.Server) -> None:
    """Serve `servicer` on `server` as `grpc.health.v1.Health`."""
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            freeing_aborts(_refusing_malformed(servicer.Check)),
            request_deserializer=_parser(health_pb2.HealthCheckRequest),
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            _refusing_malformed(servicer.Watch),
            request_deserializer=_parser(health_pb2.HealthCheckRequest),
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(health.SERVICE_NAME, handlers),)
    )


def _parser(message: type[Message]) -> Callable[[bytes], Message | None]:
    def parse(data: bytes) -> Message | None:
        try:
            return message.FromString(data)
        except DecodeError:
            return None

    return parse


def _refusing_malformed(behaviour: _Behaviour) -> _Behaviour:
    async def refusing(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_DETAILS)
        return await behaviour(request, context)

    return refusing
