"""The first half of the vector: what the transaction itself says, then its card's behaviour.

The transaction's own fields (amount, event-time hour and weekday, merchant category, entry
mode, card presence) come first; the card's record (`card_history`) gives the rest. This
half never reads outcomes, so training can replay it apart from the risk half.
"""

from __future__ import annotations

from array import array

from service.core.domain import Transaction
from service.features.card_history import (
    CARD_FEATURES,
    card_last_time,
    new_card_record,
    observe_card,
)
from service.features.config import FeatureConfig
from service.features.state import EntityKind, StateSession

# Whole seconds as ints (card_history's windows are floats): the hour and weekday are
# computed in integer arithmetic on the event time's whole seconds.
HOUR = 3_600
DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0

_CONTEXT_FEATURES = (
    ("amount", "Transaction amount in the currency's major units."),
    ("hour_of_day", "Hour of the event time, UTC (0-23)."),
    ("day_of_week", "Weekday of the event time, UTC (Monday is 0)."),
    ("mcc", "Merchant category code; -1 when not sent."),
    ("entry_mode", "EntryMode number (0 unknown, 1 chip, ... 5 e-commerce)."),
    ("card_present", "1 card present, 0 not present, -1 not sent."),
)


def card_feature_specs() -> tuple[tuple[str, str], ...]:
    """Names and descriptions of this half, in output order."""
    return (*_CONTEXT_FEATURES, *CARD_FEATURES)


class CardFeatures:
    """The first half: the transaction's own fields and its card's behaviour."""

    def __init__(self, config: FeatureConfig) -> None:
        self._small_amount = config.small_amount
        self._horizon = config.state_horizon_seconds

    def observe(
        self, session: StateSession, tx: Transaction, previous_card_id: str | None = None
    ) -> list[float]:
        """Record `tx` in its card's record; the first half of its vector.

        A card with no live record under `tx.card_id` continues the one kept under
        `previous_card_id` (its token under the token key being rotated out), if any: the
        card's history is carried over to the new token, and the old record, no longer
        written, ages out with the state horizon.
        """
        seconds = int(tx.timestamp // 1)
        present = tx.card_present
        out: list[float] = [
            tx.amount,
            seconds // HOUR % 24,
            (seconds // DAY + _EPOCH_WEEKDAY) % 7,
            tx.mcc,
            tx.entry_mode,
            -1 if present is None else int(present),
        ]
        oldest_live = tx.timestamp - self._horizon
        record = session.entity(EntityKind.CARD, tx.card_id)
        if (record is None or card_last_time(record) < oldest_live) and previous_card_id:
            carried = session.entity(EntityKind.CARD, previous_card_id)
            # A copy: a store in memory hands out the record it holds, which must not be
            # shared by two keys.
            record = None if carried is None else array("d", carried)
        if record is None or card_last_time(record) < oldest_live:
            record = new_card_record()
        observe_card(record, tx, self._small_amount, out)
        session.put_entity(EntityKind.CARD, tx.card_id, record)
        return out
