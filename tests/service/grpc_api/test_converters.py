"""Conversions between the wire messages and the scoring core's values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from service.core.domain import (
    Decision,
    DecisionSource,
    FallbackReason,
    ModelSummary,
    RawOutcome,
    RawTransaction,
    Reason,
    ScoreResult,
)
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.converters import (
    to_model_info,
    to_raw_outcome,
    to_raw_transaction,
    to_score_response,
)

# Nanoseconds a float64 cannot hold exactly: the conversion must stay in integers.
SECONDS = 1_700_000_000
NANOS = 123_456_789
EXACT_NS = 1_700_000_000_123_456_789


def _full_transaction() -> scoring_pb2.Transaction:
    return scoring_pb2.Transaction(
        transaction_id="tx-1",
        card_id="tok_1",
        terminal_id="term-1",
        merchant_id="merchant-1",
        amount_minor=12_345,
        currency="EUR",
        timestamp=Timestamp(seconds=SECONDS, nanos=NANOS),
        mcc=5411,
        entry_mode=scoring_pb2.ENTRY_MODE_CONTACTLESS,
        card_present=True,
        country="FR",
    )


def test_every_transaction_field_is_carried_over():
    """A fully populated request becomes a RawTransaction with the same values."""
    raw = to_raw_transaction(scoring_pb2.ScoreRequest(transaction=_full_transaction()))

    assert raw == RawTransaction(
        transaction_id="tx-1",
        card_id="tok_1",
        terminal_id="term-1",
        merchant_id="merchant-1",
        amount_minor=12_345,
        currency="EUR",
        timestamp_ns=EXACT_NS,
        mcc=5411,
        entry_mode=2,
        card_present=True,
        country="FR",
    )


def test_unset_transaction_fields_read_as_not_sent():
    """An empty request gives empty strings, zeros and None for timestamp and card_present."""
    raw = to_raw_transaction(scoring_pb2.ScoreRequest())

    assert raw == RawTransaction("", "", "", "", 0, "", None, 0, 0, None, "")


def test_card_present_false_is_not_confused_with_unset():
    """card_present sent as False stays False; only an unset field is None."""
    transaction = _full_transaction()
    transaction.card_present = False

    raw = to_raw_transaction(scoring_pb2.ScoreRequest(transaction=transaction))

    assert raw.card_present is False


def test_empty_timestamp_reads_as_not_sent():
    """A Timestamp sent with no seconds and no nanos counts as missing."""
    transaction = _full_transaction()
    transaction.timestamp.CopyFrom(Timestamp())

    raw = to_raw_transaction(scoring_pb2.ScoreRequest(transaction=transaction))

    assert transaction.HasField("timestamp")
    assert raw.timestamp_ns is None


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (SECONDS, NANOS, EXACT_NS),
        (253_402_300_799, 999_999_999, 253_402_300_799_999_999_999),  # 9999-12-31T23:59:59.9…
        (-1, 999_999_999, -1),  # just before the epoch
        (0, 1, 1),
    ],
)
def test_timestamps_convert_to_exact_integer_nanoseconds(seconds, nanos, expected):
    """seconds * 10**9 + nanos, computed in integers, whatever the magnitude."""
    transaction = scoring_pb2.Transaction(timestamp=Timestamp(seconds=seconds, nanos=nanos))

    raw = to_raw_transaction(scoring_pb2.ScoreRequest(transaction=transaction))

    assert raw.timestamp_ns == expected
    assert type(raw.timestamp_ns) is int


def test_unknown_entry_mode_passes_through_as_its_number():
    """An enum number this server does not know reaches validation unchanged."""
    wire = scoring_pb2.ScoreRequest(
        transaction=scoring_pb2.Transaction(entry_mode=scoring_pb2.EntryMode.ValueType(99))
    ).SerializeToString()

    raw = to_raw_transaction(scoring_pb2.ScoreRequest.FromString(wire))

    assert raw.entry_mode == 99


def test_extreme_integers_pass_through_unchanged():
    """Negative amounts and the largest mcc arrive as sent: judging them is validation's job."""
    transaction = scoring_pb2.Transaction(amount_minor=-(2**63), mcc=2**32 - 1)

    raw = to_raw_transaction(scoring_pb2.ScoreRequest(transaction=transaction))

    assert (raw.amount_minor, raw.mcc) == (-(2**63), 2**32 - 1)


def test_every_outcome_field_is_carried_over():
    """An outcome request becomes a RawOutcome with exact nanoseconds."""
    request = scoring_pb2.OutcomeRequest(
        transaction_id="tx-1", is_fraud=True, reported_at=Timestamp(seconds=SECONDS, nanos=NANOS)
    )

    assert to_raw_outcome(request) == RawOutcome("tx-1", is_fraud=True, reported_at_ns=EXACT_NS)


def test_missing_reported_at_reads_as_not_sent():
    """An outcome without reported_at has reported_at_ns None."""
    assert to_raw_outcome(scoring_pb2.OutcomeRequest(transaction_id="tx-1")) == RawOutcome(
        "tx-1", is_fraud=False, reported_at_ns=None
    )


def test_every_score_result_field_reaches_the_response():
    """A model decision with reasons fills every response field, reasons in order."""
    result = ScoreResult(
        transaction_id="tx-1",
        score=0.93,
        decision=Decision.DECLINE,
        reasons=(
            Reason("TERMINAL_RECENT_FRAUD", "terminal_risk_7d", 1.25),
            Reason("CARD_VELOCITY", "card_tx_count_1h", 0.5),
        ),
        model_version="20250101T000000Z-abc",
        source=DecisionSource.MODEL,
        fallback_reason=None,
    )

    response = to_score_response(result)

    assert response == scoring_pb2.ScoreResponse(
        transaction_id="tx-1",
        score=0.93,
        decision=scoring_pb2.DECISION_DECLINE,
        reasons=[
            scoring_pb2.Reason(
                code="TERMINAL_RECENT_FRAUD", feature="terminal_risk_7d", contribution=1.25
            ),
            scoring_pb2.Reason(code="CARD_VELOCITY", feature="card_tx_count_1h", contribution=0.5),
        ],
        model_version="20250101T000000Z-abc",
        decision_source=scoring_pb2.DECISION_SOURCE_MODEL,
    )


def test_fallback_result_reaches_the_response():
    """A fallback answer carries its source and reason and no reasons list."""
    result = ScoreResult(
        "tx-2",
        0.0,
        Decision.REVIEW,
        (),
        "",
        DecisionSource.FALLBACK,
        FallbackReason.MODEL_UNAVAILABLE,
    )

    response = to_score_response(result)

    assert response.decision == scoring_pb2.DECISION_REVIEW
    assert response.decision_source == scoring_pb2.DECISION_SOURCE_FALLBACK
    assert response.fallback_reason == "model_unavailable"
    assert list(response.reasons) == []


def test_domain_enums_have_the_wire_names_and_numbers():
    """Decision and DecisionSource are the wire enums minus UNSPECIFIED, number for number."""
    assert {f"DECISION_{d.name}": d.value for d in Decision} == {
        name: number for name, number in scoring_pb2.Decision.items() if number
    }
    assert {f"DECISION_SOURCE_{s.name}": s.value for s in DecisionSource} == {
        name: number for name, number in scoring_pb2.DecisionSource.items() if number
    }


def test_every_model_summary_field_reaches_model_info():
    """The model summary fills every ModelInfo field, created_at to the microsecond."""
    created_at = datetime(2025, 3, 1, 12, 30, 15, 123_456, tzinfo=UTC)
    summary = ModelSummary(
        version="v7",
        created_at=created_at,
        feature_engine_version=3,
        features=(("amount", "Amount in major units"), ("card_tx_count_1h", "Card velocity")),
        review_threshold=0.4,
        decline_threshold=0.8,
        threshold_policy="max_review_rate",
        test_metrics={"auc_roc": 0.91, "average_precision": 0.42},
        training_libraries={"lightgbm": "4.6.0", "numpy": "2.3.0"},
    )

    info = to_model_info(summary)

    assert info.version == "v7"
    assert info.created_at.ToDatetime(tzinfo=UTC) == created_at
    assert info.feature_engine_version == 3
    assert [(f.name, f.description) for f in info.features] == list(summary.features)
    assert (info.review_threshold, info.decline_threshold) == (0.4, 0.8)
    assert info.threshold_policy == "max_review_rate"
    assert dict(info.test_metrics) == summary.test_metrics
    assert dict(info.training_libraries) == summary.training_libraries
