"""Tests for training.model_build.thresholds: the policy holds on validation data."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from service.model.artifact import Thresholds
from training.config import ThresholdPolicy
from training.evaluation.metrics import FloatArray, IntArray
from training.model_build.thresholds import choose_thresholds


def synthetic(
    rows: int, fraud_rate: float, seed: int, fraud_beta: tuple[float, float] = (2, 3)
) -> tuple[IntArray, FloatArray]:
    """Labels and float32 scores where frauds tend to score higher, as a model's would."""
    rng = np.random.default_rng(seed)
    label = (rng.random(rows) < fraud_rate).astype(np.int64)
    fraud_a, fraud_b = fraud_beta
    score = np.where(label == 1, rng.beta(fraud_a, fraud_b, rows), rng.beta(1, 12, rows))
    return label, score.astype(np.float32)


def lowest_precise_threshold_by_brute_force(
    label: IntArray, score: FloatArray, policy: ThresholdPolicy
) -> float | None:
    """The decline rule read literally: try every observed score, keep the lowest that works."""
    passing = [
        t
        for t in np.unique(score)
        if (score >= t).sum() >= policy.min_declines
        and label[score >= t].mean() >= policy.decline_precision
    ]
    return float(min(passing)) if passing else None


def test_thresholds_meet_the_policy_on_validation():
    """Alert rate stays at the budget; declines reach the precision over enough declines."""
    label, score = synthetic(20_000, 0.02, seed=1)
    policy = ThresholdPolicy(alert_rate=0.01, decline_precision=0.9, min_declines=20)
    thresholds = choose_thresholds(label, score, policy)
    declined = score >= thresholds.decline
    assert np.mean(score >= thresholds.review) == pytest.approx(0.01, abs=1e-4)
    assert declined.sum() >= 20
    assert label[declined].mean() >= 0.9
    assert thresholds.review <= thresholds.decline < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_decline_is_the_lowest_score_meeting_the_policy(seed):
    """The vectorised scan agrees with trying every score, ties included."""
    label, score = synthetic(400, 0.1, seed)
    score = np.round(score, 2)  # many ties
    policy = ThresholdPolicy(decline_precision=0.8, min_declines=10)
    expected = lowest_precise_threshold_by_brute_force(label, score, policy)
    assert expected is not None
    assert choose_thresholds(label, score, policy).decline == expected


def test_decline_falls_back_to_one_when_precision_is_out_of_reach():
    """With 10 frauds, 18 of 20 declines can never be fraud: decline is 1.0 and says why."""
    label, score = synthetic(2_000, 0.0, seed=2)
    label[np.argsort(score)[-10:]] = 1
    thresholds = choose_thresholds(label, score, ThresholdPolicy())
    assert thresholds.decline == 1.0
    assert "no automatic declines" in thresholds.policy
    assert "0 declines" in thresholds.policy


def test_review_is_clamped_to_decline():
    """When precise declines exceed the alert budget, review equals decline."""
    label, score = synthetic(2_000, 0.3, seed=3, fraud_beta=(5, 2))
    thresholds = choose_thresholds(label, score, ThresholdPolicy(alert_rate=0.01))
    assert np.mean(score >= thresholds.decline) > 0.01
    assert thresholds.review == thresholds.decline
    assert "review = decline" in thresholds.policy


def test_policy_text_states_policy_and_validation_figures():
    """The text names the budget, the precision target and what validation achieved."""
    label, score = synthetic(20_000, 0.02, seed=1)
    thresholds = choose_thresholds(label, score, ThresholdPolicy())
    declines = int((score >= thresholds.decline).sum())
    assert "top 1.00%" in thresholds.policy
    assert "90.0%" in thresholds.policy
    assert "alert rate 1.00%" in thresholds.policy
    assert f"{declines} declines" in thresholds.policy


def test_thresholds_are_observed_scores_that_survive_json():
    """Thresholds are validation scores, unchanged by a JSON round trip."""
    label, score = synthetic(5_000, 0.05, seed=4)
    thresholds = choose_thresholds(label, score, ThresholdPolicy())
    assert np.isin([thresholds.review, thresholds.decline], score).all()
    assert Thresholds.model_validate_json(thresholds.model_dump_json()) == thresholds


def test_policy_rejects_out_of_range_values():
    """An alert rate above 1 or zero required declines is a configuration error."""
    with pytest.raises(ValidationError):
        ThresholdPolicy(alert_rate=1.5)
    with pytest.raises(ValidationError):
        ThresholdPolicy(min_declines=0)
