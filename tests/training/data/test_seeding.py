"""Tests for training.data.seeding: a seeded store continues exactly as training's replay,
and holds cards only under the server's tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from service.core.card_tokens import CardTokenizer
from service.features import EntityKind, FeatureConfig, FeatureEngine, MemoryStore
from training.data.loading import load_transactions
from training.data.replay import replay_features, transactions
from training.data.seeding import seed_state
from training.data.split import day_index
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

CONFIG = FeatureConfig()
SEEDED_DAYS = 10
CARD_NUMBER = "4111 1111 1111 1111"


def _history(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "history.csv"
    write_transactions(simulate(SimulationParams(customers=80, terminals=160, days=20)), path)
    return load_transactions(path).frame


def test_a_store_seeded_from_the_first_days_continues_as_the_replay_of_the_whole(
    tmp_path: Path,
) -> None:
    """Seed the first days, go on one swipe at a time: the later vectors are training's."""
    frame = _history(tmp_path)
    days = day_index(frame["timestamp_ns"].to_numpy(dtype=np.int64))
    cut = int(np.searchsorted(days, days[0] + SEEDED_DAYS))
    store = MemoryStore(horizon_seconds=CONFIG.state_horizon_seconds)

    assert seed_state(frame.iloc[:cut], CONFIG, store) == cut

    engine = FeatureEngine(CONFIG, store)
    rest = frame.iloc[cut:]
    vectors = []
    for tx, is_fraud in zip(transactions(rest), rest["is_fraud"].tolist(), strict=True):
        vectors.append(engine.observe(tx))
        if is_fraud:
            engine.report_outcome(
                tx.transaction_id, True, tx.timestamp + CONFIG.label_delay_seconds
            )
    expected = replay_features(frame, CONFIG, processes=1)[cut:]
    assert 0 < cut < len(frame)
    np.testing.assert_array_equal(np.array(vectors, dtype=np.float32), expected)


def test_card_numbers_are_kept_under_the_servers_tokens_only(tmp_path: Path) -> None:
    """A card number in the history is stored as the server's token, never as itself."""
    path = tmp_path / "cards.csv"
    path.write_text(
        "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud\n"
        f"a,2024-01-01T10:00:00Z,{CARD_NUMBER},t1,10.00,0\n"
        f"b,2024-01-01T10:05:00Z,{CARD_NUMBER},t1,12.00,1\n"
    )
    tokenizer = CardTokenizer(b"a key of at least thirty-two bytes!")
    store = MemoryStore()

    seed_state(load_transactions(path).frame, CONFIG, store, tokenize_card=tokenizer.token)

    token = tokenizer.token(CARD_NUMBER)
    assert token != CARD_NUMBER
    assert store.entity(EntityKind.CARD, token) is not None
    assert store.entity(EntityKind.CARD, CARD_NUMBER) is None
    for transaction_id in ("a", "b"):
        record = store.transaction(transaction_id)
        assert record is not None
        assert record.transaction.card_id == token
    reported = store.transaction("b")
    assert reported is not None
    assert reported.is_fraud
