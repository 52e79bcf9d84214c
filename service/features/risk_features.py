"""The second half of the vector: terminal and merchant risk, fed by reported outcomes."""

from __future__ import annotations

from array import array

from service.core.domain import OutcomeFate, Transaction
from service.core.label_conflicts import DEFAULT_RANK, prevails
from service.features.config import FeatureConfig
from service.features.risk_history import RISK_WINDOW_DAYS, RiskRing, risk_features, risk_last_time
from service.features.state import EntityKind, StateSession, TransactionRecord

_NO_MERCHANT = (-1.0,) * (2 * len(RISK_WINDOW_DAYS))


def risk_feature_specs() -> tuple[tuple[str, str], ...]:
    """Names and descriptions of this half, in output order."""
    return (
        *risk_features("terminal", "Terminal"),
        *risk_features("merchant", "Merchant (-1 when no merchant_id)"),
    )


class RiskFeatures:
    """Risk of every terminal and merchant, and where each transaction's outcome goes."""

    def __init__(self, config: FeatureConfig) -> None:
        self._ring = RiskRing(config.label_delay_seconds)
        self._horizon = config.state_horizon_seconds

    def observe(
        self, session: StateSession, tx: Transaction, out: list[float]
    ) -> TransactionRecord:
        """Count `tx` at its terminal and merchant; append this half of its vector.

        Returns the transaction's record (not yet stored): where its outcome must go.
        """
        terminal_tile = self._observe(session, EntityKind.TERMINAL, tx.terminal_id, tx, out)
        merchant_tile = -1
        if tx.merchant_id:
            merchant_tile = self._observe(session, EntityKind.MERCHANT, tx.merchant_id, tx, out)
        else:
            out += _NO_MERCHANT
        return TransactionRecord(tx, terminal_tile, merchant_tile)

    def report_outcome(
        self,
        session: StateSession,
        transaction_id: str,
        is_fraud: bool,
        reported_at: float,
        rank: int = DEFAULT_RANK,
    ) -> OutcomeFate:
        """See `FeatureEngine.report_outcome`."""
        record = session.transaction(transaction_id)
        if record is None:
            return OutcomeFate.NOT_HELD
        if reported_at - record.transaction.timestamp > self._horizon:
            return OutcomeFate.TOO_LATE
        if not prevails(rank, record.label_rank):
            return OutcomeFate.OUTRANKED
        change = int(is_fraud) - int(record.is_fraud)
        if change:
            tx = record.transaction
            self._apply(
                session,
                EntityKind.TERMINAL,
                tx.terminal_id,
                record.terminal_tile,
                change,
                reported_at,
            )
            if tx.merchant_id:
                self._apply(
                    session,
                    EntityKind.MERCHANT,
                    tx.merchant_id,
                    record.merchant_tile,
                    change,
                    reported_at,
                )
        if change or rank != record.label_rank:
            record.is_fraud = is_fraud
            record.label_rank = rank
            session.put_transaction(record)
        return OutcomeFate.COUNTED

    def _observe(
        self, session: StateSession, kind: EntityKind, key: str, tx: Transaction, out: list[float]
    ) -> int:
        record = self._current(session, kind, key, tx.timestamp)
        counted = self._ring.observe(record, tx.timestamp, out)
        session.put_counted(kind, key, record, counted)
        return counted.hour

    def _apply(
        self,
        session: StateSession,
        kind: EntityKind,
        key: str,
        tile: int,
        change: int,
        reported_at: float,
    ) -> None:
        record = self._current(session, kind, key, reported_at)
        self._ring.apply_outcome(record, tile, change, reported_at)
        session.put_entity(kind, key, record)

    def _current(
        self, session: StateSession, kind: EntityKind, key: str, now: float
    ) -> array[float]:
        record = session.entity(kind, key)
        if record is None or risk_last_time(record) < now - self._horizon:
            return self._ring.new_record()
        return record
