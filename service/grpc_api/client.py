"""A small typed client for the backends that call the fraud-scoring service.

Plain Python values in, the wire response out; one synchronous channel per client, plain
text by default, TLS when given the server's root certificates, mutual TLS when also given
a client key and certificate chain. Calls raise `grpc.RpcError` on any non-OK status.

Example::

    from datetime import UTC, datetime

    from service.grpc_api.client import FraudScoringClient

    with FraudScoringClient("localhost:50051") as client:
        response = client.score(
            "tx-0001", "tok_4f2a", "term-17", 1250, "EUR", datetime.now(UTC), mcc=5411
        )
        print(response.decision, response.score, [r.code for r in response.reasons])
        client.report_outcome("tx-0001", is_fraud=True, reported_at=datetime.now(UTC))

The channel connects on the first call, which therefore also pays for the connection (and
the TLS handshake) within `timeout`.
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Self

import grpc
from google.protobuf import timestamp_pb2

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc


class FraudScoringClient:
    """A connection to one scoring server; every call waits at most `timeout` seconds."""

    def __init__(
        self,
        target: str,
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        timeout: float = 0.05,
    ) -> None:
        self._channel = _open_channel(target, root_certificates, private_key, certificate_chain)
        self._stub = scoring_pb2_grpc.FraudScoringStub(self._channel)
        self._timeout = timeout

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
        return self._stub.Score(request, timeout=self._timeout)

    def report_outcome(self, transaction_id: str, is_fraud: bool, reported_at: datetime) -> None:
        """Reports the confirmed outcome of an earlier transaction, known since `reported_at`."""
        request = build_outcome_request(transaction_id, is_fraud, reported_at)
        self._stub.ReportOutcome(request, timeout=self._timeout)

    def model_info(self) -> scoring_pb2.ModelInfo:
        """The model currently deciding: version, features, thresholds and metrics."""
        return self._stub.GetModelInfo(scoring_pb2.GetModelInfoRequest(), timeout=self._timeout)

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
        return grpc.insecure_channel(target)
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("mutual TLS needs both private_key and certificate_chain")
    credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    return grpc.secure_channel(target, credentials)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    # A naive datetime would be read as UTC and silently shift every local time.
    if moment.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware datetimes")
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp
