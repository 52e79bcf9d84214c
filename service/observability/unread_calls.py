"""Calls gRPC's core ended before the server read them, counted from channelz at each scrape.

Under a CPU-bound overload the queue of calls not yet picked up forms in gRPC's core, and
beyond `server.max_pending_calls` waiting the core refuses a new call at once, in C (the
client sees CANCELLED): no Python code runs for it, so the interceptor's counts
(`fraud_rpc_requests_total`, `fraud_shed_total`) never see it. The core's own registry,
channelz, does: for each server it counts the calls started and, of those the server
picked up, the ones that ended OK (succeeded) and otherwise (failed). A call that neither
succeeded nor failed was never read by the server (refused beyond the backlog, or
cancelled or expired by its client while it waited), unless the server holds it now:

    fraud_rpc_refused_unread_total = started - succeeded - failed - held by the server

summed over the process's gRPC servers (scoring and health ports), computed when
Prometheus scrapes, so a call costs nothing. "Held" is what the server's own gauges count:
`fraud_rpc_in_flight` (unary scoring calls, and stream transactions read ahead, which
overstate the calls held by the transactions beyond one a stream) plus `fraud_streams_open`.
Calls held that neither gauge counts (a health check or reflection call in progress, an
admin call, a call picked up and not yet past the interceptor) read as unread at that
scrape. A counter must never go down, so the metric is the highest value computed so far:
an understatement at one scrape is made up at the next, and the overstatement is at most
the most such calls held at one scrape, once, not per scrape.

Why `grpc._cython.cygrpc`, which is not grpcio's public API: the public `grpcio-channelz`
package serves this very call over gRPC (its servicer parses the same JSON into protobuf
messages) and offers nothing to call in process; reading it here gives the same numbers
without a dependency and a second server. If a grpcio release drops the call, the metric
stays at its last value and the failure is logged once (tests/test_overload.py checks it
counts the refusals a flood gets).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable

import structlog
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # no stubs: grpcio internals
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.observability.metrics import IN_FLIGHT, OPEN_STREAMS

_log = structlog.get_logger(__name__)

NAME = "fraud_rpc_refused_unread"
HELP = (
    "Calls gRPC's core ended before the server read them: refused beyond "
    "server.max_pending_calls (the client saw CANCELLED), or cancelled or expired by their "
    "client while waiting to be picked up. From channelz at each scrape: started - "
    "succeeded - failed - held, summed over this process's gRPC servers."
)


def channelz_unfinished_calls() -> int:
    """Calls started and neither succeeded nor failed, summed over every gRPC server of this
    process (channelz pages its list of servers: each page says whether it is the last)."""
    unfinished = 0
    start = 0
    while True:
        page = json.loads(cygrpc.channelz_get_servers(start))
        servers = page.get("server", [])
        for server in servers:
            data = server["data"]  # proto3 JSON: counts are strings, zeros left out
            unfinished += int(data.get("callsStarted", 0))
            unfinished -= int(data.get("callsSucceeded", 0))
            unfinished -= int(data.get("callsFailed", 0))
        if page.get("end", True) or not servers:
            return unfinished
        start = max(int(server["ref"]["serverId"]) for server in servers) + 1


def held_by_server() -> float:
    """What the server's own gauges count as held: scoring work in flight, open streams."""
    families = [*IN_FLIGHT.collect(), *OPEN_STREAMS.collect()]
    return sum(sample.value for family in families for sample in family.samples)


class UnreadCalls(Collector):
    """`fraud_rpc_refused_unread_total`: the highest of started - finished - held so far."""

    def __init__(
        self,
        unfinished: Callable[[], int] = channelz_unfinished_calls,
        held: Callable[[], float] = held_by_server,
    ) -> None:
        self._unfinished = unfinished
        self._held = held
        self._highest = 0.0
        self._lock = threading.Lock()  # scrapes may come on several threads at once
        self._warned = False

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            try:
                self._highest = max(self._highest, self._unfinished() - self._held())
            except (AttributeError, KeyError, ValueError) as error:
                if not self._warned:  # once: at every scrape it would flood the log
                    _log.warning("channelz_unreadable", error=repr(error))
                    self._warned = True
            value = self._highest
        yield CounterMetricFamily(NAME, HELP, value=value)


_tracked: list[UnreadCalls] = []


def track_unread_calls() -> None:
    """Export `fraud_rpc_refused_unread_total` on the default registry, counted from now
    (a server built again in the same process, as tests do, replaces the collector)."""
    while _tracked:
        REGISTRY.unregister(_tracked.pop())
    collector = UnreadCalls()
    REGISTRY.register(collector)
    _tracked.append(collector)
