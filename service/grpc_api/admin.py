"""The gRPC face of model administration (`fraud.v1.ModelAdmin`): list models, force a look
at the registry, change an allow or block list (published to the registry, with the caller
as who: `service.model.rule_writer`). Each needs a caller with the `admin` role, checked
before the call gets here (`service.grpc_api.interceptors`). Work that reads files runs
off the event loop. A failure of that work (an unreadable registry) is INTERNAL "internal
error", as in the scoring service: its text, with the server's paths, goes to the log only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NoReturn, Protocol

import grpc
import structlog

from service.core.callers import current_caller
from service.core.rule_compiler import RuleError
from service.grpc_api._proto.fraud.v1 import admin_pb2, admin_pb2_grpc
from service.grpc_api.converters import to_list_models_response
from service.grpc_api.servicer import INTERNAL_DETAILS
from service.model.overview import ModelsOverview
from service.model.registry import RegistryError
from service.model.rule_writer import SignedListsError
from service.model.store import RefreshReport

ListContext = grpc.aio.ServicerContext[admin_pb2.ListModelsRequest, admin_pb2.ListModelsResponse]
ReloadContext = grpc.aio.ServicerContext[admin_pb2.ReloadRequest, admin_pb2.ListModelsResponse]
ChangeListContext = grpc.aio.ServicerContext[
    admin_pb2.ChangeListRequest, admin_pb2.ChangeListResponse
]

_log = structlog.get_logger(__name__)


class ModelAdministration(Protocol):
    """What the admin service asks of the server's model management."""

    def overview(self) -> ModelsOverview:
        """The registry's versions and what is served; reads files."""

    async def reload(self) -> RefreshReport:
        """Look at the registry now, retrying refused versions."""

    async def change_list(
        self,
        *,
        name: str,
        kind: str,
        value: str,
        remove: bool,
        reason: str,
        by: str,
        expires_at: float | None,
        card_token: Callable[[str], str],
    ) -> str:
        """Publish the lists with one value added or removed, and follow them; the version."""


class ModelAdminServicer(admin_pb2_grpc.ModelAdminServicer):
    """`fraud.v1.ModelAdmin` over the server's model management."""

    def __init__(self, models: ModelAdministration, *, card_token: Callable[[str], str]) -> None:
        """Serve `models` (to the callers the interceptor lets through); a card number sent
        for a card list is replaced by `card_token` before it is written."""
        self._models = models
        self._card_token = card_token

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

    async def ChangeList(
        self, request: admin_pb2.ChangeListRequest, context: ChangeListContext
    ) -> admin_pb2.ChangeListResponse:
        """Add a value to, or remove it from, an allow or block list."""
        expires = request.expires_at
        try:
            version = await self._models.change_list(
                name=request.list,
                kind=request.kind,
                value=request.value,
                remove=request.remove,
                reason=request.reason,
                by=current_caller() or "admin",
                expires_at=expires.seconds + expires.nanos / 1e9
                if request.HasField("expires_at")
                else None,
                card_token=self._card_token,
            )
        except RuleError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except SignedListsError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except RegistryError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except Exception as error:
            await _fail_internally(context, "ChangeList", error)
        _log.info("admin_list_changed", lists_version=version, list=request.list, kind=request.kind)
        return admin_pb2.ChangeListResponse(lists_version=version)


async def _fail_internally(
    context: ListContext | ReloadContext | ChangeListContext, rpc: str, error: Exception
) -> NoReturn:
    _log.error("internal_error", rpc=rpc, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)
