"""The feature engine as a whole: its named contract, and agreement with a brute-force
recomputation from the full history on generated streams."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.core.domain import Transaction
from service.features import FEATURES, FeatureConfig, FeatureEngine
from service.features.card_history import CARD_WINDOWS
from service.features.risk_history import RISK_WINDOWS
from tests.service.features.engine_io import DAY, DELAY, HOUR, NAMES, T0, as_dict, tx


def test_feature_names_are_unique_and_described():
    """Every feature has a unique name and a description."""
    assert len(set(NAMES)) == len(NAMES)
    assert all(feature.description for feature in FEATURES)


# --- brute force ------------------------------------------------------------------------


def reference_features(history: list[Transaction], reports: dict[str, float]) -> dict[str, float]:
    """Card and terminal features of history[-1], recomputed from scratch by definition."""
    current = history[-1]
    now = current.timestamp
    card = [t for t in history if t.card_id == current.card_id]
    result: dict[str, float] = {}
    for width, suffix in zip(CARD_WINDOWS, ("1h", "1d", "7d", "30d"), strict=True):
        inside = [t for t in card if t.timestamp > now - width]
        result[f"card_tx_count_{suffix}"] = len(inside)
        if suffix != "1h":
            result[f"card_amount_mean_{suffix}"] = sum(t.amount for t in inside) / len(inside)
    prior = [t.amount for t in card[:-1] if t.timestamp > now - CARD_WINDOWS[-1]]
    if prior:
        mean = sum(prior) / len(prior)
        variance = sum((a - mean) ** 2 for a in prior) / len(prior)
        std = math.sqrt(variance) if variance > 1e-12 * mean * mean else 0.0
        result["amount_to_card_mean_30d"] = current.amount / mean if mean > 0 else -1.0
        zscore = (current.amount - mean) / std if len(prior) > 1 and std > 0 else 0.0
        result["amount_zscore_30d"] = zscore
    terminal = [t for t in history[:-1] if t.terminal_id == current.terminal_id]
    for width, suffix in zip(RISK_WINDOWS, ("1d", "7d", "30d"), strict=True):
        inside = [t for t in terminal if now - DELAY - width < t.timestamp <= now - DELAY]
        frauds = sum(1 for t in inside if reports.get(t.transaction_id, math.inf) <= now)
        result[f"terminal_tx_count_{suffix}_delayed"] = len(inside)
        result[f"terminal_risk_{suffix}"] = frauds / len(inside) if inside else 0.0
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
# z-score was off by 1e-9 relative); the month window now keeps Welford's running spread.
@example(
    [
        (0.0, 0, 0, 0.01, None),
        (0.0, 1, 0, 499.6, None),
        (0.0, 1, 0, 499.91, None),
        (0.0, 1, 0, 0.01, None),
    ]
)
def test_engine_matches_brute_force_recomputation(stream):
    """Incremental windows and lazily applied outcomes equal the features by definition."""
    engine = FeatureEngine(FeatureConfig())
    history: list[Transaction] = []
    reports: dict[str, float] = {}
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
            engine.report_outcome(current.transaction_id, True, now + DELAY + lag)
