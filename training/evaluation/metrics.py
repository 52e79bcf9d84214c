"""Fraud metrics over scored transactions, computed the way fraud teams read them.

Inputs are numpy arrays of equal length, one entry per transaction: `day` (integer day
index of the event time), `card` (card ids), `label` (1 for fraud) and `score` (in [0, 1]).

Besides the threshold-free AUC and average precision, the daily card precision@k follows
the Fraud Detection Handbook (Le Borgne et al., chapter 4): investigators review at most k
cards a day, so what counts is how many of the k most suspicious cards are compromised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

IntArray = npt.NDArray[np.integer[Any]]
FloatArray = npt.NDArray[np.floating[Any]]
CardArray = npt.NDArray[Any]

# Metrics that are counts, shown without decimals in tables.
COUNT_METRICS = frozenset({"transactions", "frauds", "days"})


def auc_roc(label: IntArray, score: FloatArray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    if np.unique(label).size < 2:
        return float("nan")
    # sklearn imported in its two uses: 1.5-2 s of CPU that the tables, thresholds and card
    # precision of this module do not need.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(label, score))


def average_precision(label: IntArray, score: FloatArray) -> float:
    """Average precision (area under the precision-recall curve); NaN with one class only."""
    if np.unique(label).size < 2:
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(label, score))


def card_known_from_day(
    day: IntArray, card: CardArray, label: IntArray, label_delay_days: int
) -> dict[str, int]:
    """Card id to the first day its fraud is known: first fraud day plus the label delay.

    Pass only history that precedes (or overlaps) the evaluated period: every fraud given
    here becomes known knowledge, as chargebacks do once the delay has passed.
    """
    if label_delay_days < 0:
        raise ValueError(f"label_delay_days must be >= 0, got {label_delay_days}")
    is_fraud = np.asarray(label) == 1
    first_fraud_day = pd.Series(day[is_fraud]).groupby(card[is_fraud]).min()
    return {str(key): int(value) + label_delay_days for key, value in first_fraud_day.items()}


def card_precision_at_k(
    day: IntArray,
    card: CardArray,
    label: IntArray,
    score: FloatArray,
    *,
    k: int = 100,
    card_known_from_day: Mapping[str, int] | None = None,
) -> float:
    """Mean over days of the share of frauds among the day's k most suspicious cards.

    Each day, a card counts once with its highest score and label; cards are ranked by
    score, ties broken by card id ascending so the result never depends on input order.
    The daily value divides by k even when fewer cards are left, as in the handbook.
    A card leaves the ranking from the day after it is detected (fraudulent and in a
    top k) and from the day its fraud is known (`card_known_from_day[card] <= day`):
    an investigator gains nothing from a card already blocked.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    card_days = _ranked_card_days(day, card, label, score, card_known_from_day or {})
    detected: set[Any] = set()
    daily: list[float] = []
    for _, today in card_days.groupby("day", sort=True):
        candidates = today[~today["known"] & ~today["card"].isin(detected)]
        top = candidates.head(k)
        hits = top.loc[top["label"] == 1, "card"]
        daily.append(len(hits) / k)
        detected.update(hits)
    return float(np.mean(daily)) if daily else float("nan")


def _ranked_card_days(
    day: IntArray,
    card: CardArray,
    label: IntArray,
    score: FloatArray,
    known_from_day: Mapping[str, int],
) -> pd.DataFrame:
    """One row per (day, card) with max score and label, ranked within each day."""
    transactions = pd.DataFrame({"day": day, "card": card, "label": label, "score": score})
    card_days = (
        transactions.groupby(["day", "card"], sort=False)
        .agg(score=("score", "max"), label=("label", "max"))
        .reset_index()
        .sort_values(["day", "score", "card"], ascending=[True, False, True])
    )
    # Keys are str (as `card_known_from_day` returns them) whatever the type of card ids.
    known_day = card_days["card"].astype(str).map(pd.Series(known_from_day, dtype="float64"))
    card_days["known"] = known_day <= card_days["day"]
    return card_days


def weekly_card_precision_at_k(
    day: IntArray,
    card: CardArray,
    label: IntArray,
    score: FloatArray,
    scored: npt.NDArray[np.bool_],
    *,
    k: int = 100,
    label_delay_days: int = 7,
    block_days: int = 7,
) -> float:
    """Card precision@k over the scored days, cut into the handbook's test weeks.

    The handbook measures card precision@k on one test week that follows a training week
    and a label delay: cards with a fraud known by then (in the training week, or in the
    delay period up to the day before) leave the ranking, and so do cards detected on
    earlier days of the week. Over a longer period this repeats that week by week, each
    week looking back exactly as far, so the figure stays comparable with the handbook's
    instead of shrinking as ever more cards have been defrauded at some point.

    Arrays cover the whole history (earlier rows supply the known frauds); `scored`
    selects the evaluated rows and `score` is only read there. Days weigh equally.
    """
    frauds = np.asarray(label) == 1
    scored_days = day[scored]
    first, end = int(scored_days.min()), int(scored_days.max()) + 1
    daily_sum = 0.0
    days = 0
    for start in range(first, end, block_days):
        stop = min(start + block_days, end)
        lookback = frauds & (day >= start - label_delay_days - block_days) & (day < stop)
        # Known from the day after the delay has fully passed, as in the handbook.
        known = card_known_from_day(
            day[lookback], card[lookback], label[lookback], label_delay_days + 1
        )
        week = scored & (day >= start) & (day < stop)
        if not week.any():
            continue
        week_days = np.unique(day[week]).size
        precision = card_precision_at_k(
            day[week], card[week], label[week], score[week], k=k, card_known_from_day=known
        )
        daily_sum += precision * week_days
        days += week_days
    return daily_sum / days if days else float("nan")


def alert_threshold(score: FloatArray, rate: float) -> float:
    """The score of the last alert when alerting on the top `rate` share of transactions.

    The budget is `rate` times the number of transactions, rounded to the nearest integer
    and at least 1. Alerting on `score >= threshold` includes every tie with that score.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if score.size == 0:
        raise ValueError("no scores")
    alerts = max(1, round(rate * score.size))
    return float(np.partition(score, score.size - alerts)[score.size - alerts])


def recall_at_alert_rate(label: IntArray, score: FloatArray, rate: float) -> float:
    """Share of frauds alerted when alerting at `alert_threshold(score, rate)`; NaN if none."""
    frauds = np.asarray(label) == 1
    if not frauds.any():
        return float("nan")
    alerted = score >= alert_threshold(score, rate)
    return float(np.count_nonzero(alerted & frauds) / np.count_nonzero(frauds))


def evaluate(
    day: IntArray,
    card: CardArray,
    label: IntArray,
    score: FloatArray,
    *,
    alert_rate: float = 0.01,
    k: int = 100,
    card_precision: float | None = None,
) -> dict[str, float]:
    """Every metric of one split, as plain floats keyed by metric name.

    `card_precision` is the card precision@k when the caller computed it with history the
    split lacks (see `weekly_card_precision_at_k`); otherwise only cards detected on
    earlier days of the split leave the ranking.
    """
    frauds = int(np.count_nonzero(np.asarray(label) == 1))
    if card_precision is None:
        card_precision = card_precision_at_k(day, card, label, score, k=k)
    return {
        "auc_roc": auc_roc(label, score),
        "average_precision": average_precision(label, score),
        f"card_precision_at_{k}": card_precision,
        "recall_at_alert_rate": recall_at_alert_rate(label, score, alert_rate),
        "alert_rate": float(alert_rate),
        "transactions": float(label.size),
        "frauds": float(frauds),
        "fraud_rate": frauds / label.size if label.size else float("nan"),
        "days": float(np.unique(day).size),
    }


def evaluate_masked(
    day: IntArray,
    card: CardArray,
    label: IntArray,
    score: FloatArray,
    scored: npt.NDArray[np.bool_],
    *,
    alert_rate: float,
    k: int,
    label_delay_days: int,
) -> dict[str, float]:
    """`evaluate` of the `scored` rows, `score` holding their scores alone; card precision@k
    by `weekly_card_precision_at_k`, the other rows of the whole-history arrays `day`, `card`
    and `label` supplying the frauds known by then."""
    full_score = np.zeros(len(label))
    full_score[scored] = score
    card_precision = weekly_card_precision_at_k(
        day, card, label, full_score, scored, k=k, label_delay_days=label_delay_days
    )
    return evaluate(
        day[scored],
        card[scored],
        label[scored],
        score,
        alert_rate=alert_rate,
        k=k,
        card_precision=card_precision,
    )


def format_metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A fixed-width text table: one row per split or model, one column per metric.

    Columns appear in first-seen order; counts print as integers, everything else with
    4 decimals; a metric that a row lacks or that is undefined (NaN) prints as "-".
    """
    table = pd.DataFrame([dict(metrics) for metrics in rows.values()], index=list(rows))
    formatters = {
        column: _format_count if column in COUNT_METRICS else _format_rate
        for column in table.columns
    }
    return table.to_string(formatters=formatters, na_rep="-")


def _format_count(value: float) -> str:
    return f"{value:.0f}"


def _format_rate(value: float) -> str:
    return f"{value:.4f}"
