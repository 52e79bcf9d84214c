"""The values the gRPC adapter and the scoring core hand each other.

Plain frozen, slotted dataclasses and IntEnums, so the core never sees a protobuf message
and the adapter never sees a feature. `RawTransaction` and `RawOutcome` are requests as they
arrived, not yet validated; `ScoreResult` and `ModelSummary` are the core's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


@dataclass(frozen=True, slots=True)
class RawTransaction:
    """A transaction exactly as received: any field may be empty, absurd or unknown.

    `timestamp_ns` is the event time in nanoseconds since the Unix epoch, None when not
    sent; `mcc` 0 means not sent; `entry_mode` is the wire enum number, possibly one this
    server does not know; `card_present` None means not known.
    """

    transaction_id: str
    card_id: str
    terminal_id: str
    merchant_id: str
    amount_minor: int
    currency: str
    timestamp_ns: int | None
    mcc: int
    entry_mode: int
    card_present: bool | None
    country: str


@dataclass(frozen=True, slots=True)
class RawOutcome:
    """A confirmed label as received; `reported_at_ns` is None when not sent."""

    transaction_id: str
    is_fraud: bool
    reported_at_ns: int | None


class Decision(IntEnum):
    """What the caller should do. The numbers are the wire enum's: never renumber."""

    APPROVE = 1
    REVIEW = 2
    DECLINE = 3


class DecisionSource(IntEnum):
    """Who decided. The numbers are the wire enum's: never renumber."""

    MODEL = 1
    FALLBACK = 2


@dataclass(frozen=True, slots=True)
class Reason:
    """One feature's contribution to the log-odds of fraud, with its stable reason code."""

    code: str
    feature: str
    contribution: float


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """The answer for one transaction.

    `reasons` come strongest first; `fallback_reason` is empty when the model decided.
    """

    transaction_id: str
    score: float
    decision: Decision
    reasons: tuple[Reason, ...]
    model_version: str
    source: DecisionSource
    fallback_reason: str


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """The deciding model as callers see it: `features` are (name, description) pairs."""

    version: str
    created_at: datetime
    feature_engine_version: int
    features: tuple[tuple[str, str], ...]
    review_threshold: float
    decline_threshold: float
    threshold_policy: str
    test_metrics: dict[str, float]
    training_libraries: dict[str, str]
