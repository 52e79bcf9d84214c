"""A plaintext port that serves `grpc.health.v1` alone, for probes that cannot speak TLS.

Kubernetes' native gRPC probes (and most load balancers' health checks) connect in
plaintext and present no client certificate, so with TLS (or mutual TLS) on the scoring port
they fail whatever the server's health. This second server shares the scoring server's
health service (the same statuses, "", `fraud.v1.FraudScoring` and `liveness`) and nothing
else: no scoring, no reflection, no admin. A health status says nothing about a caller or a
card, which is why production mode accepts it unencrypted; bind it where only the kubelet
or the load balancer can reach it if even that is too much.
"""

from __future__ import annotations

import grpc
from grpc_health.v1.health import aio as health_aio

from service.config.settings import ServerSettings
from service.grpc_api.health_service import add_health_service
from service.grpc_api.server import BindError


def build_health_server(
    settings: ServerSettings, health: health_aio.HealthServicer
) -> tuple[grpc.aio.Server, int] | None:
    """A server for `health` alone on `settings.health_port`, bound but not started, and
    the port it bound; None when no health port is configured. Must run inside the event
    loop that will serve it. BindError if the address is taken."""
    if settings.health_port is None:
        return None
    server = grpc.aio.server(
        # Workers share the port as they share the scoring port; each answers for itself,
        # and all of them are one pod's readiness.
        # Probes come every few seconds, outside the scoring port's in-flight budget.
        options=[("grpc.so_reuseport", int(settings.workers > 1))],
    )
    add_health_service(health, server)
    address = settings.address_of(settings.health_port)
    try:
        return server, server.add_insecure_port(address)
    except RuntimeError as error:  # grpc says only "Failed to bind"
        raise BindError(f"cannot listen on {address} (server.health_port): {error}") from error
