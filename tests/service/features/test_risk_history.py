"""Terminal and merchant risk windows: a fraud counts only once it is reported and settled,
and a later report corrects it."""

from __future__ import annotations

import pytest

from service.features import FeatureConfig, FeatureEngine
from tests.service.features.engine_io import DAY, DELAY, HOUR, T0, as_dict, tx


def test_terminal_risk_counts_fraud_only_once_reported_and_settled():
    """A fraud counts in the delayed windows from its report time on, not before, and only
    once its whole hour is older than the delay."""
    engine = FeatureEngine(FeatureConfig())
    engine.observe(tx(1, T0, terminal="t"))
    assert engine.report_outcome("tx1", True, T0 + DELAY)
    engine.observe(tx(2, T0 + HOUR, terminal="t"))
    before = as_dict(engine.observe(tx(3, T0 + DELAY - 1, terminal="t")))
    assert before["terminal_tx_count_1d_delayed"] == 0
    assert before["terminal_risk_1d"] == 0.0
    first_hour = as_dict(engine.observe(tx(4, T0 + DELAY + HOUR, terminal="t")))
    assert first_hour["terminal_tx_count_1d_delayed"] == 1  # tx2's hour is not settled yet
    assert first_hour["terminal_risk_1d"] == 1.0
    settled = as_dict(engine.observe(tx(5, T0 + DELAY + 2 * HOUR, terminal="t")))
    assert settled["terminal_tx_count_1d_delayed"] == 2
    assert settled["terminal_risk_1d"] == pytest.approx(0.5)
    assert settled["terminal_risk_30d"] == pytest.approx(0.5)
    gone = as_dict(engine.observe(tx(6, T0 + DELAY + DAY + 2 * HOUR, terminal="t")))
    assert gone["terminal_tx_count_1d_delayed"] == 0  # tx1 and tx2 left the 1-day window
    assert gone["terminal_risk_1d"] == 0.0
    assert gone["terminal_tx_count_7d_delayed"] == 2
    assert gone["terminal_risk_7d"] == pytest.approx(0.5)


def test_late_report_counts_from_report_time_and_correction_reverts():
    """A fraud reported after the delay counts from then; a later 'genuine' report undoes it."""
    engine = FeatureEngine(FeatureConfig())
    engine.observe(tx(1, T0, terminal="t", merchant_id="m"))
    engine.report_outcome("tx1", True, T0 + 10 * DAY)
    early = as_dict(engine.observe(tx(2, T0 + 9 * DAY, terminal="t", merchant_id="m")))
    assert early["terminal_risk_30d"] == 0.0
    assert early["terminal_tx_count_30d_delayed"] == 1
    late = as_dict(engine.observe(tx(3, T0 + 10 * DAY, terminal="t", merchant_id="m")))
    assert late["terminal_risk_30d"] == 1.0
    assert late["merchant_risk_30d"] == 1.0
    engine.report_outcome("tx1", False, T0 + 11 * DAY)
    corrected = as_dict(engine.observe(tx(4, T0 + 11 * DAY, terminal="t", merchant_id="m")))
    assert corrected["terminal_risk_30d"] == 0.0
