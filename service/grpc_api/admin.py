"""The gRPC face of model administration (`fraud.v1.ModelAdmin`): list models, force a look
at the registry. Both need a caller with the `admin` role, checked before the call gets
here (`service.grpc_api.interceptors`). Work that reads files runs off the event loop. A
failure of that work (an unreadable registry) is INTERNAL "internal error", as in the
scoring service: its text, with the server's paths, goes to the log only.
"""

from __future__ import annotations

import asyncio
from typing import NoReturn, Protocol

import grpc
import structlog

from service.grpc_api._proto.fraud.v1 import admin_pb2, admin_pb2_grpc
from service.grpc_api.converters import to_list_models_response
from service.grpc_api.servicer import INTERNAL_DETAILS
from service.model.overview import ModelsOverview
from service.model.store import RefreshReport

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
    """`fraud.v1.ModelAdmin` over the server's model management."""

    def __init__(self, models: ModelAdministration) -> None:
        """Serve `models` (to the callers the interceptor lets through)."""
        self._models = models

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: ListContext
    ) -> admin_pb2.ListModelsResponse:
        """The registry's versions and what this process serves."""
        try:
            overview = await asyncio.to_thread(self._models.overview)
        except Exception as error:
            await _fail_internally(context, "ListModels", error)
        return to_list_models_response(overview)

    async def Reload(
        self, request: admin_pb2.ReloadRequest, context: ReloadContext
    ) -> admin_pb2.ListModelsResponse:
        """A look at the registry now; the state after it."""
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


async def _fail_internally(
    context: ListContext | ReloadContext, rpc: str, error: Exception
) -> NoReturn:
    _log.error("internal_error", rpc=rpc, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)
