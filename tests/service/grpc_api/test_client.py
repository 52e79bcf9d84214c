"""The client helper's request building and setup (its calls are tested end to end)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from service.core.domain import EntryMode
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.client import (
    SERVICE_CONFIG,
    FraudScoringClient,
    balanced_target,
    build_outcome_request,
    build_score_request,
)

PARIS_WINTER = timezone(timedelta(hours=1))
MOMENT = datetime(2025, 1, 15, 9, 30, 0, 250_000, tzinfo=PARIS_WINTER)
MOMENT_UTC = Timestamp(seconds=1_736_929_800, nanos=250_000_000)  # 08:30:00.25Z


def test_score_request_carries_every_argument():
    """Each argument lands in its Transaction field, the time converted to UTC."""
    request = build_score_request(
        "tx-1",
        "tok_1",
        "term-1",
        12_345,
        "EUR",
        MOMENT,
        merchant_id="merchant-1",
        mcc=5411,
        entry_mode=EntryMode.CONTACTLESS,
        card_present=False,
        country="FR",
    )

    assert request == scoring_pb2.ScoreRequest(
        transaction=scoring_pb2.Transaction(
            transaction_id="tx-1",
            card_id="tok_1",
            terminal_id="term-1",
            merchant_id="merchant-1",
            amount_minor=12_345,
            currency="EUR",
            timestamp=MOMENT_UTC,
            mcc=5411,
            entry_mode=scoring_pb2.ENTRY_MODE_CONTACTLESS,
            card_present=False,
            country="FR",
        )
    )


def test_score_request_leaves_optional_fields_unset():
    """Defaults send no merchant, mcc, entry mode, country, and leave card_present unset."""
    transaction = build_score_request("tx-1", "tok_1", "term-1", 0, "EUR", MOMENT).transaction

    assert not transaction.HasField("card_present")
    assert (transaction.merchant_id, transaction.mcc, transaction.country) == ("", 0, "")
    assert transaction.entry_mode == scoring_pb2.ENTRY_MODE_UNSPECIFIED


def test_outcome_request_carries_every_argument():
    """The outcome request has the id, the label and reported_at in UTC."""
    request = build_outcome_request("tx-1", True, MOMENT)

    assert request == scoring_pb2.OutcomeRequest(
        transaction_id="tx-1", is_fraud=True, reported_at=MOMENT_UTC
    )


def test_naive_datetimes_are_refused():
    """A datetime without a time zone is an error, not silently taken as UTC."""
    naive = datetime(2025, 1, 15, 9, 30)

    with pytest.raises(ValueError, match="timezone-aware"):
        build_score_request("tx-1", "tok_1", "term-1", 0, "EUR", naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_outcome_request("tx-1", False, naive)


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ({"private_key": b"key", "certificate_chain": b"chain"}, "need root_certificates"),
        ({"root_certificates": b"ca", "private_key": b"key"}, "both private_key"),
        ({"root_certificates": b"ca", "certificate_chain": b"chain"}, "both private_key"),
    ],
)
def test_incomplete_tls_material_is_refused(credentials, message):
    """A client key without its chain, or either without root certificates, is an error."""
    with pytest.raises(ValueError, match=message):
        FraudScoringClient("127.0.0.1:50051", **credentials)


def test_closed_client_refuses_calls():
    """Leaving the context closes the channel, so later calls fail at once."""
    with FraudScoringClient("127.0.0.1:50051") as client:
        pass

    with pytest.raises(ValueError, match="closed channel"):
        client.score("tx-1", "tok_1", "term-1", 100, "EUR", datetime.now(UTC))


def test_several_addresses_make_one_balanced_target():
    """Fixed replicas by address: one gRPC target listing them all, IPv4 or IPv6."""
    assert balanced_target(["127.0.0.1:50051", "10.0.0.7:50052"]) == (
        "ipv4:127.0.0.1:50051,10.0.0.7:50052"
    )
    assert balanced_target(["[::1]:50051", "[fd00::7]:50051"]) == "ipv6:[::1]:50051,[fd00::7]:50051"


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ([], "no address"),
        (["localhost:50051"], "dns:///"),
        (["127.0.0.1"], "not ip:port"),
        (["127.0.0.1:50051", "[::1]:50051"], "IPv4 and IPv6"),
    ],
)
def test_addresses_that_cannot_be_balanced_are_refused(addresses, message):
    """Host names need a dns:/// target (resolved, and re-resolved, by gRPC)."""
    with pytest.raises(ValueError, match=message):
        FraudScoringClient(addresses)


def test_docs_give_callers_the_service_config_the_client_sets():
    """docs/deployment.md's JSON, which other languages' callers copy, is `SERVICE_CONFIG`."""
    text = (Path(__file__).parents[3] / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    configs = [json.loads(block) for block in blocks if '"loadBalancingConfig"' in block]
    assert configs == [SERVICE_CONFIG]
