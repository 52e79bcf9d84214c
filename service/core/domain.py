"""The values of the scoring core, whatever transport they came from or go to.

`RawTransaction` and `RawOutcome` are requests as they arrived, not yet validated;
`Transaction` and `Outcome` are what validation makes of them; `ScoreResult` and
`ModelSummary` are the core's answers. Plain frozen, slotted dataclasses, NamedTuples and
enums, so the core never sees a protobuf message and the adapter never sees a feature.

Both the training replay and the gRPC adapter build `Transaction` values and hand them to
the feature engine, so every conversion that could make the two paths disagree lives here:
amounts from minor units and event times from nanoseconds.

The closed sets (decisions, who decided, why the fallback answered, fallback policies) are
enums or `Literal`s defined here once, so mypy finds a misspelt one before a request does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Literal, NamedTuple, get_args

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
    RULE = 3
    """A list or an analyst rule decided (`service.core.rules`): `ScoreResult.rule_id`."""


class FallbackReason(StrEnum):
    """Why the fallback rules answered instead of the model. The values are the ones callers,
    metric labels and the decision log see: never rename."""

    DEADLINE = "deadline"
    """The answer was due before the work could start; the feature state is untouched."""
    MODEL_UNAVAILABLE = "model_unavailable"
    """No model is loaded yet (or none verified)."""
    MODEL_ERROR = "model_error"
    """The model failed on this transaction (logged with its trace)."""
    STATE_UNAVAILABLE = "state_unavailable"
    """The feature state's store failed (full, unreachable or broken): the transaction is
    not counted, so a retry is scored once the store is back. Also the answer to a repeat
    of a transaction counted but never answered (a crash in between)."""
    CLOCK_SKEW = "clock_skew"
    """The event time is further ahead of the server's clock than the allowed skew (the
    terminal's clock or the server's is wrong): the transaction is not counted, so no card,
    terminal or merchant window moves to a wrong clock's time, and a retry is answered
    alike."""


FallbackMode = Literal["amount_floor", "decline", "disabled"]
"""How the fallback decides: "amount_floor" approves below a floor and reviews above it,
"decline" declines everything, "disabled" answers nothing (`ModelUnavailable`)."""
FALLBACK_MODES: tuple[FallbackMode, ...] = get_args(FallbackMode)


class Outcome(NamedTuple):
    """A validated outcome: `reported_at` in event-time seconds since the Unix epoch."""

    transaction_id: str
    is_fraud: bool
    reported_at: float


class OutcomeFate(IntEnum):
    """What the feature state made of a valid outcome, which decides where it is kept: the
    outcome log for a transaction the state holds, the quarantine for any other. False
    (0) alone when the state does not hold the transaction."""

    NOT_HELD = 0
    """The state holds no such transaction: never scored (a made-up id), or forgotten
    (past the state horizon, dropped by a bound, or scored before a restart of a server
    keeping its state in memory)."""
    COUNTED = 1
    """Held, and its label is now this report's (`service.core.label_conflicts`)."""
    OUTRANKED = 2
    """Held, but an earlier report by a higher-ranked caller keeps its label."""
    TOO_LATE = 3
    """Held, but reported further after its event than the state horizon: it changes no
    feature any more."""
    STATE_UNAVAILABLE = 4
    """The state's store failed: whether it holds the transaction is not known."""

    @property
    def held(self) -> bool:
        """Whether the state holds the transaction: the outcome belongs in the outcome log."""
        return self in _HELD


_HELD = frozenset({OutcomeFate.COUNTED, OutcomeFate.OUTRANKED, OutcomeFate.TOO_LATE})


@dataclass(frozen=True, slots=True)
class Reason:
    """One feature's contribution to the log-odds of fraud, with its stable reason code."""

    code: str
    feature: str
    contribution: float


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """The answer for one transaction.

    `reasons` come strongest first; `fallback_reason` is None when the model decided.
    When a list or rule decided (source RULE), `rule_id` names it and `rules_version` the
    rules or lists version it came from, its reason comes first, and `score` and
    `fallback_reason` are still the model's (0.0 and why, when it could not answer).
    """

    transaction_id: str
    score: float
    decision: Decision
    reasons: tuple[Reason, ...]
    model_version: str
    source: DecisionSource
    fallback_reason: FallbackReason | None
    rule_id: str = ""
    rules_version: str = ""


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


class Admitted(NamedTuple):
    """A transaction counted for the first time: its feature vector, and the answer kept
    with it (None when none could be given)."""

    features: Sequence[float]
    answer: ScoreResult | None


class EarlierAttempt(NamedTuple):
    """What the feature state holds of a transaction_id already counted: the transaction as
    first validated, and its answer (None while, or if, none was given)."""

    transaction: Transaction
    answer: ScoreResult | None
