"""The feature engine: one transaction in, its feature vector out, entity state updated.

`FEATURES` is the model's input contract, in order. Changing a feature's meaning or order
means bumping `FEATURE_ENGINE_VERSION`, so that a server refuses models built for another.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from service.domain import Transaction
from service.features.card import CARD_FEATURES, CARD_WINDOWS, CardHistory
from service.features.config import FeatureConfig
from service.features.risk import RISK_WINDOWS, RiskHistory, risk_features

FEATURE_ENGINE_VERSION = 1

HOUR = 3_600
DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0


class FeatureSpec(NamedTuple):
    name: str
    description: str


_CONTEXT_FEATURES = (
    ("amount", "Transaction amount in the currency's major units."),
    ("hour_of_day", "Hour of the event time, UTC (0-23)."),
    ("day_of_week", "Weekday of the event time, UTC (Monday is 0)."),
)
_OPTIONAL_FIELD_FEATURES = (
    ("mcc", "Merchant category code; -1 when not sent."),
    ("entry_mode", "EntryMode number (0 unknown, 1 chip, ... 5 e-commerce)."),
    ("card_present", "1 card present, 0 not present, -1 not sent."),
)

FEATURES: tuple[FeatureSpec, ...] = tuple(
    FeatureSpec(name, description)
    for name, description in (
        *_CONTEXT_FEATURES,
        *CARD_FEATURES,
        *risk_features("terminal", "Terminal"),
        *risk_features("merchant", "Merchant (-1 when no merchant_id)"),
        *_OPTIONAL_FIELD_FEATURES,
    )
)
FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)

_NO_MERCHANT = (-1.0,) * (2 * len(RISK_WINDOWS))


class _OutcomeTarget(NamedTuple):
    """Where a transaction sits in the risk state, so a later outcome can find it."""

    timestamp: float
    terminal: RiskHistory
    terminal_index: int
    merchant: RiskHistory | None
    merchant_index: int


class FeatureEngine:
    """Online feature state for every card, terminal and merchant seen so far.

    Not thread-safe: one engine per process (or per worker owning a shard of entities).
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self._label_delay = config.label_delay_seconds
        self._small_amount = config.small_amount
        # An outcome can change a feature only while its transaction sits in some window.
        self._outcome_horizon = self._label_delay + max(RISK_WINDOWS[-1], CARD_WINDOWS[-1])
        self._cards: dict[str, CardHistory] = {}
        self._terminals: dict[str, RiskHistory] = {}
        self._merchants: dict[str, RiskHistory] = {}
        self._recent: dict[str, _OutcomeTarget] = {}
        self._recent_order: deque[tuple[float, str]] = deque()

    @property
    def cards_tracked(self) -> int:
        return len(self._cards)

    @property
    def terminals_tracked(self) -> int:
        return len(self._terminals)

    def observe(self, tx: Transaction) -> list[float]:
        """Record `tx` in the entity state and return its feature vector, in `FEATURES` order."""
        timestamp = tx.timestamp
        seconds = int(timestamp // 1)
        out: list[float] = [
            tx.amount,
            seconds // HOUR % 24,
            (seconds // DAY + _EPOCH_WEEKDAY) % 7,
        ]
        card = self._cards.get(tx.card_id)
        if card is None:
            card = self._cards[tx.card_id] = CardHistory()
        card.observe(tx, self._small_amount, out)

        terminal = self._terminals.get(tx.terminal_id)
        if terminal is None:
            terminal = self._terminals[tx.terminal_id] = RiskHistory()
        terminal_index = terminal.observe(timestamp, self._label_delay, out)

        merchant: RiskHistory | None = None
        merchant_index = -1
        if tx.merchant_id:
            merchant = self._merchants.get(tx.merchant_id)
            if merchant is None:
                merchant = self._merchants[tx.merchant_id] = RiskHistory()
            merchant_index = merchant.observe(timestamp, self._label_delay, out)
        else:
            out.extend(_NO_MERCHANT)

        present = tx.card_present
        out.append(tx.mcc)
        out.append(tx.entry_mode)
        out.append(-1 if present is None else int(present))

        self._remember(
            tx.transaction_id,
            _OutcomeTarget(timestamp, terminal, terminal_index, merchant, merchant_index),
        )
        return out

    def report_outcome(self, transaction_id: str, is_fraud: bool, reported_at: float) -> bool:
        """Count `transaction_id` as fraud (or genuine) from event time `reported_at` on.

        Returns False when the transaction is unknown or too old to affect any feature.
        """
        target = self._recent.get(transaction_id)
        if target is None:
            return False
        effective = max(reported_at, target.timestamp)
        target.terminal.schedule_outcome(target.terminal_index, is_fraud, effective)
        if target.merchant is not None:
            target.merchant.schedule_outcome(target.merchant_index, is_fraud, effective)
        return True

    def _remember(self, transaction_id: str, target: _OutcomeTarget) -> None:
        recent = self._recent
        order = self._recent_order
        recent[transaction_id] = target
        order.append((target.timestamp, transaction_id))
        horizon = target.timestamp - self._outcome_horizon
        while order[0][0] < horizon:
            expired_time, expired_id = order.popleft()
            kept = recent.get(expired_id)
            if kept is not None and kept.timestamp == expired_time:
                del recent[expired_id]
