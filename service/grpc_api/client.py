"""A small typed client for the backends that call the fraud-scoring service.

Plain Python values in, the wire response out; one synchronous channel per client, plain
text by default, TLS when given the server's root certificates, mutual TLS when also given
a client key and certificate chain. A caller identified by a bearer token gives it as
`token`: every call carries it (`authorization: Bearer <token>`). Calls raise
`grpc.RpcError` on any non-OK status.

Example::

    from datetime import UTC, datetime

    from service.grpc_api.client import FraudScoringClient, build_score_request

    with FraudScoringClient("localhost:50051") as client:
        response = client.score(
            "tx-0001", "tok_4f2a", "term-17", 1250, "EUR", datetime.now(UTC), mcc=5411
        )
        print(response.decision, response.score, [r.code for r in response.reasons])
        answers = client.score_batch(
            build_score_request(f"tx-000{n}", "tok_4f2a", "term-17", 990, "EUR", datetime.now(UTC))
            for n in (2, 3)
        )
        client.report_outcome("tx-0001", is_fraud=True, reported_at=datetime.now(UTC))

The channel connects on the first call, which therefore also pays for the connection (and
the TLS handshake) within `timeout`.

Several replicas: give the client a `dns:///` name that resolves to every replica (a
Kubernetes headless Service) or several addresses; calls are then balanced one by one
(`round_robin`), not per connection, and a call refused by a replica shutting down is
tried again on another, safe since each call may be repeated. `SERVICE_CONFIG` is that
configuration, for clients in other languages too (docs/deployment.md).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import timestamp_pb2

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc

_SCORING_SERVICE = "fraud.v1.FraudScoring"
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    # A replica opens its port before its model is loaded (probes are answered meanwhile)
    # and says NOT_SERVING from SIGTERM on: the channel watches each one's grpc.health.v1
    # status and sends calls only to those SERVING.
    "healthCheckConfig": {"serviceName": _SCORING_SERVICE},
    # An overloaded server refuses calls in gRPC's core (CANCELLED, `server.max_pending_calls`):
    # tried again, each would come back up to three times. Once more than 50 calls have
    # failed net of a tenth of the successes, retries wait until successes return.
    "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
    "methodConfig": [
        {
            "name": [
                {"service": _SCORING_SERVICE, "method": "Score"},
                {"service": _SCORING_SERVICE, "method": "ScoreBatch"},
                {"service": _SCORING_SERVICE, "method": "ReportOutcome"},
                {"service": _SCORING_SERVICE, "method": "GetModelInfo"},
            ],
            # Within a POS deadline of tens of milliseconds: two more tries, soon.
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.005s",
                "maxBackoff": "0.05s",
                "backoffMultiplier": 2,
                # CANCELLED too: a server shutting down cancels the calls it had received
                # but not yet handed to a handler (grpc/grpc#41785), where UNAVAILABLE is
                # meant. A call the client itself cancels is never retried.
                "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
            },
        }
    ],
}
"""gRPC's service config for callers of the scoring service: calls balanced one by one over
every address the target resolves to whose health is SERVING, and each unary call tried
again on UNAVAILABLE (or CANCELLED by a server shutting down), unless most calls fail
(retries throttled, so that an overloaded server is not asked thrice). Every one is safe to
repeat: a transaction id is scored once and answered alike after (each of a batch's too);
an outcome reported again changes no feature, and retraining takes the latest report per
transaction; model info only reads."""

CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30_000),  # the server allows one every 10 s
    ("grpc.keepalive_timeout_ms", 10_000),
    # gRPC waits 1 s, then 1.6 times longer each time (up to 2 minutes) before connecting
    # again to an address that refused: a replica restarted in 3 s would get calls seconds
    # after it listens. 100 ms, then at most 1 s apart.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


def balanced_target(addresses: Sequence[str]) -> str:
    """The gRPC target of several `ip:port` addresses (`ipv4:` or `ipv6:` lists), for
    round-robin over fixed replicas; give a `dns:///` name instead for hosts by name."""
    hosts = [_ip_and_port(address) for address in addresses]
    if not hosts:
        raise ValueError("no address given")
    versions = {ip.version for ip, _ in hosts}
    if len(versions) > 1:
        raise ValueError("mix no IPv4 and IPv6 addresses in one target")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in hosts)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in hosts)


def _ip_and_port(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, separator, port = address.rpartition(":")
    try:
        if not separator:
            raise ValueError(address)
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")), int(port)
    except ValueError:
        raise ValueError(
            f"{address!r} is not ip:port; for host names give one dns:/// target"
        ) from None


class FraudScoringClient:
    """A channel to the scoring service; every call waits at most `timeout` seconds.

    `target` is one address or name (`host:port`, `dns:///name:port`), or several `ip:port`
    addresses; calls are balanced over every address it resolves to (`SERVICE_CONFIG`).
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
        timeout: float = 0.05,
    ) -> None:
        if not isinstance(target, str):
            target = balanced_target(target)
        self._channel = _open_channel(target, root_certificates, private_key, certificate_chain)
        self._stub = scoring_pb2_grpc.FraudScoringStub(self._channel)
        self._timeout = timeout
        self._metadata = () if token is None else bearer_metadata(token)

    def score(
        self,
        transaction_id: str,
        card_id: str,
        terminal_id: str,
        amount_minor: int,
        currency: str,
        timestamp: datetime,
        *,
        merchant_id: str = "",
        mcc: int = 0,
        entry_mode: int = 0,
        card_present: bool | None = None,
        country: str = "",
    ) -> scoring_pb2.ScoreResponse:
        """Scores one transaction; arguments as in `build_score_request`."""
        request = build_score_request(
            transaction_id,
            card_id,
            terminal_id,
            amount_minor,
            currency,
            timestamp,
            merchant_id=merchant_id,
            mcc=mcc,
            entry_mode=entry_mode,
            card_present=card_present,
            country=country,
        )
        return self._stub.Score(request, timeout=self._timeout, metadata=self._metadata)

    def score_batch(
        self, requests: Iterable[scoring_pb2.ScoreRequest]
    ) -> list[scoring_pb2.ScoreResponse]:
        """Scores several transactions in one call (`ScoreBatch`), each as `score` would one
        after the other; the answers in the same order. Build each request with
        `build_score_request`. One invalid transaction fails the call (INVALID_ARGUMENT
        naming it, "transaction #k: ...") and none is counted; the server takes at most
        `connections.batch_max_transactions` (64 by default) in one call."""
        request = scoring_pb2.ScoreBatchRequest(transactions=requests)
        response = self._stub.ScoreBatch(request, timeout=self._timeout, metadata=self._metadata)
        return list(response.results)

    def report_outcome(self, transaction_id: str, is_fraud: bool, reported_at: datetime) -> None:
        """Reports the confirmed outcome of an earlier transaction, known since `reported_at`."""
        request = build_outcome_request(transaction_id, is_fraud, reported_at)
        self._stub.ReportOutcome(request, timeout=self._timeout, metadata=self._metadata)

    def model_info(self) -> scoring_pb2.ModelInfo:
        """The model currently deciding: version, features, thresholds and metrics."""
        return self._stub.GetModelInfo(
            scoring_pb2.GetModelInfoRequest(), timeout=self._timeout, metadata=self._metadata
        )

    def close(self) -> None:
        """Closes the channel; calls made afterwards raise ValueError."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that identifies a caller by its bearer `token`."""
    return (("authorization", f"Bearer {token}"),)


def build_score_request(
    transaction_id: str,
    card_id: str,
    terminal_id: str,
    amount_minor: int,
    currency: str,
    timestamp: datetime,
    *,
    merchant_id: str = "",
    mcc: int = 0,
    entry_mode: int = 0,
    card_present: bool | None = None,
    country: str = "",
) -> scoring_pb2.ScoreRequest:
    """The Score request for one transaction.

    `amount_minor` is in the currency's minor units; `timestamp` (event time) must be
    timezone-aware; `entry_mode` is a `scoring_pb2.EntryMode` number; `mcc` 0,
    `card_present` None and empty strings mean "not known".
    """
    transaction = scoring_pb2.Transaction(
        transaction_id=transaction_id,
        card_id=card_id,
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        amount_minor=amount_minor,
        currency=currency,
        timestamp=_timestamp(timestamp),
        mcc=mcc,
        entry_mode=scoring_pb2.EntryMode.ValueType(entry_mode),
        card_present=card_present,
        country=country,
    )
    return scoring_pb2.ScoreRequest(transaction=transaction)


def build_outcome_request(
    transaction_id: str, is_fraud: bool, reported_at: datetime
) -> scoring_pb2.OutcomeRequest:
    """The ReportOutcome request; `reported_at` must be timezone-aware."""
    return scoring_pb2.OutcomeRequest(
        transaction_id=transaction_id, is_fraud=is_fraud, reported_at=_timestamp(reported_at)
    )


def _open_channel(
    target: str,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.Channel:
    if root_certificates is None:
        if private_key is not None or certificate_chain is not None:
            raise ValueError("a client key and certificate chain need root_certificates (TLS)")
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("mutual TLS needs both private_key and certificate_chain")
    credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    # A naive datetime would be read as UTC and silently shift every local time.
    if moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware datetimes")
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp
