"""The model administration service (`fraud.v1.ModelAdmin`) over a real loopback server:
bearer-token authentication, listing models and reloading them, on copies of the trained
registry.

Each test runs one event loop (`asyncio.run`) holding the server built by `build_server`
and a grpc.aio client, so the watcher's work runs as it does in the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from pydantic import SecretStr

from service.config.settings import AdminSettings, ServerSettings, ServeSettings
from service.core.card_tokens import CardTokenizer
from service.core.scoring import FallbackPolicy, Scorer
from service.core.validation import ScoringLimits
from service.features import FeatureEngine
from service.grpc_api._proto.fraud.v1 import admin_pb2, admin_pb2_grpc
from service.grpc_api.server import build_server, create_health
from service.model.artifact import ONNX_MODEL_FILE, read_manifest
from service.model.loading import LoadedModel
from service.model.registry import CHAMPION, Registry
from service.model.store import ModelStore
from service.model.watcher import ModelWatcher
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.service.registry_copies import copy_registry, point_alias, publish_copy

if TYPE_CHECKING:
    from service.grpc_api._proto.fraud.v1.admin_pb2_grpc import ModelAdminAsyncStub

T = TypeVar("T")
TOKEN = "admin-token-for-tests-0123456789"
WRONG_TOKEN = "not-the-admin-token-9876543210"
OTHER_VERSION = "20990101T000000Z-0123abcd"
BROKEN_VERSION = "20990103T000000Z-89abcdef"
TIMEOUT = 10.0  # generous: the machine is shared; no test relies on it running out
Metadata = tuple[tuple[str, str], ...]
AUTHORIZED: Metadata = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the trained registry, champion included."""
    return copy_registry(trained_model, tmp_path / "registry")


def _settings(token: str | None) -> ServeSettings:
    return ServeSettings(
        server=ServerSettings(host="127.0.0.1", port=0),
        admin=AdminSettings(token=None if token is None else SecretStr(token)),
    )


def _scorer(store: ModelStore) -> Scorer[LoadedModel]:
    assert store.current is not None
    return Scorer(
        FeatureEngine(store.current.manifest.feature_config),
        store,
        tokenizer=CardTokenizer(b"test key"),
        limits=ScoringLimits(),
        fallback=FallbackPolicy(),
    )


def _with_admin(
    registry: Path,
    scenario: Callable[[ModelAdminAsyncStub], Coroutine[Any, Any, T]],
    *,
    token: str | None = TOKEN,
) -> T:
    """Serve `registry`'s champion with the admin service behind `token`, run `scenario`
    with a client of it, and stop the server."""

    async def main() -> T:
        watcher = ModelWatcher(ModelStore(registry))
        await watcher.refresh()
        health = await create_health()
        server, port = build_server(
            _settings(token), _scorer(watcher.store), health, models=watcher
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await scenario(admin_pb2_grpc.ModelAdminStub(channel))
        finally:
            await server.stop(0)

    return asyncio.run(main())


async def _failure(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details `call` fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


async def _list(stub: ModelAdminAsyncStub) -> admin_pb2.ListModelsResponse:
    return await stub.ListModels(
        admin_pb2.ListModelsRequest(), metadata=AUTHORIZED, timeout=TIMEOUT
    )


async def _reload(stub: ModelAdminAsyncStub) -> admin_pb2.ListModelsResponse:
    return await stub.Reload(admin_pb2.ReloadRequest(), metadata=AUTHORIZED, timeout=TIMEOUT)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-token"),
        pytest.param((("authorization", f"Bearer {WRONG_TOKEN}"),), id="wrong-token"),
        pytest.param((("authorization", TOKEN),), id="no-bearer-scheme"),
        pytest.param((("authorization", f"Bearer {TOKEN}x"),), id="token-prefix"),
    ],
)
def test_calls_without_the_right_token_are_unauthenticated(
    registry: Path, metadata: Metadata
) -> None:
    """Both RPCs refuse a missing or wrong token, and the details echo no token."""

    async def scenario(stub: ModelAdminAsyncStub) -> list[tuple[grpc.StatusCode, str]]:
        return [
            await _failure(stub.ListModels(admin_pb2.ListModelsRequest(), metadata=metadata)),
            await _failure(stub.Reload(admin_pb2.ReloadRequest(), metadata=metadata)),
        ]

    for code, details in _with_admin(registry, scenario):
        assert code is grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in details
        assert TOKEN not in details
        assert WRONG_TOKEN not in details


def test_an_unauthenticated_reload_changes_nothing(registry: Path) -> None:
    """A refused Reload does not look at the registry: the promotion waits."""
    publish_copy(registry, OTHER_VERSION)
    champion = Registry(registry).alias(CHAMPION)

    async def scenario(stub: ModelAdminAsyncStub) -> str:
        point_alias(registry, CHAMPION, OTHER_VERSION)
        wrong = (("authorization", f"Bearer {WRONG_TOKEN}"),)
        await _failure(stub.Reload(admin_pb2.ReloadRequest(), metadata=wrong))
        return (await _list(stub)).serving_version

    assert _with_admin(registry, scenario) == champion


def test_the_bearer_scheme_is_case_insensitive(registry: Path) -> None:
    """RFC 7235: "bearer" and "BEARER" name the same scheme; the token itself is exact."""

    async def scenario(stub: ModelAdminAsyncStub) -> str:
        lower = (("authorization", f"bearer {TOKEN}"),)
        response = await stub.ListModels(
            admin_pb2.ListModelsRequest(), metadata=lower, timeout=TIMEOUT
        )
        return response.serving_version

    assert _with_admin(registry, scenario) == Registry(registry).alias(CHAMPION)


def test_list_models_describes_the_registry_and_what_is_served(registry: Path) -> None:
    """Every published version with its aliases and metrics; the champion is serving."""
    publish_copy(registry, OTHER_VERSION)
    champion = Registry(registry).alias(CHAMPION) or ""
    manifest = read_manifest(Registry(registry).artifact_dir(champion))

    response = _with_admin(registry, _list)

    assert (response.serving_version, response.challenger_version) == (champion, "")
    assert [(item.version, list(item.aliases)) for item in response.versions] == [
        (champion, [CHAMPION]),
        (OTHER_VERSION, []),
    ]
    served = response.versions[0]
    assert served.created_at.ToDatetime(tzinfo=manifest.created_at.tzinfo) == manifest.created_at
    assert dict(served.test_metrics) == pytest.approx(manifest.metrics["test"])
    assert list(response.refusals) == []


def test_reload_serves_a_promotion_at_once(registry: Path) -> None:
    """Reload looks at the registry now: the promoted version is serving in its answer."""
    publish_copy(registry, OTHER_VERSION)

    async def scenario(stub: ModelAdminAsyncStub) -> admin_pb2.ListModelsResponse:
        point_alias(registry, CHAMPION, OTHER_VERSION)
        return await _reload(stub)

    response = _with_admin(registry, scenario)
    assert response.serving_version == OTHER_VERSION
    assert [list(item.aliases) for item in response.versions] == [[], [CHAMPION]]


def test_reload_of_a_broken_champion_reports_the_refusal_and_keeps_serving(
    registry: Path,
) -> None:
    """A refused version comes back as a refusal with its reason; the old champion serves."""
    champion = Registry(registry).alias(CHAMPION)
    flip_first_byte(publish_copy(registry, BROKEN_VERSION) / ONNX_MODEL_FILE)

    async def scenario(stub: ModelAdminAsyncStub) -> list[admin_pb2.ListModelsResponse]:
        point_alias(registry, CHAMPION, BROKEN_VERSION)
        return [await _reload(stub), await _reload(stub)]

    for response in _with_admin(registry, scenario):
        assert response.serving_version == champion
        assert [(item.alias, item.version, item.reason) for item in response.refusals] == [
            (CHAMPION, BROKEN_VERSION, "checksum_mismatch")
        ]
        assert "SHA-256" in response.refusals[0].detail


def test_without_a_configured_token_the_service_is_not_offered(registry: Path) -> None:
    """No admin token in the settings: ModelAdmin is UNIMPLEMENTED, even with a token sent."""

    async def scenario(stub: ModelAdminAsyncStub) -> tuple[grpc.StatusCode, str]:
        return await _failure(
            stub.ListModels(admin_pb2.ListModelsRequest(), metadata=AUTHORIZED, timeout=TIMEOUT)
        )

    code, _ = _with_admin(registry, scenario, token=None)
    assert code is grpc.StatusCode.UNIMPLEMENTED


def test_an_unreadable_registry_is_internal_without_the_error_text(registry: Path) -> None:
    """A look that fails unexpectedly answers INTERNAL "internal error": no path, no text."""

    async def scenario(stub: ModelAdminAsyncStub) -> list[tuple[grpc.StatusCode, str]]:
        alias_file = Registry(registry).alias_path(CHAMPION)
        alias_file.unlink()
        alias_file.mkdir()  # reading it now fails with IsADirectoryError
        return [await _failure(_reload(stub)), await _failure(_list(stub))]

    for code, details in _with_admin(registry, scenario):
        assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error")
