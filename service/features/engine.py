"""The feature engine: one transaction in, its feature vector out, entity state updated.

`FEATURES` is the model's input contract, in order. Changing a feature's meaning or order
means bumping `FEATURE_ENGINE_VERSION`, so that a server refuses models built for another.

The vector has two halves with disjoint state: what the transaction and its card say
(`CardFeatures`), then what its terminal and merchant risk say (`RiskFeatures`, the only
half that reads outcomes). The server runs both in turn; training may replay them in
parallel processes, since neither reads the other's state.
"""

from __future__ import annotations

from typing import NamedTuple

from service.core.domain import Transaction
from service.features.card_features import CardFeatures, card_feature_specs
from service.features.config import FeatureConfig
from service.features.risk_features import RiskFeatures, risk_feature_specs

FEATURE_ENGINE_VERSION = 1


class FeatureSpec(NamedTuple):
    name: str
    description: str


CARD_HALF: tuple[FeatureSpec, ...] = tuple(
    FeatureSpec(name, description) for name, description in card_feature_specs()
)
RISK_HALF: tuple[FeatureSpec, ...] = tuple(
    FeatureSpec(name, description) for name, description in risk_feature_specs()
)
FEATURES: tuple[FeatureSpec, ...] = CARD_HALF + RISK_HALF
FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)


class FeatureEngine:
    """Online feature state for every card, terminal and merchant seen so far.

    Not thread-safe: one engine per process (or per worker owning a shard of entities).
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self._cards = CardFeatures(config)
        self._risk = RiskFeatures(config)

    @property
    def cards_tracked(self) -> int:
        return self._cards.cards_tracked

    @property
    def terminals_tracked(self) -> int:
        return self._risk.terminals_tracked

    def observe(self, tx: Transaction) -> list[float]:
        """Record `tx` in the entity state and return its feature vector, in `FEATURES` order."""
        out = self._cards.observe(tx)
        self._risk.observe(tx, out)
        return out

    def report_outcome(self, transaction_id: str, is_fraud: bool, reported_at: float) -> bool:
        """Count `transaction_id` as fraud (or genuine) from event time `reported_at` on.

        Returns False when the transaction is unknown or too old to affect any feature.
        """
        return self._risk.report_outcome(transaction_id, is_fraud, reported_at)
