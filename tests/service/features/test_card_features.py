"""The transaction's own fields at the head of the vector: taken from its event time, not
the clock."""

from __future__ import annotations

from service.features import FeatureConfig, FeatureEngine
from tests.service.features.engine_io import HOUR, T0, as_dict, tx


def test_context_features_use_event_time():
    """Hour and weekday come from the transaction's own timestamp (UTC), not the clock."""
    engine = FeatureEngine(FeatureConfig())
    features = as_dict(engine.observe(tx(1, T0 + 13 * HOUR + 59, amount=12.5)))
    assert features["amount"] == 12.5
    assert features["hour_of_day"] == 13
    assert features["day_of_week"] == 6  # Sunday
