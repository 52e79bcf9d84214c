"""Tests for training.model_build.drift_reference: bins chosen from a table, rates from
thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from service.model.artifact import Thresholds
from service.model.registry import Registry
from service.observability.drift_bins import DriftReference, bin_proportions, psi
from tests.conftest import TrainedModel
from training.model_build.drift_reference import bin_edges, build_drift_reference, decision_rates

THRESHOLDS = Thresholds(review=0.5, decline=0.9, policy="fixed for tests")


def test_continuous_values_get_decile_bins():
    """A continuous column gets 9 decile edges, about a tenth of its rows in each bin, and
    the two empty bins beyond its range."""
    values = np.random.default_rng(1).lognormal(3, 1, 10_000).astype(np.float32)
    edges = bin_edges(values, 10)
    assert len(edges) == 11
    shares = bin_proportions(values, edges)
    np.testing.assert_allclose(shares[1:-2], 0.1, atol=1e-3)
    assert shares[0] == shares[-2] == 0


def test_a_spike_at_zero_gets_a_bin_of_its_own():
    """70% zeros: the first bin holds exactly the zeros, the rest is cut by quantiles."""
    rng = np.random.default_rng(2)
    values = np.where(rng.random(10_000) < 0.7, 0, rng.random(10_000) + 0.01).astype(np.float32)
    edges = bin_edges(values, 10)
    shares = bin_proportions(values, edges)
    assert edges[0] < 0 < edges[1] < values[values > 0].min()
    assert shares[1] == np.mean(values == 0)
    assert len(edges) >= 4


def test_a_spike_inside_the_range_is_cut_on_both_sides():
    """Half the rows at 5 among uniform values from 0 to 10: 5 alone fills one bin."""
    rng = np.random.default_rng(3)
    values = np.where(rng.random(10_000) < 0.5, 5, rng.uniform(0, 10, 10_000))
    edges = np.array(bin_edges(values, 10))
    spike_bin = np.searchsorted(edges, 5, side="right")
    assert edges[spike_bin - 1] < 5 < edges[spike_bin]
    assert bin_proportions(values, list(edges))[spike_bin] == np.mean(values == 5)


def test_discrete_values_each_get_a_bin_with_edges_between_them():
    """Three equally common codes: edges halfway between them and half a gap beyond them."""
    values = np.tile(np.array([0, 1, 2], dtype=np.float32), 100)
    edges = bin_edges(values, 10)
    assert edges == [-0.5, 0.5, 1.5, 2.5]
    np.testing.assert_allclose(bin_proportions(values, edges), [0, 1 / 3, 1 / 3, 1 / 3, 0, 0])


def test_a_value_never_seen_in_the_reference_is_drift():
    """Card-present only in the reference; 5% card-not-present live: PSI well above 0.25.

    (Found by the closed-loop test: with open outer deciles a new category was invisible.)
    """
    reference = np.ones(5_000, dtype=np.float32)
    live = np.where(np.arange(10_000) % 20 == 0, 0.0, 1.0)
    edges = bin_edges(reference, 10)
    shift = psi(bin_proportions(live, edges), bin_proportions(reference, edges))
    assert shift > 0.25


def test_values_beyond_the_range_of_a_continuous_reference_barely_move_the_psi():
    """Fresh draws of the reference's own distribution: a few beyond its extremes, PSI small."""
    rng = np.random.default_rng(4)
    reference = rng.lognormal(3, 1, 5_000).astype(np.float32)
    live = rng.lognormal(3, 1, 10_000)
    edges = bin_edges(reference, 10)
    assert psi(bin_proportions(live, edges), bin_proportions(reference, edges)) < 0.02


def test_missing_values_fill_the_last_bin_and_never_choose_edges():
    """NaN rows count in the last bin; a column of NaN only has no edges at all."""
    values = np.array([1, 2, 3, np.nan], dtype=np.float32)
    assert bin_proportions(values, bin_edges(values, 10))[-1] == 0.25
    assert bin_edges(np.full(5, np.nan, dtype=np.float32), 10) == []


def test_a_constant_column_has_bins_below_at_and_above_its_value():
    """A constant reference: its value alone in the middle bin, others on either side."""
    values = np.full(100, 3.0, dtype=np.float32)
    edges = bin_edges(values, 10)
    assert edges == [2.5, 3.5]
    np.testing.assert_allclose(bin_proportions(values, edges), [0, 1, 0, 0])


def test_decision_rates_apply_the_thresholds_like_the_scorer():
    """A score equal to a threshold takes the stricter decision."""
    rates = decision_rates(np.array([0.1, 0.5, 0.7, 0.9]), THRESHOLDS)
    assert (rates.approve, rates.review, rates.decline) == (0.25, 0.5, 0.25)


def test_a_reference_built_from_a_table_describes_it():
    """Every feature in order, proportions summing to 1, the rows and the period."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(2_000, 3)).astype(np.float32)
    features[:, 2] = rng.integers(0, 4, 2_000)
    scores = rng.random(2_000)
    reference = build_drift_reference(
        features, scores, THRESHOLDS, feature_names=["a", "b", "c"], period="test"
    )
    assert reference.feature_names == ["a", "b", "c"]
    assert (reference.rows, reference.period) == (2_000, "test")
    assert reference.features[2].edges == [-0.5, 0.5, 1.5, 2.5, 3.5]
    for bins in [*reference.features, reference.score]:
        assert sum(bins.proportions) == pytest.approx(1)
    assert reference.decision_rates == decision_rates(scores, THRESHOLDS)


def test_a_reference_survives_json_exactly():
    """Edges and proportions read back from the manifest's JSON are the same floats."""
    features = np.random.default_rng(5).lognormal(size=(500, 2)).astype(np.float32)
    reference = build_drift_reference(
        features,
        features[:, 0].astype(np.float64) / 10,
        THRESHOLDS,
        feature_names=["a", "b"],
        period="test",
    )
    assert DriftReference.model_validate_json(reference.model_dump_json()) == reference


def test_a_table_and_names_that_disagree_are_refused():
    """One feature name too many is an error, not a silently shifted reference."""
    with pytest.raises(ValueError, match="one column per feature name"):
        build_drift_reference(
            np.zeros((10, 2), dtype=np.float32),
            np.zeros(10),
            THRESHOLDS,
            feature_names=["a", "b", "c"],
            period="test",
        )


def test_the_trained_model_publishes_its_test_period_reference(trained_model: TrainedModel):
    """The pipeline's manifest carries a reference of the test period, features in order."""
    manifest = Registry(trained_model.registry).load(trained_model.version)
    reference = manifest.drift_reference
    assert reference is not None
    assert reference.period == "test"
    assert reference.rows == manifest.periods["test"].rows
    assert reference.feature_names == manifest.feature_names
    rates = reference.decision_rates
    assert rates.approve + rates.review + rates.decline == pytest.approx(1)
