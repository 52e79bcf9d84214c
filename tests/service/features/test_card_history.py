"""A card's sliding windows: right-closed bounds, comparisons with its own past, terminal and
country novelty, probe and card-not-present counts, and late swipes."""

from __future__ import annotations

import pytest

from service.core.domain import EntryMode
from service.features import FeatureConfig, FeatureEngine
from tests.service.features.engine_io import DAY, HOUR, T0, as_dict, tx


def test_card_windows_are_right_closed_and_include_current():
    """A transaction exactly one window old has left that window; the current one counts."""
    engine = FeatureEngine(FeatureConfig())
    engine.observe(tx(1, T0, amount=10.0))
    engine.observe(tx(2, T0 + 30 * 60, amount=20.0))
    features = as_dict(engine.observe(tx(3, T0 + HOUR, amount=30.0)))
    assert features["card_tx_count_1h"] == 2  # tx1 is exactly 1h old: out
    assert features["card_tx_count_1d"] == 3
    assert features["card_amount_mean_1d"] == pytest.approx(20.0)
    assert features["seconds_since_card_prev_tx"] == 30 * 60


def test_relative_amount_compares_with_earlier_history():
    """The first transaction has no reference; later ones compare with the card's past."""
    engine = FeatureEngine(FeatureConfig())
    first = as_dict(engine.observe(tx(1, T0, amount=50.0)))
    assert first["amount_to_card_mean_30d"] == -1.0
    assert first["amount_zscore_30d"] == 0.0
    assert first["seconds_since_card_prev_tx"] == -1.0
    engine.observe(tx(2, T0 + 60, amount=150.0))
    third = as_dict(engine.observe(tx(3, T0 + 120, amount=400.0)))
    assert third["amount_to_card_mean_30d"] == pytest.approx(4.0)
    assert third["amount_zscore_30d"] == pytest.approx((400 - 100) / 50)


def test_terminal_and_country_novelty():
    """First visit to a terminal is -1, a return gives days since; country vs card's first."""
    engine = FeatureEngine(FeatureConfig())
    first = as_dict(engine.observe(tx(1, T0, terminal="a", country="FR")))
    assert first["days_since_card_used_terminal"] == -1.0
    assert first["country_differs_from_card_home"] == 0.0
    engine.observe(tx(2, T0 + DAY, terminal="b", country="DE"))
    back = as_dict(engine.observe(tx(3, T0 + 3 * DAY, terminal="a", country="")))
    assert back["days_since_card_used_terminal"] == pytest.approx(3.0)
    assert back["country_differs_from_card_home"] == -1.0
    abroad = as_dict(engine.observe(tx(4, T0 + 4 * DAY, terminal="a", country="DE")))
    assert abroad["country_differs_from_card_home"] == 1.0


def test_card_testing_and_card_not_present_counts():
    """Probe-sized amounts count over the last hour; card-not-present over the last day."""
    engine = FeatureEngine(FeatureConfig(small_amount=2.0))
    engine.observe(tx(1, T0, amount=0.5, entry_mode=EntryMode.ECOMMERCE))
    engine.observe(tx(2, T0 + 60, amount=1.0, card_present=False))
    features = as_dict(engine.observe(tx(3, T0 + 2 * HOUR, amount=900.0, card_present=True)))
    assert features["card_small_amount_count_1h"] == 0
    assert features["card_not_present_count_1d"] == 2
    assert features["card_present"] == 1
    assert features["entry_mode"] == 0


def test_out_of_order_event_is_treated_as_latest():
    """A late swipe is scored at the card's latest time instead of corrupting windows."""
    engine = FeatureEngine(FeatureConfig())
    engine.observe(tx(1, T0 + DAY, amount=10.0))
    late = as_dict(engine.observe(tx(2, T0, amount=30.0)))
    assert late["card_tx_count_1h"] == 2
    assert late["seconds_since_card_prev_tx"] == 0.0
    after = as_dict(engine.observe(tx(3, T0 + DAY + 2 * HOUR, amount=5.0)))
    assert after["card_tx_count_1h"] == 1
    assert after["card_tx_count_1d"] == 3
