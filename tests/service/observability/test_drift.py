"""Tests for service.observability.drift: PSI maths, binning, the window, and the Prometheus
collector.

References are built by the real training code (`training.model_build.drift_reference`) from random
tables whose columns look like the model's features: a skewed amount, counts with a spike at
zero, a few discrete codes, a feature that is sometimes missing.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from structlog.testing import capture_logs

from service.core.domain import Decision
from service.core.scoring import decision_for
from service.features.engine import FEATURE_NAMES
from service.model.artifact import Thresholds
from service.observability.drift import PSI_MAJOR, DriftCollector, DriftMonitor
from service.observability.drift_bins import PSI_EPSILON, Bins, DriftReference, bin_proportions, psi
from training.model_build.drift_reference import build_drift_reference

AMOUNT = FEATURE_NAMES.index("amount")
HOUR = FEATURE_NAMES.index("hour_of_day")
NOT_PRESENT_1D = FEATURE_NAMES.index("card_not_present_count_1d")
DAYS_SINCE_TERMINAL = FEATURE_NAMES.index("days_since_card_used_terminal")
THRESHOLDS = Thresholds(review=0.2, decline=0.6, policy="fixed for tests")
DRIFT_FAMILIES = {
    "fraud_drift_psi",
    "fraud_drift_score_psi",
    "fraud_drift_window_transactions",
    "fraud_decision_rate",
    "fraud_decision_rate_expected",
}


def traffic(rows: int, seed: int) -> NDArray[np.float32]:
    """Feature rows in model order: every column a plausible shape, one 10% missing."""
    rng = np.random.default_rng(seed)
    table = rng.lognormal(2, 1, size=(rows, len(FEATURE_NAMES)))
    table[:, AMOUNT] = rng.lognormal(3.5, 1.0, rows).round(2)
    table[:, NOT_PRESENT_1D] = np.where(rng.random(rows) < 0.7, 0, rng.integers(1, 6, rows))
    table[:, FEATURE_NAMES.index("entry_mode")] = rng.integers(0, 6, rows)
    table[:, DAYS_SINCE_TERMINAL] = np.where(rng.random(rows) < 0.1, np.nan, rng.random(rows))
    return table.astype(np.float32)


def scores_of(features: NDArray[np.float32]) -> NDArray[np.float64]:
    """A stand-in model: a fixed, monotone function of the amount."""
    amounts = features[:, AMOUNT].astype(np.float64)
    return amounts / (amounts + 300.0)


def decisions_of(scores: NDArray[np.float64]) -> list[Decision]:
    """The scorer's rule applied to `scores` with THRESHOLDS."""
    return [decision_for(float(score), THRESHOLDS) for score in scores]


def reference_of(features: NDArray[np.float32]) -> DriftReference:
    return build_drift_reference(
        features, scores_of(features), THRESHOLDS, feature_names=FEATURE_NAMES, period="test"
    )


@pytest.fixture(scope="module")
def reference_rows() -> NDArray[np.float32]:
    return traffic(20_000, seed=1)


@pytest.fixture(scope="module")
def reference(reference_rows: NDArray[np.float32]) -> DriftReference:
    return reference_of(reference_rows)


def feed(target: DriftMonitor, features: NDArray[np.float32]) -> None:
    """Record `features` as the server would: Python floats, the model's score and decision."""
    scores = scores_of(features)
    for row, score, decision in zip(features.tolist(), scores, decisions_of(scores), strict=True):
        target.record(row, float(score), decision)


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Family name to {sorted labels: value}, parsed from the text exposition."""
    text = generate_latest(registry).decode()
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def test_psi_matches_a_hand_computation():
    """Half and half against a quarter and three quarters: 0.25 ln 2 - 0.25 ln(2/3)."""
    expected = 0.25 * math.log(2) - 0.25 * math.log(2 / 3)
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(expected)


def test_psi_floors_empty_bins_at_epsilon():
    """An emptied bin adds a finite term computed with PSI_EPSILON in place of 0."""
    expected = 0.5 * math.log(1 / 0.5) + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5)
    assert psi(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected)


def test_psi_of_identical_shares_is_zero():
    """The same distribution on both sides, empty bins included, has PSI 0."""
    shares = np.array([0.2, 0.0, 0.8])
    assert psi(shares, shares) == 0.0


def test_bins_put_edge_values_above_and_nan_last():
    """A value equal to an edge opens the upper bin; outer bins are open; NaN has its own."""
    values = np.array([-np.inf, 0.0, 0.5, 1.0, 2.0, np.inf, np.nan], dtype=np.float32)
    shares = bin_proportions(values, [0.5, 1.5])
    np.testing.assert_allclose(shares * values.size, [2, 2, 2, 1])


def test_bins_without_edges_hold_every_number_in_one_bin():
    """No edges: one bin for every number, and the NaN bin."""
    np.testing.assert_allclose(bin_proportions(np.array([1.0, 5.0, np.nan]), []), [2 / 3, 1 / 3])


def test_identical_traffic_gives_zero_psi(reference_rows, reference):
    """The reference's own rows, sent as Python floats, reproduce its bins exactly."""
    monitor = DriftMonitor(reference, window=len(reference_rows))
    feed(monitor, reference_rows)
    snapshot = monitor.snapshot()
    assert snapshot.rows == len(reference_rows)
    assert max(snapshot.feature_psi.values()) == pytest.approx(0, abs=1e-12)
    assert snapshot.score_psi == pytest.approx(0, abs=1e-12)


def test_fresh_traffic_from_the_same_population_stays_stable(reference):
    """New draws from the reference's population stay well below the 0.1 convention."""
    monitor = DriftMonitor(reference)
    feed(monitor, traffic(10_000, seed=2))
    snapshot = monitor.snapshot()
    assert list(snapshot.feature_psi) == list(FEATURE_NAMES)
    assert max(snapshot.feature_psi.values()) < 0.02
    assert snapshot.score_psi is not None
    assert snapshot.score_psi < 0.02


def test_tripled_amounts_drift_the_amount_and_the_score_only(reference):
    """Amounts x3: the amount's PSI and the score's pass 0.25, other features stay low."""
    live = traffic(10_000, seed=3)
    live[:, AMOUNT] *= 3
    monitor = DriftMonitor(reference)
    feed(monitor, live)
    snapshot = monitor.snapshot()
    others = {name: value for name, value in snapshot.feature_psi.items() if name != "amount"}
    assert snapshot.feature_psi["amount"] > 0.25
    assert snapshot.score_psi is not None
    assert snapshot.score_psi > 0.25
    assert max(others.values()) < 0.02
    assert snapshot.decision_rates["approve"] < reference.decision_rates.approve


def test_more_missing_values_drift_through_the_nan_bin(reference):
    """A feature missing 10% of the time in the reference and 40% live shows drift."""
    live = traffic(10_000, seed=4)
    live[:3_000, DAYS_SINCE_TERMINAL] = np.nan
    monitor = DriftMonitor(reference)
    feed(monitor, live)
    assert reference.features[DAYS_SINCE_TERMINAL].proportions[-1] == pytest.approx(0.1, abs=0.01)
    assert monitor.snapshot().feature_psi["days_since_card_used_terminal"] > 0.25


def test_a_shrinking_spike_at_zero_drifts(reference):
    """Zeros falling from 70% to 40% of a count feature move it past 0.25."""
    live = traffic(10_000, seed=5)
    live[:4_300, NOT_PRESENT_1D] = np.random.default_rng(6).integers(1, 6, 4_300)
    monitor = DriftMonitor(reference)
    feed(monitor, live)
    # Bin 0 holds values below the reference's range, bin 1 its zeros.
    assert reference.features[NOT_PRESENT_1D].proportions[1] == pytest.approx(0.7, abs=0.01)
    assert monitor.snapshot().feature_psi["card_not_present_count_1d"] > 0.25


def test_a_window_below_its_minimum_reports_no_psi(reference):
    """Below min_rows the snapshot has the row count but no PSI and no live rates."""
    monitor = DriftMonitor(reference, window=1_000, min_rows=100)
    feed(monitor, traffic(99, seed=7))
    snapshot = monitor.snapshot()
    assert (snapshot.rows, snapshot.feature_psi, snapshot.score_psi) == (99, {}, None)
    assert snapshot.decision_rates == {}


def test_the_window_keeps_only_the_latest_rows(reference):
    """After wrapping round, the window equals one that only ever saw the latest rows."""
    latest = traffic(1_000, seed=9)
    latest[:, AMOUNT] *= 2
    wrapped = DriftMonitor(reference, window=1_000, min_rows=1)
    feed(wrapped, traffic(1_500, seed=8))
    feed(wrapped, latest)
    fresh = DriftMonitor(reference, window=1_000, min_rows=1)
    feed(fresh, latest)
    assert wrapped.snapshot() == fresh.snapshot()
    assert wrapped.snapshot().rows == 1_000


def test_a_value_beyond_float32_is_recorded_as_infinity(reference):
    """An amount past float32's range is kept as the model reads it, in the top bin."""
    monitor = DriftMonitor(reference, window=10, min_rows=1)
    row = traffic(1, seed=10)[0].tolist()
    row[AMOUNT] = 1e39
    monitor.record(row, 0.5, Decision.REVIEW)
    assert monitor.snapshot().feature_psi["amount"] > 0.25
    assert monitor.snapshot().decision_rates["review"] == 1.0


def test_min_rows_must_fit_in_the_window(reference):
    """A minimum the window can never reach is refused."""
    with pytest.raises(ValueError, match="min_rows"):
        DriftMonitor(reference, window=100, min_rows=101)


def test_collector_exports_psi_and_decision_rates(reference):
    """A scrape through a real registry carries every feature's PSI and both rate sets."""
    collector = DriftCollector(window=2_000, min_rows=500)
    registry = CollectorRegistry()
    registry.register(collector)
    live = traffic(2_000, seed=11)
    scores = scores_of(live)
    for row, score, decision in zip(live.tolist(), scores, decisions_of(scores), strict=True):
        collector.record(reference, row, float(score), decision)
    families = scrape(registry)
    assert set(families) == DRIFT_FAMILIES
    psi_by_feature = {
        dict(labels)["feature"]: v for labels, v in families["fraud_drift_psi"].items()
    }
    assert set(psi_by_feature) == set(FEATURE_NAMES)
    assert families["fraud_drift_window_transactions"] == {(): 2_000}
    assert families["fraud_drift_score_psi"][()] < 0.1
    live_rates = families["fraud_decision_rate"]
    assert sum(live_rates.values()) == pytest.approx(1)
    expected = families["fraud_decision_rate_expected"]
    assert expected[(("decision", "decline"),)] == reference.decision_rates.decline


def test_collector_exports_no_psi_below_the_minimum(reference):
    """A young window exports its row count and expected rates, no PSI, no live rates."""
    collector = DriftCollector(window=2_000, min_rows=500)
    registry = CollectorRegistry()
    registry.register(collector)
    for row in traffic(10, seed=12).tolist():
        collector.record(reference, row, 0.1, Decision.APPROVE)
    families = scrape(registry)
    assert families["fraud_drift_window_transactions"] == {(): 10}
    assert families["fraud_drift_psi"] == {}
    assert families["fraud_drift_score_psi"] == {}
    assert families["fraud_decision_rate"] == {}
    assert len(families["fraud_decision_rate_expected"]) == len(Decision)


def test_a_new_reference_starts_a_new_window(reference, reference_rows):
    """A model swap (another reference) empties the window; no reference stops monitoring."""
    collector = DriftCollector(window=100, min_rows=1)
    for row in reference_rows[:50].tolist():
        collector.record(reference, row, 0.1, Decision.APPROVE)
    swapped = reference_of(reference_rows[:5_000])
    collector.record(swapped, reference_rows[0].tolist(), 0.1, Decision.APPROVE)
    assert collector.monitor is not None
    assert collector.monitor.reference is swapped
    assert collector.monitor.snapshot().rows == 1
    collector.record(None, reference_rows[0].tolist(), 0.1, Decision.APPROVE)
    assert collector.monitor is None


def test_a_collector_without_a_window_exports_zero_rows():
    """Before any model with a reference scored, the window is empty and nothing else shows."""
    registry = CollectorRegistry()
    registry.register(DriftCollector())
    families = scrape(registry)
    assert families["fraud_drift_window_transactions"] == {(): 0}
    assert families["fraud_decision_rate_expected"] == {}


def drift_warnings(collector: DriftCollector, scrapes: int) -> list[MutableMapping[str, Any]]:
    """The drift_detected lines logged while `collector` is scraped `scrapes` times."""
    registry = CollectorRegistry()
    registry.register(collector)
    with capture_logs() as entries:
        for _ in range(scrapes):
            scrape(registry)
    return [entry for entry in entries if entry["event"] == "drift_detected"]


def shifted_collector(
    reference: DriftReference, warn_interval_seconds: float = 900.0
) -> DriftCollector:
    """A collector whose window has amounts x3 and every swipe in the same hour."""
    collector = DriftCollector(
        window=2_000, min_rows=500, warn_interval_seconds=warn_interval_seconds
    )
    live = traffic(2_000, seed=13)
    live[:, AMOUNT] *= 3
    live[:, HOUR] = 3.0
    scores = scores_of(live)
    for row, score, decision in zip(live.tolist(), scores, decisions_of(scores), strict=True):
        collector.record(reference, row, float(score), decision)
    return collector


def test_a_scrape_warns_of_major_drift_once_per_interval(reference):
    """Amounts x3: the first scrape logs a warning naming amount and the score's PSI, not
    the hour (cyclic: it drifts in any short window); the next scrape, within 15 minutes,
    logs nothing."""
    (warning,) = drift_warnings(shifted_collector(reference), scrapes=2)
    assert warning["log_level"] == "warning"
    assert set(warning["features"]) == {"amount"}
    assert warning["features"]["amount"] > PSI_MAJOR
    assert warning["score_psi"] > PSI_MAJOR
    assert warning["window_transactions"] == 2_000


def test_drift_warnings_repeat_once_the_interval_has_passed(reference):
    """With no interval between warnings, every scrape of a drifted window logs one."""
    assert len(drift_warnings(shifted_collector(reference, 0.0), scrapes=3)) == 3


def test_stable_traffic_logs_no_drift_warning(reference):
    """Fresh draws from the reference's population warn of nothing."""
    collector = DriftCollector(window=2_000, min_rows=500, warn_interval_seconds=0.0)
    live = traffic(2_000, seed=14)
    scores = scores_of(live)
    for row, score, decision in zip(live.tolist(), scores, decisions_of(scores), strict=True):
        collector.record(reference, row, float(score), decision)
    assert drift_warnings(collector, scrapes=2) == []


def test_bins_refuse_inconsistent_edges_and_proportions():
    """Unsorted edges, a wrong number of proportions or a total other than 1 are refused."""
    with pytest.raises(ValidationError, match="increasing"):
        Bins(edges=[1.0, 0.5], proportions=[0.25, 0.25, 0.5, 0.0])
    with pytest.raises(ValidationError, match="need 3 proportions"):
        Bins(edges=[1.0], proportions=[0.5, 0.5])
    with pytest.raises(ValidationError, match="sum to 1"):
        Bins(edges=[1.0], proportions=[0.5, 0.4, 0.0])
