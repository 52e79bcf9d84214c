"""The gRPC face of model administration (`fraud.v1.ModelAdmin`): list models, force a look
at the registry. Both need the admin token (`authorization: Bearer <token>` metadata),
compared in constant time; a missing or wrong token gets UNAUTHENTICATED, and the token
never reaches a log. Work that reads files runs off the event loop. A failure of that work
(an unreadable registry) is INTERNAL "internal error", as in the scoring service: its text,
with the server's paths, goes to the log only.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import NoReturn, Protocol

import grpc
import structlog

from service.grpc_api._proto.fraud.v1 import admin_pb2, admin_pb2_grpc
from service.grpc_api.converters import to_list_models_response
from service.grpc_api.servicer import INTERNAL_DETAILS
from service.model.overview import ModelsOverview
from service.model.store import RefreshReport

AUTHORIZATION_KEY = "authorization"
# The scheme is case-insensitive (RFC 7235); the token is compared exactly.
BEARER_SCHEME = "bearer"

ListContext = grpc.aio.ServicerContext[admin_pb2.ListModelsRequest, admin_pb2.ListModelsResponse]
ReloadContext = grpc.aio.ServicerContext[admin_pb2.ReloadRequest, admin_pb2.ListModelsResponse]

_log = structlog.get_logger(__name__)


class ModelAdministration(Protocol):
    """What the admin service asks of the server's model management."""

    def overview(self) -> ModelsOverview:
        """The registry's versions and what is served; reads files."""

    async def reload(self) -> RefreshReport:
        """Look at the registry now, retrying refused versions."""


class ModelAdminServicer(admin_pb2_grpc.ModelAdminServicer):
    """`fraud.v1.ModelAdmin` over the server's model management, behind a bearer token."""

    def __init__(self, models: ModelAdministration, *, token: str) -> None:
        """Serve `models` to callers presenting `token`."""
        self._models = models
        self._expected = token.encode()

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: ListContext
    ) -> admin_pb2.ListModelsResponse:
        """The registry's versions and what this process serves."""
        await self._authenticate(context, "ListModels")
        try:
            overview = await asyncio.to_thread(self._models.overview)
        except Exception as error:
            await _fail_internally(context, "ListModels", error)
        return to_list_models_response(overview)

    async def Reload(
        self, request: admin_pb2.ReloadRequest, context: ReloadContext
    ) -> admin_pb2.ListModelsResponse:
        """A look at the registry now; the state after it."""
        await self._authenticate(context, "Reload")
        try:
            report = await self._models.reload()
            overview = await asyncio.to_thread(self._models.overview)
        except Exception as error:
            await _fail_internally(context, "Reload", error)
        _log.info(
            "admin_reload",
            swapped=[change.version for change in report.changes],
            refused=[refusal.version for refusal in report.refusals],
        )
        return to_list_models_response(overview)

    async def _authenticate(self, context: ListContext | ReloadContext, rpc: str) -> None:
        presented = _authorization(context)
        scheme, _, token = (presented or "").partition(" ")
        if scheme.lower() != BEARER_SCHEME or not hmac.compare_digest(
            token.encode(), self._expected
        ):
            _log.warning("admin_unauthenticated", rpc=rpc, token_sent=presented is not None)
            await _abort_unauthenticated(context)


def _authorization(context: ListContext | ReloadContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_KEY:
            return value if isinstance(value, str) else None
    return None


async def _fail_internally(
    context: ListContext | ReloadContext, rpc: str, error: Exception
) -> NoReturn:
    _log.error("internal_error", rpc=rpc, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)


async def _abort_unauthenticated(context: ListContext | ReloadContext) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "send the admin token as metadata 'authorization: Bearer <token>'",
    )
