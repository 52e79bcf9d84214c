"""Tests for service.core.validation: raw requests checked and converted to domain values."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.card_data import holds_card_number
from service.core.card_tokens import CardTokenizer
from service.core.domain import (
    NANOS_PER_SECOND,
    EntryMode,
    Outcome,
    RawOutcome,
    RawTransaction,
    Transaction,
)
from service.core.errors import InvalidRequest
from service.core.validation import CARD_DATA_REFUSED, ScoringLimits, to_outcome, to_transaction

LIMITS = ScoringLimits()
TOKENIZER = CardTokenizer(b"test key")
NOW_NS = 1_767_225_600 * NANOS_PER_SECOND  # 2026-01-01T00:00:00Z
EVENT_NS = NOW_NS - 90 * NANOS_PER_SECOND
YEAR_2000_NS = 946_684_800 * NANOS_PER_SECOND
# 10000-01-01T00:00:00Z: past the last instant a google.protobuf.Timestamp can hold.
YEAR_10000_NS = 253_402_300_800 * NANOS_PER_SECOND
SKEW_NS = int(LIMITS.max_future_skew_seconds) * NANOS_PER_SECOND
PAN = "4111 1111 1111 1111"
DIGITS = "4111111111111111"
# One card number in every form a caller might send it in.
CARD_DATA = (
    DIGITS,
    PAN,
    "4111-1111-1111-1111",
    "4111.1111.1111.1111",
    f"%B{DIGITS}^CARDHOLDER/TEST^2512101000000123456?",
    f";{DIGITS}=25121010000012345678?",
    f"terminal {DIGITS}",
)

VALID = RawTransaction(
    transaction_id="tx-1",
    card_id="card-1",
    terminal_id="term-1",
    merchant_id="merch-1",
    amount_minor=1234,
    currency="EUR",
    timestamp_ns=EVENT_NS,
    mcc=5411,
    entry_mode=2,
    card_present=True,
    country="FR",
)


def _convert(**changes: Any) -> Transaction:
    raw = dataclasses.replace(VALID, **changes)
    return to_transaction(raw, limits=LIMITS, tokenizer=TOKENIZER)


def test_a_valid_transaction_converts_field_by_field() -> None:
    """Every field reaches the domain transaction, amount and time in their domain units."""
    assert _convert() == Transaction(
        transaction_id="tx-1",
        timestamp=EVENT_NS / NANOS_PER_SECOND,
        card_id="card-1",
        terminal_id="term-1",
        amount=12.34,
        merchant_id="merch-1",
        mcc=5411,
        entry_mode=EntryMode.CONTACTLESS,
        currency="EUR",
        country="FR",
        card_present=True,
    )


@pytest.mark.parametrize(
    ("currency", "amount"), [("EUR", 12.34), ("JPY", 1234.0), ("KWD", 1.234), ("CLF", 0.1234)]
)
def test_amount_uses_the_currency_exponent(currency: str, amount: float) -> None:
    """1234 minor units are 12.34 EUR, 1234 JPY, 1.234 KWD and 0.1234 CLF."""
    assert _convert(currency=currency).amount == amount


def test_optional_fields_not_sent() -> None:
    """Empty merchant and country, mcc 0, entry mode 0 and no card_present mean "not known"."""
    tx = _convert(merchant_id="", country="", mcc=0, entry_mode=0, card_present=None)
    assert (tx.merchant_id, tx.country, tx.mcc) == ("", "", -1)
    assert tx.entry_mode is EntryMode.UNKNOWN
    assert tx.card_present is None


@pytest.mark.parametrize("mode", list(EntryMode))
def test_every_entry_mode_number_maps_to_its_member(mode: EntryMode) -> None:
    """The wire number of each entry mode gives that mode."""
    assert _convert(entry_mode=int(mode)).entry_mode is mode


@pytest.mark.parametrize("card_id", CARD_DATA)
def test_card_numbers_are_tokenised(card_id: str) -> None:
    """A card number sent as card_id, in any form, track data included, reaches the domain
    only as the token of its digits."""
    tx = _convert(card_id=card_id)
    assert tx.card_id == TOKENIZER.token(DIGITS)
    assert tx.card_id.startswith("k1:")


@pytest.mark.parametrize("value", CARD_DATA)
@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("transaction_id", "transaction.transaction_id"),
        ("terminal_id", "transaction.terminal_id"),
        ("merchant_id", "transaction.merchant_id"),
        ("currency", "transaction.currency"),
        ("country", "transaction.country"),
    ],
)
def test_card_data_in_any_other_field_is_refused_unquoted(
    value: str, name: str, field: str
) -> None:
    """A card number or track data in any string field but card_id is refused, naming the
    field and never quoting the value, nor its last four digits."""
    with pytest.raises(InvalidRequest) as caught:
        _convert(**{name: value})
    assert caught.value.field == field
    assert "1111" not in str(caught.value)
    assert "1111" not in repr(caught.value)


def test_card_data_is_refused_with_its_own_reason() -> None:
    """Ids holding card data are refused for that reason, which names no value."""
    with pytest.raises(InvalidRequest) as caught:
        _convert(terminal_id=f"T-{DIGITS}")
    assert caught.value.reason == CARD_DATA_REFUSED


@pytest.mark.parametrize(
    "terminal_id",
    [
        "12345678901234567890",  # 20 digits: an order number, not a card
        "4111111111111112",  # fails the Luhn check
        "550e8400-e29b-41d4-a716-446655440000",
        "term-000000012345",
    ],
)
def test_long_ids_that_hold_no_card_number_pass(terminal_id: str) -> None:
    """Digits that make no card number are not refused."""
    assert _convert(terminal_id=terminal_id).terminal_id == terminal_id


def test_an_event_time_ahead_of_the_clock_is_not_refused_here() -> None:
    """The scoring core, not validation, answers a transaction from a clock ahead (by the
    fallback rules): a year ahead converts."""
    year_ahead_ns = NOW_NS + 365 * 86_400 * NANOS_PER_SECOND
    assert _convert(timestamp_ns=year_ahead_ns).timestamp == year_ahead_ns / NANOS_PER_SECOND


@pytest.mark.parametrize(
    "changes",
    [
        {"transaction_id": "x" * 128, "merchant_id": "m" * 128},
        {"amount_minor": 0},
        {"amount_minor": LIMITS.max_amount_minor},
        {"timestamp_ns": YEAR_2000_NS},
        {"timestamp_ns": NOW_NS + SKEW_NS},
        {"timestamp_ns": 2**63 - 1},
        {"timestamp_ns": YEAR_10000_NS - NANOS_PER_SECOND},
        {"mcc": 1},
        {"mcc": 9999},
        {"card_present": False},
    ],
)
def test_values_on_the_limits_are_accepted(changes: dict[str, Any]) -> None:
    """The longest ids, zero and maximum amounts, and the edge times and MCCs are valid."""
    _convert(**changes)


@pytest.mark.parametrize("before_10000_ns", [1, 15_000, 16_000, 10**6, NANOS_PER_SECOND])
def test_every_event_time_accepted_can_be_written_as_a_date(before_10000_ns: int) -> None:
    """The decision log writes the event time as a datetime, which ends with year 9999."""
    try:
        converted = _convert(timestamp_ns=YEAR_10000_NS - before_10000_ns)
    except InvalidRequest:
        return
    assert datetime.fromtimestamp(converted.timestamp, UTC).year == 9999


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"transaction_id": ""}, "transaction.transaction_id", "required"),
        ({"transaction_id": "x" * 129}, "transaction.transaction_id", "longer than 128"),
        ({"card_id": ""}, "transaction.card_id", "required"),
        ({"card_id": "c" * 129}, "transaction.card_id", "longer than 128"),
        ({"terminal_id": ""}, "transaction.terminal_id", "required"),
        ({"terminal_id": "t" * 10_000}, "transaction.terminal_id", "longer than 128"),
        ({"merchant_id": "m" * 129}, "transaction.merchant_id", "longer than 128"),
        ({"amount_minor": -1}, "transaction.amount_minor", "0 or more"),
        ({"amount_minor": -(2**63)}, "transaction.amount_minor", "0 or more"),
        ({"amount_minor": 10**11 + 1}, "transaction.amount_minor", "above the maximum"),
        ({"amount_minor": 2**63 - 1}, "transaction.amount_minor", "above the maximum"),
        ({"currency": ""}, "transaction.currency", "required"),
        ({"currency": "eur"}, "transaction.currency", "ISO 4217"),
        ({"currency": "EURO"}, "transaction.currency", "ISO 4217"),
        ({"currency": "XAU"}, "transaction.currency", "ISO 4217"),
        ({"timestamp_ns": None}, "transaction.timestamp", "required"),
        ({"timestamp_ns": 0}, "transaction.timestamp", "before 2000-01-01"),
        ({"timestamp_ns": YEAR_2000_NS - 1}, "transaction.timestamp", "before 2000-01-01"),
        ({"timestamp_ns": -(2**63)}, "transaction.timestamp", "before 2000-01-01"),
        # Found by `fraud-bench fuzz`: such a time was answered (a clock_skew fallback), then
        # failed the decision log's encoding and took its chunk of records down with it.
        ({"timestamp_ns": YEAR_10000_NS}, "transaction.timestamp", "after 9999-12-31"),
        # Found by fraud-bench fuzz: as seconds (a float) it rounds up to 10000-01-01.
        ({"timestamp_ns": YEAR_10000_NS - 1}, "transaction.timestamp", "after 9999-12-31"),
        ({"mcc": 10_000}, "transaction.mcc", "between 0 and 9999"),
        ({"mcc": 2**32 - 1}, "transaction.mcc", "between 0 and 9999"),
        ({"mcc": -1}, "transaction.mcc", "between 0 and 9999"),
        ({"entry_mode": 6}, "transaction.entry_mode", "unknown"),
        ({"entry_mode": -1}, "transaction.entry_mode", "unknown"),
        ({"entry_mode": 2**31 - 1}, "transaction.entry_mode", "unknown"),
        ({"country": "fr"}, "transaction.country", "2 uppercase letters"),
        ({"country": "FRA"}, "transaction.country", "2 uppercase letters"),
        ({"country": "F"}, "transaction.country", "2 uppercase letters"),
        ({"country": "1A"}, "transaction.country", "2 uppercase letters"),
        ({"country": "\u00c9S"}, "transaction.country", "2 uppercase letters"),
    ],
)
def test_invalid_fields_are_named_with_the_reason(
    changes: dict[str, Any], field: str, reason: str
) -> None:
    """Each bad field raises InvalidRequest with its proto name and why it is refused."""
    with pytest.raises(InvalidRequest) as caught:
        _convert(**changes)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value) == f"{field}: {caught.value.reason}"


def test_the_first_bad_field_in_proto_order_is_named() -> None:
    """With several bad fields, the one declared first in the proto is reported."""
    with pytest.raises(InvalidRequest) as caught:
        _convert(country="fr", amount_minor=-5, card_id="")
    assert caught.value.field == "transaction.card_id"


def test_errors_never_quote_the_value() -> None:
    """A refused card number does not appear in the error (it goes back to callers and logs)."""
    pan = "4111111111111111" + " " * 120
    for changes in ({"card_id": pan}, {"terminal_id": pan}, {"transaction_id": DIGITS}):
        with pytest.raises(InvalidRequest) as caught:
            _convert(**changes)
        assert "4111" not in str(caught.value)
        assert "4111" not in repr(caught.value)


STRICT = ScoringLimits(max_string_length=4, max_amount_minor=100, max_future_skew_seconds=0)
ON_STRICT_LIMITS = dataclasses.replace(
    VALID,
    transaction_id="tx-1",
    card_id="c",
    terminal_id="t",
    merchant_id="",
    amount_minor=100,
    timestamp_ns=NOW_NS,
)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"transaction_id": "tx-12"}, "transaction.transaction_id"),
        ({"amount_minor": 101}, "transaction.amount_minor"),
    ],
)
def test_the_callers_limits_apply(changes: dict[str, Any], field: str) -> None:
    """Configured limits hold: values on them pass, values just beyond are refused."""
    to_transaction(ON_STRICT_LIMITS, limits=STRICT, tokenizer=TOKENIZER)
    beyond = dataclasses.replace(ON_STRICT_LIMITS, **changes)
    with pytest.raises(InvalidRequest) as caught:
        to_transaction(beyond, limits=STRICT, tokenizer=TOKENIZER)
    assert caught.value.field == field


def test_a_valid_outcome_converts() -> None:
    """An outcome keeps its id and label, its report time in event-time seconds."""
    raw = RawOutcome("tx-1", True, EVENT_NS)
    assert to_outcome(raw, now_ns=NOW_NS, limits=LIMITS) == Outcome(
        "tx-1", True, EVENT_NS / NANOS_PER_SECOND
    )


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (RawOutcome("", True, EVENT_NS), "transaction_id", "required"),
        (RawOutcome("x" * 129, False, EVENT_NS), "transaction_id", "longer than 128"),
        (RawOutcome("tx-1", True, None), "reported_at", "required"),
        (RawOutcome("tx-1", True, YEAR_2000_NS - 1), "reported_at", "before 2000-01-01"),
        (RawOutcome(DIGITS, True, EVENT_NS), "transaction_id", CARD_DATA_REFUSED),
        (RawOutcome(f";{DIGITS}=2512101?", True, EVENT_NS), "transaction_id", CARD_DATA_REFUSED),
    ],
)
def test_invalid_outcomes_are_named_with_the_reason(
    raw: RawOutcome, field: str, reason: str
) -> None:
    """A bad outcome field raises InvalidRequest with its proto name (no prefix)."""
    with pytest.raises(InvalidRequest) as caught:
        to_outcome(raw, now_ns=NOW_NS, limits=LIMITS)
    assert caught.value.field == field
    assert reason in caught.value.reason


@pytest.mark.parametrize("ahead_ns", [SKEW_NS + 1, 365 * 86_400 * NANOS_PER_SECOND, 2**63 - 1])
def test_a_report_time_beyond_the_skew_is_taken_as_the_latest_allowed(ahead_ns: int) -> None:
    """An outcome from a clock ahead is accepted, counted from the server's clock plus the
    allowed skew, so that it cannot move any window further."""
    outcome = to_outcome(RawOutcome("tx-1", True, NOW_NS + ahead_ns), now_ns=NOW_NS, limits=LIMITS)
    assert outcome.reported_at == (NOW_NS + SKEW_NS) / NANOS_PER_SECOND


_ANY_INT = st.integers(min_value=-(2**70), max_value=2**70)
_TEXT = st.one_of(st.text(max_size=200), st.sampled_from(["", "x" * 128, "x" * 129, *CARD_DATA]))


RAW_TRANSACTIONS = st.builds(
    RawTransaction,
    transaction_id=_TEXT,
    card_id=_TEXT,
    terminal_id=_TEXT,
    merchant_id=_TEXT,
    amount_minor=st.one_of(st.integers(0, 10**6), _ANY_INT),
    currency=st.one_of(st.sampled_from(["EUR", "JPY", "KWD", "CLF"]), st.text(max_size=5)),
    timestamp_ns=st.one_of(st.integers(YEAR_2000_NS, NOW_NS), st.none(), _ANY_INT),
    mcc=st.one_of(st.integers(0, 9999), _ANY_INT),
    entry_mode=st.one_of(st.integers(0, 5), _ANY_INT),
    card_present=st.one_of(st.none(), st.booleans()),
    country=st.one_of(st.sampled_from(["", "FR", "US"]), st.text(max_size=3)),
)


def _converted_or_error(raw: RawTransaction) -> Transaction | InvalidRequest:
    try:
        return to_transaction(raw, limits=LIMITS, tokenizer=TOKENIZER)
    except InvalidRequest as error:
        return error


@settings(max_examples=1_000, deadline=None)
@given(RAW_TRANSACTIONS)
def test_any_raw_transaction_converts_or_is_invalid(raw: RawTransaction) -> None:
    """Whatever arrives converts to a sane transaction or raises InvalidRequest, nothing else."""
    result = _converted_or_error(raw)
    if isinstance(result, InvalidRequest):
        assert result.field.startswith("transaction.")
        return
    assert 0.0 <= result.amount <= LIMITS.max_amount_minor
    assert result.timestamp >= YEAR_2000_NS / NANOS_PER_SECOND
    assert result.mcc == -1 or 1 <= result.mcc <= 9999
    assert all((result.transaction_id, result.card_id, result.terminal_id))
    for text in (result.transaction_id, result.card_id, result.terminal_id, result.merchant_id):
        assert not holds_card_number(text)
