"""Tests for training.evaluation.metrics: hand-computed examples and agreement with sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from training.evaluation.metrics import (
    CardArray,
    FloatArray,
    IntArray,
    auc_roc,
    average_precision,
    card_known_from_day,
    card_precision_at_k,
    evaluate,
    format_metrics_table,
    recall_at_alert_rate,
    weekly_card_precision_at_k,
)

# Three days, CP@2 by hand (F = fraud, G = genuine; "out" = excluded that day):
#   day 0: A .9 F, B .8 G, C .7 F, D .1 G    top {A, B} -> 1/2; A detected
#   day 1: A .95 F (out: detected), K .99 F (out: known from day 1), C .6 F, E .5 G,
#          G .3 G                            top {C, E} -> 1/2; C detected
#   day 2: C .9 F (out: detected), B .2 G and .85 F (max: .85 F), H .5 F, I .5 G
#          H and I tie at .5, H wins on id    top {B, H} -> 2/2
#   mean = (1/2 + 1/2 + 1) / 3 = 2/3
HAND_EXAMPLE: list[Row] = [
    (0, "A", 1, 0.9),
    (0, "B", 0, 0.8),
    (0, "C", 1, 0.7),
    (0, "D", 0, 0.1),
    (1, "A", 1, 0.95),
    (1, "K", 1, 0.99),
    (1, "C", 1, 0.6),
    (1, "E", 0, 0.5),
    (1, "G", 0, 0.3),
    (2, "I", 0, 0.5),
    (2, "C", 1, 0.9),
    (2, "B", 0, 0.2),
    (2, "B", 1, 0.85),
    (2, "H", 1, 0.5),
]


Row = tuple[int, str, int, float]
Columns = tuple[IntArray, CardArray, IntArray, FloatArray]


def columns(rows: list[Row]) -> Columns:
    """Split (day, card, label, score) rows into the four arrays the metrics take."""
    day, card, label, score = zip(*rows, strict=True)
    return (
        np.array(day, dtype=np.int64),
        np.array(card, dtype=object),
        np.array(label, dtype=np.int64),
        np.array(score, dtype=np.float64),
    )


def test_card_precision_matches_hand_computed_example():
    """CP@2 removes detected and known cards and breaks score ties by card id."""
    result = card_precision_at_k(*columns(HAND_EXAMPLE), k=2, card_known_from_day={"K": 1})
    assert result == pytest.approx(2 / 3)


def test_card_precision_counts_known_cards_when_not_told():
    """Without the known-card map, K takes a top slot on day 1: (1/2 + 1 + 1) / 3."""
    assert card_precision_at_k(*columns(HAND_EXAMPLE), k=2) == pytest.approx(5 / 6)


def test_card_precision_removes_detected_card_on_later_days():
    """A card detected on day 0 is not counted again on day 1."""
    rows = [(0, "X", 1, 0.9), (0, "Y", 0, 0.1), (1, "X", 1, 0.9), (1, "Y", 0, 0.1)]
    assert card_precision_at_k(*columns(rows), k=1) == pytest.approx(0.5)


@pytest.mark.parametrize(("known_from", "expected"), [(1, 1.0), (0, 0.0)])
def test_card_precision_excludes_known_card_from_its_known_day(known_from, expected):
    """A card counts on the days before its fraud is known, not from that day on."""
    rows = [(0, "X", 1, 0.9), (0, "Y", 0, 0.1)]
    known = {"X": known_from}
    assert card_precision_at_k(*columns(rows), k=1, card_known_from_day=known) == expected


def test_card_precision_does_not_depend_on_row_order():
    """Shuffling transactions leaves the result unchanged (ties broken by card id)."""
    shuffled = [HAND_EXAMPLE[i] for i in np.random.default_rng(3).permutation(len(HAND_EXAMPLE))]
    assert card_precision_at_k(*columns(shuffled), k=2) == card_precision_at_k(
        *columns(HAND_EXAMPLE), k=2
    )


def test_card_precision_divides_by_k_and_counts_emptied_days():
    """A day with fewer than k cards divides by k; a day with every card known scores 0."""
    rows = [(0, "X", 1, 0.9), (1, "Y", 1, 0.9)]
    known = {"Y": 0}
    assert card_precision_at_k(*columns(rows), k=2, card_known_from_day=known) == 0.25


def test_card_precision_matches_card_ids_of_any_type():
    """Known-card keys are strings even when card ids are integers."""
    day, _, label, score = columns([(0, "_", 1, 0.9), (0, "_", 0, 0.5)])
    cards = np.array([7, 8])
    assert card_precision_at_k(day, cards, label, score, k=1, card_known_from_day={"7": 0}) == 0


def test_card_precision_rejects_k_below_one():
    """k = 0 is a configuration error, not a division by zero."""
    with pytest.raises(ValueError, match="k must be"):
        card_precision_at_k(*columns(HAND_EXAMPLE), k=0)


def test_card_known_from_day_is_first_fraud_plus_delay():
    """Each card with a fraud is known from its first fraud day plus the delay."""
    rows = [(5, "X", 1, 0.0), (3, "X", 1, 0.0), (1, "X", 0, 0.0), (0, "Z", 1, 0.0)]
    rows.append((2, "Y", 0, 0.0))
    day, card, label, _ = columns(rows)
    assert card_known_from_day(day, card, label, label_delay_days=7) == {"X": 10, "Z": 7}


def test_auc_and_average_precision_agree_with_sklearn():
    """On random data the wrappers return sklearn's values as plain floats."""
    rng = np.random.default_rng(0)
    label = (rng.random(500) < 0.1).astype(np.int64)
    score = np.clip(rng.normal(0.3 + 0.3 * label, 0.2), 0, 1)
    assert auc_roc(label, score) == roc_auc_score(label, score)
    assert average_precision(label, score) == average_precision_score(label, score)
    assert type(auc_roc(label, score)) is float


@pytest.mark.parametrize("metric", [auc_roc, average_precision])
def test_threshold_free_metrics_are_nan_with_one_class(metric):
    """A split with no fraud gives NaN instead of raising or warning."""
    assert math.isnan(metric(np.zeros(4, dtype=np.int64), np.linspace(0, 1, 4)))


def test_recall_at_alert_rate_hand_computed():
    """Top 20% of 10 transactions is 2 alerts, catching 1 of the 3 frauds."""
    label = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.1, 0.6, 0.05, 0.0, 0.4])
    assert recall_at_alert_rate(label, score, 0.2) == pytest.approx(1 / 3)


def test_recall_at_alert_rate_alerts_at_least_once_and_includes_ties():
    """A tiny rate still alerts once; transactions tied with the last alert are alerted too."""
    label = np.array([0, 1, 1, 0])
    score = np.array([0.9, 0.9, 0.5, 0.1])
    assert recall_at_alert_rate(label, score, 0.01) == pytest.approx(0.5)


def test_evaluate_returns_exactly_the_documented_floats():
    """Keys are fixed (k in the precision name), values are floats matching each metric."""
    day, card, label, score = columns(HAND_EXAMPLE)
    result = evaluate(day, card, label, score, alert_rate=0.2, k=2)
    assert result == {
        "auc_roc": auc_roc(label, score),
        "average_precision": average_precision(label, score),
        "card_precision_at_2": card_precision_at_k(day, card, label, score, k=2),
        "recall_at_alert_rate": recall_at_alert_rate(label, score, 0.2),
        "alert_rate": 0.2,
        "transactions": 14.0,
        "frauds": 8.0,
        "fraud_rate": 8 / 14,
        "days": 3.0,
    }
    assert all(type(value) is float for value in result.values())


def test_metrics_table_formats_rates_and_counts():
    """Rates print with 4 decimals, counts as integers, NaN or missing as "-"."""
    table = format_metrics_table(
        {
            "validation": {"auc_roc": 0.91234, "transactions": 1200.0},
            "test": {"auc_roc": float("nan"), "transactions": 900.0, "days": 3.0},
        }
    )
    header, validation, test = table.splitlines()
    assert header.split() == ["auc_roc", "transactions", "days"]
    assert validation.split() == ["validation", "0.9123", "1200", "-"]
    assert test.split() == ["test", "-", "900", "3"]


def test_evaluate_uses_a_card_precision_computed_with_history():
    """A card precision computed by the caller replaces the split-only one."""
    day, card, label, score = columns(HAND_EXAMPLE)
    assert (
        evaluate(day, card, label, score, k=2, card_precision=0.125)["card_precision_at_2"] == 0.125
    )


def weekly_history(fraud_days_of_a: list[int], scored_from: int):
    """Cards A (0.9), B (0.8) and C (0.1) swipe daily on days 0-27; only A's listed days
    and every B day from 10 on are frauds; rows from `scored_from` on are scored."""
    rows = []
    for d in range(28):
        rows.append((d, "A", int(d in fraud_days_of_a), 0.9))
        rows.append((d, "B", int(d >= 10), 0.8))
        rows.append((d, "C", 0, 0.1))
    day, card, label, score = columns(rows)
    return day, card, label, score, day >= scored_from


def test_weekly_card_precision_excludes_cards_known_within_the_handbook_lookback():
    """A fraud in the lookback week is known after delay + 1 days; detected cards leave."""
    day, card, label, score, scored = weekly_history([0], scored_from=14)
    scored &= day < 21
    # Day 14: A known (fraud day 0, known from 8); B not yet known (fraud day 10, known
    # from 18) and hit; days 15-20: A known, B detected, C genuine.
    result = weekly_card_precision_at_k(day, card, label, score, scored, k=1, label_delay_days=7)
    assert result == pytest.approx(1 / 7)


def test_weekly_card_precision_forgets_frauds_older_than_the_lookback():
    """Each week looks back one week plus the delay, as the handbook's protocol does."""
    day, card, label, score, scored = weekly_history([0, 21], scored_from=21)
    # Lookback starts at day 7: A's day-0 fraud is forgotten, so A ranks first on day 21.
    result = weekly_card_precision_at_k(day, card, label, score, scored, k=1, label_delay_days=7)
    assert result == pytest.approx(1 / 7)
