"""The feature engine as a whole: its named contract, and agreement with a brute-force
recomputation from the full history on generated streams."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.core.domain import Admitted, EarlierAttempt, Transaction
from service.features import FEATURES, FeatureConfig, FeatureEngine
from service.features.card_history import RECENT_EVENTS
from service.features.risk_history import PENDING_OUTCOMES
from tests.service.features.engine_io import DAY, DELAY, HOUR, NAMES, T0, as_dict, tx


def test_feature_names_are_unique_and_described():
    """Every feature has a unique name and a description."""
    assert len(set(NAMES)) == len(NAMES)
    assert all(feature.description for feature in FEATURES)


# --- brute force ------------------------------------------------------------------------


def reference_features(history: list[Transaction], reports: dict[str, float]) -> dict[str, float]:
    """Card and terminal features of history[-1], recomputed from scratch by definition:
    the last hour exact (over the card's last RECENT_EVENTS swipes), the day window in whole
    hours, the week and month windows in whole days; the risk windows end at the settled
    hour: the 24 hours before, or that day's hours and the whole days before."""
    current = history[-1]
    now = current.timestamp
    card = [t for t in history if t.card_id == current.card_id]
    hour, day = now // HOUR, now // DAY
    result: dict[str, float] = {
        "card_tx_count_1h": 1 + sum(t.timestamp > now - HOUR for t in card[:-1][-RECENT_EVENTS:])
    }
    windows = {
        "1d": [t for t in card if t.timestamp // HOUR > hour - 24],
        "7d": [t for t in card if t.timestamp // DAY > day - 7],
        "30d": [t for t in card if t.timestamp // DAY > day - 30],
    }
    for suffix, inside in windows.items():
        result[f"card_tx_count_{suffix}"] = len(inside)
        result[f"card_amount_mean_{suffix}"] = sum(t.amount for t in inside) / len(inside)
    prior = [t.amount for t in windows["30d"][:-1]]
    if prior:
        mean = sum(prior) / len(prior)
        variance = sum((a - mean) ** 2 for a in prior) / len(prior)
        std = math.sqrt(variance) if variance > 1e-12 * mean * mean else 0.0
        result["amount_to_card_mean_30d"] = current.amount / mean if mean > 0 else -1.0
        zscore = (current.amount - mean) / std if len(prior) > 1 and std > 0 else 0.0
        result["amount_zscore_30d"] = zscore
    terminal = [t for t in history[:-1] if t.terminal_id == current.terminal_id]
    settled_hour = (now - DELAY) // HOUR
    settled_day = settled_hour // 24
    for days in (1, 7, 30):
        if days == 1:
            inside = [
                t for t in terminal if settled_hour - 24 <= t.timestamp // HOUR < settled_hour
            ]
        else:
            inside = [
                t
                for t in terminal
                if settled_day * 24 <= t.timestamp // HOUR < settled_hour
                or settled_day - days <= t.timestamp // DAY < settled_day
            ]
        frauds = sum(1 for t in inside if reports.get(t.transaction_id, math.inf) <= now)
        result[f"terminal_tx_count_{days}d_delayed"] = len(inside)
        result[f"terminal_risk_{days}d"] = frauds / len(inside) if inside else 0.0
    return result


events = st.lists(
    st.tuples(
        st.sampled_from([0.0, 1.0, 600.0, HOUR, 5 * HOUR, DAY, 3 * DAY, DELAY, 9 * DAY]),
        st.integers(0, 2),  # card
        st.integers(0, 1),  # terminal
        st.integers(1, 50_000).map(lambda cents: cents / 100),
        st.sampled_from([None, 0.0, DAY, 8 * DAY, 20 * DAY]),  # report lag after delay
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(events)
# Found by Hypothesis: amounts close to a large mean made sums of squares cancel (the
# z-score was off by 1e-9 relative); the month's sums are now of amounts shifted by the
# card's first amount.
@example(
    [
        (0.0, 0, 0, 0.01, None),
        (0.0, 1, 0, 499.6, None),
        (0.0, 1, 0, 499.91, None),
        (0.0, 1, 0, 0.01, None),
    ]
)
# Found by Hypothesis: a ninth outcome waiting at one terminal. A record keeps
# PENDING_OUTCOMES waiting, so the earliest due is counted at once, a little early (by
# design: a bounded record); the reference now knows that rule.
@example(
    [(0.0, 0, 0, 0.01, None)] * 19
    + [(0.0, 0, 0, 0.01, DAY)] * 8
    + [(DELAY, 0, 0, 0.01, DAY), (HOUR, 0, 0, 0.01, None)]
)
def test_engine_matches_brute_force_recomputation(stream):
    """Incremental windows and lazily applied outcomes equal the features by definition."""
    engine = FeatureEngine(FeatureConfig())
    history: list[Transaction] = []
    reports: dict[str, float] = {}
    waiting: dict[str, list[tuple[float, str] | None]] = {}
    now = T0
    for i, (gap, card, terminal, amount, lag) in enumerate(stream):
        now += gap
        current = tx(i, now, card=f"c{card}", terminal=f"t{terminal}", amount=amount)
        history.append(current)
        got = as_dict(engine.observe(current))
        for name, expected in reference_features(history, reports).items():
            assert got[name] == pytest.approx(expected, rel=1e-9, abs=1e-9), name
        if lag is not None:
            reports[current.transaction_id] = now + DELAY + lag
            _wait_or_count_early(waiting, current, now + DELAY + lag, reports)
            engine.report_outcome(current.transaction_id, True, now + DELAY + lag)


def _wait_or_count_early(
    waiting: dict[str, list[tuple[float, str] | None]],
    reported: Transaction,
    reported_at: float,
    reports: dict[str, float],
) -> None:
    """The record's rule for an outcome not yet due (`service.features.risk_history`): it
    waits in one of PENDING_OUTCOMES slots per terminal; with every slot taken, the
    earliest due (first in slot order) is counted from now on, `reports` says so."""
    now = reported.timestamp  # the terminal's latest transaction: times only grow here
    slots = waiting.setdefault(reported.terminal_id, [None] * PENDING_OUTCOMES)
    for index, slot in enumerate(slots):
        if slot is not None and slot[0] <= now:
            slots[index] = None
    if reported_at <= (now // HOUR + 1) * HOUR + DELAY:
        return  # counted at once: no window reads its hour before it is due
    free = next((index for index, slot in enumerate(slots) if slot is None), None)
    if free is None:
        free = min(range(PENDING_OUTCOMES), key=lambda index: _due(slots[index]))
        reports[_id(slots[free])] = now
    slots[free] = (reported_at, reported.transaction_id)


def _due(slot: tuple[float, str] | None) -> float:
    assert slot is not None
    return slot[0]


def _id(slot: tuple[float, str] | None) -> str:
    assert slot is not None
    return slot[1]


def test_a_transaction_id_idle_past_the_horizon_is_new_again():
    """A transaction kept for outcomes and retries is gone once idle past the state
    horizon, whether or not the store has dropped it yet: its id then counts as new."""
    config = FeatureConfig()
    engine = FeatureEngine(config)
    first = tx(1, T0, card="c1", amount=10.0)
    engine.observe(first)
    assert isinstance(engine.admit(first._replace(amount=99.0)), EarlierAttempt)
    much_later = first._replace(timestamp=T0 + config.state_horizon_seconds + 1, amount=99.0)
    admitted = engine.admit(much_later)
    assert isinstance(admitted, Admitted)
    assert as_dict(list(admitted.features))["card_tx_count_30d"] == 1  # the card is new again too
