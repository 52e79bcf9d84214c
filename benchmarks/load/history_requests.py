"""Score requests from a simulated history, built as a backend would build them.

Shared by the load tools and by the tests that feed a history through a real server: one
conversion of a CSV row (`fraud-train simulate`'s columns) to the wire, exact in minor units.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from service.core.currency import exponent
from service.core.domain import EntryMode
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.client import build_score_request


def request_from_row(row: dict[str, str]) -> scoring_pb2.ScoreRequest:
    """The Score request for one history row (its amount text scaled to minor units)."""
    card_present = row.get("card_present", "")
    return build_score_request(
        row["transaction_id"],
        row["card_id"],
        row["terminal_id"],
        amount_minor(row["amount"], row["currency"]),
        row["currency"],
        datetime.fromisoformat(row["timestamp"]),
        merchant_id=row.get("merchant_id", ""),
        mcc=int(row.get("mcc") or 0),
        entry_mode=EntryMode.parse(row.get("entry_mode", "")),
        card_present=None if not card_present else card_present == "true",
        country=row.get("country", ""),
    )


def amount_minor(text: str, currency: str) -> int:
    """`text` (major units, e.g. "61.28") in `currency`'s minor units; exact or ValueError."""
    digits = exponent(currency)
    if digits is None:
        raise ValueError(f"unknown currency {currency!r}")
    scaled = Decimal(text).scaleb(digits)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"amount {text!r} has more decimals than {currency} allows")
    return int(scaled)
