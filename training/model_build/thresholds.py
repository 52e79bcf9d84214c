"""Decision thresholds chosen on validation scores by a stated policy.

A transaction is sent to REVIEW when its score is >= `review` and DECLINED when it is
>= `decline`. Both thresholds are scores observed on validation, never computed values
such as midpoints, so they are exact in float32 and float64 and survive JSON unchanged.
"""

from __future__ import annotations

import numpy as np

from service.model.artifact import Thresholds
from training.config import ThresholdPolicy
from training.evaluation.metrics import FloatArray, IntArray, alert_threshold

# Declines used when no threshold meets the policy: the highest score the schema allows.
NEVER_DECLINE = 1.0


def choose_thresholds(label: IntArray, score: FloatArray, policy: ThresholdPolicy) -> Thresholds:
    """Thresholds that meet `policy` on validation, with the policy and results in words.

    `review` flags the top `policy.alert_rate` share of transactions; `decline` is the
    lowest score whose declines reach `policy.decline_precision` over at least
    `policy.min_declines` transactions, or `NEVER_DECLINE` when no score does. `review`
    never exceeds `decline`, so every decline is also counted as an alert.
    """
    precise = _lowest_precise_threshold(label, score, policy)
    decline = NEVER_DECLINE if precise is None else precise
    within_budget = alert_threshold(score, policy.alert_rate)
    review = min(within_budget, decline)
    rules = _rules(policy, met=precise is not None, clamped=within_budget > decline)
    figures = _validation_figures(label, score, review, decline)
    return Thresholds(review=review, decline=decline, policy=f"{rules} {figures}")


def _lowest_precise_threshold(
    label: IntArray, score: FloatArray, policy: ThresholdPolicy
) -> float | None:
    """Lowest score t with precision(score >= t) >= target over enough declines, or None."""
    order = np.argsort(score)[::-1]
    ranked_scores = score[order]
    frauds = np.cumsum(np.asarray(label)[order] == 1)
    declines = np.arange(1, score.size + 1)
    # `score >= t` takes every transaction tied at t, so a cut ends a run of equal scores.
    ends_tie = np.append(ranked_scores[1:] != ranked_scores[:-1], True)
    meets_policy = (
        ends_tie
        & (declines >= policy.min_declines)
        & (frauds / declines >= policy.decline_precision)
    )
    candidates = np.flatnonzero(meets_policy)
    return float(ranked_scores[candidates[-1]]) if candidates.size else None


def _rules(policy: ThresholdPolicy, *, met: bool, clamped: bool) -> str:
    """The policy in words, and where validation data forced a fallback."""
    review = f"Review the top {policy.alert_rate:.2%} of transactions by score (alert budget)"
    target = f"precision >= {policy.decline_precision:.1%} over at least {policy.min_declines}"
    if not met:
        return (
            f"{review}; no score gave {target} validation declines, so decline = "
            f"{NEVER_DECLINE}, the top of the score range (in effect no automatic declines)."
        )
    decline = f"decline at the lowest score with {target} validation declines"
    if clamped:
        return f"{review}; {decline}. Declines alone exceed the budget, so review = decline."
    return f"{review}; {decline}."


def _validation_figures(label: IntArray, score: FloatArray, review: float, decline: float) -> str:
    """What the thresholds achieve on the validation transactions."""
    declined = score >= decline
    declines = int(np.count_nonzero(declined))
    frauds_declined = int(np.count_nonzero(declined & (np.asarray(label) == 1)))
    precision = f"{frauds_declined / declines:.1%}" if declines else "n/a"
    return (
        f"On {score.size} validation transactions: alert rate "
        f"{np.count_nonzero(score >= review) / score.size:.2%}, {declines} declines, "
        f"decline precision {precision}."
    )
