"""The second half of the vector: terminal and merchant risk, fed by reported outcomes."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from service.core.domain import Transaction
from service.features.card_history import CARD_WINDOWS
from service.features.config import FeatureConfig
from service.features.risk_history import RISK_WINDOWS, RiskHistory, risk_features

_NO_MERCHANT = (-1.0,) * (2 * len(RISK_WINDOWS))


def risk_feature_specs() -> tuple[tuple[str, str], ...]:
    """Names and descriptions of this half, in output order."""
    return (
        *risk_features("terminal", "Terminal"),
        *risk_features("merchant", "Merchant (-1 when no merchant_id)"),
    )


class _OutcomeTarget(NamedTuple):
    """Where a transaction sits in the risk state, so a later outcome can find it."""

    timestamp: float
    terminal: RiskHistory
    terminal_index: int
    merchant: RiskHistory | None
    merchant_index: int


class RiskFeatures:
    """Risk state of every terminal and merchant, and the recent transactions outcomes
    can still reach."""

    def __init__(self, config: FeatureConfig) -> None:
        self._label_delay = config.label_delay_seconds
        # An outcome can change a feature only while its transaction sits in some window.
        self._outcome_horizon = self._label_delay + max(RISK_WINDOWS[-1], CARD_WINDOWS[-1])
        self._terminals: dict[str, RiskHistory] = {}
        self._merchants: dict[str, RiskHistory] = {}
        self._recent: dict[str, _OutcomeTarget] = {}
        self._recent_order: deque[tuple[float, str]] = deque()

    @property
    def terminals_tracked(self) -> int:
        return len(self._terminals)

    def observe(self, tx: Transaction, out: list[float]) -> None:
        """Record `tx` at its terminal and merchant; append this half of its vector."""
        timestamp = tx.timestamp
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
            out += _NO_MERCHANT
        self._remember(
            tx.transaction_id,
            _OutcomeTarget(timestamp, terminal, terminal_index, merchant, merchant_index),
        )

    def report_outcome(self, transaction_id: str, is_fraud: bool, reported_at: float) -> bool:
        """See `FeatureEngine.report_outcome`."""
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
