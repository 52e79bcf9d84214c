"""Which outcomes the risk half can still place (unknown and expired ids are refused), and
its merchant features when a transaction has no merchant."""

from __future__ import annotations

from service.core.domain import OutcomeFate
from service.features import FeatureConfig, FeatureEngine
from tests.service.features.engine_io import T0, as_dict, tx


def test_unknown_outcome_and_missing_merchant():
    """An unknown transaction id is reported as such; no merchant gives -1 features."""
    engine = FeatureEngine(FeatureConfig())
    features = as_dict(engine.observe(tx(1, T0)))
    assert engine.report_outcome("nope", True, T0) is OutcomeFate.NOT_HELD
    assert features["merchant_risk_7d"] == -1.0
    assert features["merchant_tx_count_30d_delayed"] == -1.0
    assert features["mcc"] == -1
    assert features["card_present"] == -1


def test_outcomes_are_forgotten_once_they_can_no_longer_matter():
    """A transaction id is reportable for the state horizon (the label delay plus the
    longest window and a tile) after its event time; a later outcome changes nothing."""
    config = FeatureConfig()
    horizon = config.state_horizon_seconds
    engine = FeatureEngine(config)
    engine.observe(tx(1, T0))
    assert engine.report_outcome("tx1", True, T0 + horizon + 1) is OutcomeFate.TOO_LATE
    assert engine.report_outcome("tx1", True, T0 + horizon) is OutcomeFate.COUNTED
