"""The card transaction as the scoring core sees it, whatever transport it came from.

Both the training replay and the gRPC adapter build `Transaction` values and hand them to
the feature engine, so every conversion that could make the two paths disagree lives here:
amounts from minor units and event times from nanoseconds.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

NANOS_PER_SECOND = 1_000_000_000
# ISO 4217 minor-unit exponents run from 0 (JPY) to 4 (CLF).
_POWERS_OF_TEN = (1, 10, 100, 1_000, 10_000)


class EntryMode(IntEnum):
    """How the card data reached the terminal. The numbers are feature values: never renumber."""

    UNKNOWN = 0
    CHIP = 1
    CONTACTLESS = 2
    MAGSTRIPE = 3
    MANUAL = 4
    ECOMMERCE = 5

    @classmethod
    def parse(cls, text: str) -> EntryMode:
        """The mode named `text` (case-insensitive); an empty string is UNKNOWN."""
        if not text:
            return cls.UNKNOWN
        return cls[text.strip().upper()]


class Transaction(NamedTuple):
    """One card swipe. A NamedTuple because the hot path builds one per request.

    `timestamp` is event time in seconds since the Unix epoch (UTC); `amount` is in the
    currency's major units. Optional fields use "" / -1 / None for "not known".
    """

    transaction_id: str
    timestamp: float
    card_id: str
    terminal_id: str
    amount: float
    merchant_id: str = ""
    mcc: int = -1
    entry_mode: EntryMode = EntryMode.UNKNOWN
    currency: str = ""
    country: str = ""
    card_present: bool | None = None


def epoch_seconds(nanoseconds: int) -> float:
    """Event time in seconds from an integer count of nanoseconds.

    One true division of two integers is correctly rounded, so a CSV timestamp and a
    protobuf Timestamp that name the same instant give the same float.
    """
    return nanoseconds / NANOS_PER_SECOND


def major_units(amount_minor: int, exponent: int) -> float:
    """An amount in major units from minor units (cents): correctly rounded, like parsing."""
    return amount_minor / _POWERS_OF_TEN[exponent]
