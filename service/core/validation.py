"""Requests checked and converted to domain values before anything touches the feature state.

This runs on every request, so each rule is a plain comparison: no pydantic, no regular
expression unless a string holds 13 digits, and no string formatting unless the request is
bad. The first bad field in the proto's field order raises `InvalidRequest`, named as in the
proto ("transaction.amount_minor") with the reason, never the value: a value can be a card
number.

Card data: every id is searched for a card number (`service.core.card_data`: plain, in
groups, or inside track data). In `card_id` the first one found becomes the card's token
(`service.core.card_tokens`); in any other id the request is refused, so that no card number
reaches the feature state, the records or the logs. Currency and country hold no digits
once valid.

Time: an event time ahead of the server's clock is not refused here (the scoring core
answers it by the fallback rules: `service.core.scoring`); an outcome's report time ahead
of the clock by more than the allowed skew is taken as the latest time allowed, so that
one fast clock cannot push the risk features' windows forward.

Conversions are the ones training uses (`service.core.domain`): amounts from minor units with
the currency's ISO 4217 exponent, event times from integer nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.card_data import MIN_DIGITS, holds_card_number
from service.core.card_tokens import CardTokenizer
from service.core.currency import exponent
from service.core.domain import (
    NANOS_PER_SECOND,
    EntryMode,
    Outcome,
    RawOutcome,
    RawTransaction,
    Transaction,
    epoch_seconds,
    major_units,
)
from service.core.errors import InvalidRequest

# 2000-01-01T00:00:00Z: anything earlier is a unit mistake (seconds sent as nanoseconds...).
_EARLIEST_NS = 946_684_800 * NANOS_PER_SECOND
# 10000-01-01T00:00:00Z: a google.protobuf.Timestamp ends before it, and so does Python's
# datetime, which the decision log writes the event time with. Compared as the seconds the
# rest of the server reads (a float): the last 15 µs of 9999 round up to it.
_AFTER_LATEST_SECONDS = 253_402_300_800.0
_MAX_MCC = 9999
# EntryMode numbers run from 0 without gaps, so a wire number indexes its member.
_ENTRY_MODES = tuple(EntryMode)
CARD_DATA_REFUSED = (
    "holds a card number or card track data, which must not be sent in this field "
    "(the value is not repeated here)"
)


@dataclass(frozen=True, slots=True)
class ScoringLimits:
    """What a request may carry. Plain values: the composition root maps settings onto them."""

    max_string_length: int = 128
    """Longest id (characters) accepted in any string field."""
    max_amount_minor: int = 10**11
    """Largest amount accepted, in minor units (a billion EUR)."""
    max_future_skew_seconds: float = 300.0
    """How far ahead of the server's clock an event time may be and still be scored by the
    model, and a report time be taken as sent."""


def to_transaction(
    raw: RawTransaction, *, limits: ScoringLimits, tokenizer: CardTokenizer
) -> Transaction:
    """The domain transaction for `raw`, its card number (if any) tokenised.

    Raises InvalidRequest naming the first bad field.
    """
    length = limits.max_string_length
    transaction_id = _required_text(raw.transaction_id, "transaction.transaction_id", length)
    card_id = _card_id(raw.card_id, length)
    terminal_id = _required_text(raw.terminal_id, "transaction.terminal_id", length)
    merchant_id = _optional_text(raw.merchant_id, "transaction.merchant_id", length)
    amount_minor = _amount_minor(raw.amount_minor, limits.max_amount_minor)
    digits = _currency_digits(raw.currency)
    timestamp_ns = _event_time_ns(raw.timestamp_ns, "transaction.timestamp")
    return Transaction(
        transaction_id,
        epoch_seconds(timestamp_ns),
        tokenizer.token(card_id),
        terminal_id,
        major_units(amount_minor, digits),
        merchant_id,
        _mcc(raw.mcc),
        _entry_mode(raw.entry_mode),
        raw.currency,
        _country(raw.country),
        raw.card_present,
    )


def to_outcome(raw: RawOutcome, *, now_ns: int, limits: ScoringLimits) -> Outcome:
    """The validated outcome for `raw`; InvalidRequest naming the first bad field.

    `now_ns` is the server's wall clock, in nanoseconds since the Unix epoch: a report time
    more than the allowed skew ahead of it is taken as the latest allowed.
    """
    transaction_id = _required_text(raw.transaction_id, "transaction_id", limits.max_string_length)
    reported_at_ns = _event_time_ns(raw.reported_at_ns, "reported_at")
    latest_ns = now_ns + round(limits.max_future_skew_seconds * NANOS_PER_SECOND)
    return Outcome(transaction_id, raw.is_fraud, epoch_seconds(min(reported_at_ns, latest_ns)))


def _required_text(value: str, field: str, max_length: int) -> str:
    if not value:
        raise InvalidRequest(field, "required")
    return _optional_text(value, field, max_length)


def _card_id(value: str, max_length: int) -> str:
    """The card id as sent: the one field a card number may come in (it is tokenised)."""
    if not value:
        raise InvalidRequest("transaction.card_id", "required")
    if len(value) > max_length:
        raise InvalidRequest("transaction.card_id", f"longer than {max_length} characters")
    return value


def _optional_text(value: str, field: str, max_length: int) -> str:
    length = len(value)
    if length > max_length:
        raise InvalidRequest(field, f"longer than {max_length} characters")
    if length >= MIN_DIGITS and holds_card_number(value):
        raise InvalidRequest(field, CARD_DATA_REFUSED)
    return value


def _amount_minor(value: int, maximum: int) -> int:
    if value < 0:
        raise InvalidRequest("transaction.amount_minor", "must be 0 or more")
    if value > maximum:
        raise InvalidRequest("transaction.amount_minor", f"above the maximum of {maximum}")
    return value


def _currency_digits(code: str) -> int:
    if not code:
        raise InvalidRequest("transaction.currency", "required")
    digits = exponent(code)
    if digits is None:
        raise InvalidRequest("transaction.currency", "not an active ISO 4217 alphabetic code")
    return digits


def _event_time_ns(value: int | None, field: str) -> int:
    if value is None:
        raise InvalidRequest(field, "required")
    if value < _EARLIEST_NS:
        raise InvalidRequest(field, "before 2000-01-01")
    if epoch_seconds(value) >= _AFTER_LATEST_SECONDS:
        raise InvalidRequest(field, "after 9999-12-31")
    return value


def _mcc(value: int) -> int:
    if value == 0:
        return -1  # proto3 zero: not sent
    if not 0 < value <= _MAX_MCC:
        raise InvalidRequest("transaction.mcc", f"must be between 0 and {_MAX_MCC}")
    return value


def _entry_mode(value: int) -> EntryMode:
    if 0 <= value < len(_ENTRY_MODES):
        return _ENTRY_MODES[value]
    raise InvalidRequest("transaction.entry_mode", "unknown entry mode number")


def _country(value: str) -> str:
    if value and not (len(value) == 2 and value.isascii() and value.isalpha() and value.isupper()):
        raise InvalidRequest("transaction.country", "must be 2 uppercase letters or empty")
    return value
