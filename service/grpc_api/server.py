"""The grpc.aio server: the scoring service, health checking, reflection (unless switched
off) and, when some caller holds the `admin` role, model administration, on one port.

`build_server` returns the server and the port it bound (port 0 binds a free one: tests).
Health follows the standard `grpc.health.v1` protocol for the whole server ("") and for
`fraud.v1.FraudScoring`: NOT_SERVING from `create_health` until `set_serving` (called once
a model is loaded and warmed up), NOT_SERVING again from `shut_down` on. The service
`liveness` is SERVING from `create_health` until `shut_down`, model or not: a liveness
probe must not restart a process that is waiting, alive, for a model that verifies (a
restart would not bring one, and a crash loop hides the refusal). Health and
reflection calls are not subject to load shedding, nor to callers' roles (see
`interceptors`, `auth`).

Connections (`connections` settings): HTTP/2 caps the calls one connection has open
(`max_calls_per_connection`), a connection idle for `max_idle_seconds` is sent away, and
clients pinging more often than `server.min_client_ping_seconds` are sent away after
`_MAX_PING_STRIKES` such pings (keepalive enforcement), as is a connection older than
`server.max_connection_age_seconds`, its calls given `server.grace_seconds`.

Backlog: calls arrived but not yet picked up by the event loop wait in gRPC's core, in a
queue per method of the generated services (registered with the core: Score, ScoreStream,
ScoreBatch, ReportOutcome, GetModelInfo, the admin methods) and one for the rest (health,
reflection), so a flood of Score calls does not refuse health checks. Beyond
`server.max_pending_calls` calls in a queue, gRPC's core refuses a new one at once, in C,
with no Python work: grpcio's server resets its HTTP/2 stream, which the client sees as
CANCELLED (not RESOURCE_EXHAUSTED, which only the promise-based server of gRPC's core would
send, and grpcio does not use it). No interceptor sees those calls: the server counts them
from gRPC's channelz at each scrape (`fraud_rpc_refused_unread_total`,
`service.observability.unread_calls`).

Port sharing: with `server.workers` above 1, several processes bind the same port
(SO_REUSEPORT) and the kernel spreads connections among them; they share the feature
state's LMDB store, so a card's history is whole whichever worker scores it. With
one worker (the default) port reuse is switched off, so a second server started on a busy
port fails instead of silently taking half of the traffic.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from service.config.settings import (
    ConnectionSettings,
    ServerSettings,
    ServeSettings,
    TlsSettings,
)
from service.grpc_api._proto.fraud.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)
from service.grpc_api.admin import ModelAdministration, ModelAdminServicer
from service.grpc_api.auth import CallerDirectory
from service.grpc_api.health_service import add_health_service
from service.grpc_api.interceptors import AdmissionInterceptor, CallLimits
from service.grpc_api.rate_limits import CallerRateLimits, report_rates
from service.grpc_api.servicer import FraudScoringServicer, ScoringCore
from service.observability.logs import RequestLogSampler

SCORING_SERVICE_NAME: str = scoring_pb2.DESCRIPTOR.services_by_name["FraudScoring"].full_name
ADMIN_SERVICE_NAME: str = admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
REPORT_OUTCOME_METHOD = f"/{SCORING_SERVICE_NAME}/ReportOutcome"
HEALTH_SERVICE_NAMES = (health.OVERALL_HEALTH, SCORING_SERVICE_NAME)
# The health service name of the process itself, serving or waiting for a model.
LIVENESS_SERVICE_NAME = "liveness"

HealthServicer = health_aio.HealthServicer
# Pings closer together than server.min_client_ping_seconds a client may send before it is
# sent away (gRPC's own default, written out so that it is a decision).
_MAX_PING_STRIKES = 2

_log = structlog.get_logger(__name__)


class BindError(Exception):
    """The server cannot listen on the configured address."""


async def create_health() -> HealthServicer:
    """A health service that says NOT_SERVING for the server and the scoring service, and
    SERVING for `liveness`."""
    servicer = HealthServicer()
    await _set_status(servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    await servicer.set(LIVENESS_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return servicer


async def set_serving(servicer: HealthServicer) -> None:
    """Report the server and the scoring service SERVING (ignored once shutting down)."""
    await _set_status(servicer, health_pb2.HealthCheckResponse.SERVING)


def build_server(
    settings: ServeSettings,
    scorer: ScoringCore,
    health_servicer: HealthServicer,
    *,
    models: ModelAdministration | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A server for `scorer` and `health_servicer`, bound but not started, and its port.

    With `models` and a caller holding the `admin` role, the `fraud.v1.ModelAdmin` service
    too. Logs, once, a warning for each development-only choice of `settings.auth` and
    `settings.admin`. Must run inside the event loop that will serve it. BindError if the
    address is taken.
    """
    callers = CallerDirectory.from_settings(settings.auth, settings.admin.token)
    _warn_about_access(settings, callers)
    servicer = FraudScoringServicer(
        scorer,
        budget_seconds=settings.budget.server_budget_ms / 1000,
        log_sampler=RequestLogSampler(settings.logging.sample_rate),
        stream_max_batch=settings.connections.stream_max_batch,
        batch_max_transactions=settings.connections.batch_max_transactions,
    )
    rate_limits = {
        REPORT_OUTCOME_METHOD: CallerRateLimits("ReportOutcome", report_rates(settings)),
    }
    server = grpc.aio.server(
        interceptors=[
            AdmissionInterceptor(call_limits(settings), callers, rate_limits=rate_limits)
        ],
        options=_channel_options(settings.server, settings.connections),
    )
    scoring_pb2_grpc.add_FraudScoringServicer_to_server(servicer, server)
    add_health_service(health_servicer, server)
    services = [SCORING_SERVICE_NAME, health.SERVICE_NAME]
    if models is not None and "admin" in callers.roles:
        admin_pb2_grpc.add_ModelAdminServicer_to_server(
            ModelAdminServicer(models, card_token=settings.card_tokenizer().token), server
        )
        services.append(ADMIN_SERVICE_NAME)
    if settings.auth.reflection:
        reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], server)
    return server, _bind(server, settings.server, settings.tls)


def call_limits(settings: ServeSettings) -> CallLimits:
    """The admission limits `settings` give."""
    connections = settings.connections
    return CallLimits(
        max_in_flight=settings.server.max_in_flight,
        max_open_streams=connections.max_open_streams,
        request_read_seconds=connections.request_read_seconds,
        stream_idle_seconds=connections.stream_idle_seconds,
        stream_max_seconds=connections.stream_max_seconds,
    )


def _warn_about_access(settings: ServeSettings, callers: CallerDirectory) -> None:
    if callers.open_scoring:
        _log.warning(
            "callers_not_configured",
            advice="every scoring method is open to anyone who reaches the port: configure "
            "auth.callers (FRAUD_AUTH__CALLERS); production mode refuses to start so",
        )
    if settings.admin.token is not None:
        _log.warning(
            "admin_token_deprecated",
            advice="admin.token stands for a caller named 'admin-token' with the admin role: "
            "give a caller of auth.callers the admin role instead",
        )


async def shut_down(
    server: grpc.aio.Server, health_servicer: HealthServicer, grace_seconds: float
) -> None:
    """Health NOT_SERVING at once, then stop: calls in progress get `grace_seconds` to end.

    New calls are refused from the start. An open health Watch is a call in progress too:
    it receives NOT_SERVING, and holds the stop until its watcher leaves or the grace ends.
    """
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_seconds)


async def _set_status(servicer: HealthServicer, status: int) -> None:
    for service in HEALTH_SERVICE_NAMES:
        await servicer.set(service, status)


def _channel_options(
    server: ServerSettings, connections: ConnectionSettings
) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", server.max_message_bytes),
        ("grpc.max_send_message_length", server.max_message_bytes),
        ("grpc.so_reuseport", int(server.workers > 1)),
        ("grpc.max_connection_age_ms", _milliseconds(server.max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", _milliseconds(server.grace_seconds)),
        ("grpc.keepalive_time_ms", _milliseconds(server.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            _milliseconds(server.min_client_ping_seconds),
        ),
        ("grpc.http2.max_ping_strikes", _MAX_PING_STRIKES),
        ("grpc.max_connection_idle_ms", _milliseconds(connections.max_idle_seconds)),
        ("grpc.max_concurrent_streams", connections.max_calls_per_connection),
        # One limit, not gRPC's soft one and a hard one with random refusals between them:
        # a refusal that can be predicted can be documented and tested.
        ("grpc.server.max_pending_requests", server.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", server.max_pending_calls),
    ]


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _bind(server: grpc.aio.Server, settings: ServerSettings, tls: TlsSettings) -> int:
    address = settings.scoring_address
    try:
        if tls.cert_file is None or tls.key_file is None:
            return server.add_insecure_port(address)
        credentials = _credentials(tls.cert_file, tls.key_file, tls.client_ca_file)
        return server.add_secure_port(address, credentials)
    # grpc says only "Failed to bind": the address is in use or not a local interface.
    except RuntimeError as error:
        raise BindError(f"cannot listen on {address}: {error}") from error


def _credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> grpc.ServerCredentials:
    """TLS with the key pair; mutual TLS when a client CA bundle is given."""
    client_ca = None if client_ca_file is None else client_ca_file.read_bytes()
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
