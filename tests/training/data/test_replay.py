"""Training replay and the server's one-at-a-time path give identical feature vectors."""

from __future__ import annotations

import csv
import heapq
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from service.core.domain import EntryMode, Transaction, epoch_seconds, major_units
from service.features import FEATURES, FeatureConfig, FeatureEngine
from training.data.loading import load_transactions
from training.data.replay import replay_features
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def replay_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 days of 150 simulated cards: 17,171 transactions, 4,346 of them frauds. Equality
    does not depend on the size, and a third of the conftest's history replays in a third of
    the time; 60 days still fill the 30-day windows and see many frauds reported."""
    path = tmp_path_factory.mktemp("replay") / "history.csv"
    write_transactions(
        simulate(SimulationParams(customers=150, terminals=300, days=60, seed=11)), path
    )
    return path


def online_transaction(row: dict[str, str]) -> Transaction:
    """A row converted the way the gRPC edge converts a request: minor units, nanoseconds."""
    instant = datetime.fromisoformat(row["timestamp"])
    nanoseconds = (instant - EPOCH) // timedelta(microseconds=1) * 1000
    amount_minor = int(Decimal(row["amount"]) * 100)
    present = row["card_present"].lower()
    return Transaction(
        transaction_id=row["transaction_id"],
        timestamp=epoch_seconds(nanoseconds),
        card_id=row["card_id"],
        terminal_id=row["terminal_id"],
        amount=major_units(amount_minor, 2),
        merchant_id=row["merchant_id"],
        mcc=int(row["mcc"]),
        entry_mode=EntryMode.parse(row["entry_mode"]),
        currency=row["currency"],
        country=row["country"],
        card_present=None if present == "" else present in ("true", "1"),
    )


def online_features(path: Path, config: FeatureConfig) -> dict[str, list[float]]:
    """Feed the file one swipe at a time, each fraud reported when its label becomes known."""
    with path.open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: (r["timestamp"], r["transaction_id"]))
    engine = FeatureEngine(config)
    delay = config.label_delay_seconds
    pending: list[tuple[float, str]] = []  # (reported_at, transaction id)
    vectors: dict[str, list[float]] = {}
    for row in rows:
        tx = online_transaction(row)
        while pending and pending[0][0] <= tx.timestamp:
            reported_at, fraud_id = heapq.heappop(pending)
            assert engine.report_outcome(fraud_id, True, reported_at)
        vectors[tx.transaction_id] = engine.observe(tx)
        if row["is_fraud"] == "1":
            heapq.heappush(pending, (tx.timestamp + delay, tx.transaction_id))
    return vectors


def test_replay_equals_online_path_transaction_by_transaction(replay_history: Path):
    """Every transaction gets the same float32 feature vector offline and online."""
    config = FeatureConfig()
    loaded = load_transactions(replay_history)
    replayed = replay_features(loaded.frame, config)
    online = online_features(replay_history, config)
    assert replayed.shape == (len(online), len(FEATURES))
    ids = loaded.frame["transaction_id"].tolist()
    mismatches = [
        tx_id
        for tx_id, row in zip(ids, replayed, strict=True)
        if not np.array_equal(np.asarray(online[tx_id], dtype=np.float32), row)
    ]
    assert mismatches == []
    # The history must exercise the label-dependent features for this to mean anything:
    # 9,572 rows have a known-fraud terminal risk.
    risk = replayed[:, [f.name for f in FEATURES].index("terminal_risk_30d")]
    assert (risk > 0).sum() > 100


def test_parallel_replay_equals_single_process(replay_history: Path):
    """Replaying the card and risk halves in two processes changes no value."""
    frame = load_transactions(replay_history).frame
    single = replay_features(frame, FeatureConfig(), processes=1)
    assert np.array_equal(single, replay_features(frame, FeatureConfig(), processes=2))


def test_replay_is_deterministic_and_format_independent(replay_history: Path, tmp_path: Path):
    """The same history as CSV or Parquet replays to byte-identical features."""
    config = FeatureConfig()
    from_csv = load_transactions(replay_history).frame
    parquet = tmp_path / "history.parquet"
    write_transactions(_simulated_frame(replay_history), parquet)
    from_parquet = load_transactions(parquet).frame
    first = replay_features(from_csv, config)
    assert np.array_equal(first, replay_features(from_csv, config))
    assert np.array_equal(first, replay_features(from_parquet, config))


def _simulated_frame(path: Path):
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["amount"] = frame["amount"].astype(float)
    frame["is_fraud"] = frame["is_fraud"].astype("int8")
    frame["mcc"] = frame["mcc"].astype(int)
    frame["card_present"] = frame["card_present"].str.lower() == "true"
    return frame
