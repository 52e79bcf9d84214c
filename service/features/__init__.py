"""The one definition of the model's features, shared by training replay and the server.

Training replays history through `FeatureEngine` in event-time order; the server feeds it
one swipe at a time. Same code, same records, same floats: that is what keeps training and
serving from drifting apart.
"""

from service.features.card_features import CardFeatures
from service.features.config import FeatureConfig
from service.features.engine import (
    CARD_HALF,
    FEATURE_ENGINE_VERSION,
    FEATURES,
    RISK_HALF,
    FeatureEngine,
    FeatureSpec,
    state_identity,
)
from service.features.memory_store import MemoryStore
from service.features.risk_features import RiskFeatures
from service.features.state import EntityKind, StateSession, StateStore, TransactionRecord

__all__ = [
    "CARD_HALF",
    "FEATURES",
    "FEATURE_ENGINE_VERSION",
    "RISK_HALF",
    "CardFeatures",
    "EntityKind",
    "FeatureConfig",
    "FeatureEngine",
    "FeatureSpec",
    "MemoryStore",
    "RiskFeatures",
    "StateSession",
    "StateStore",
    "TransactionRecord",
    "state_identity",
]
