"""Feature state seeded from history: a new deployment starts where its model's training
left off, instead of from empty windows that would undercount every card for weeks.

The history goes through the server's own `FeatureEngine` with training's label timing
(`training.data.replay`): in event-time order, each known fraud reported one label delay
after its transaction, right after that transaction is observed. A fraud whose report
falls due after the history ends waits in the state, as it does in training, and counts
from its report time; the same report arriving later through ReportOutcome changes
nothing.

Card numbers are tokenised as the server tokenises them (`tokenize_card`): the server
looks cards up by token, and a raw card number must never be stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from tqdm import tqdm

from service.core.domain import Transaction
from service.features import FeatureConfig, FeatureEngine, StateStore
from training.data.replay import transactions


def seed_state(
    frame: pd.DataFrame,
    config: FeatureConfig,
    store: StateStore,
    *,
    tokenize_card: Callable[[str], str] | None = None,
    progress: bool = False,
) -> int:
    """Replay the loaded history `frame` into `store` as training replays it; the number
    of transactions replayed."""
    engine = FeatureEngine(config, store)
    delay = config.label_delay_seconds
    labels: list[int] = frame["is_fraud"].to_numpy(dtype=np.int8).tolist()
    rows = zip(_with_progress(transactions(frame), len(frame), progress), labels, strict=True)
    for tx, is_fraud in rows:
        engine.observe(_tokenized(tx, tokenize_card))
        if is_fraud:
            engine.report_outcome(tx.transaction_id, True, tx.timestamp + delay)
    return len(frame)


def _tokenized(tx: Transaction, tokenize_card: Callable[[str], str] | None) -> Transaction:
    if tokenize_card is None:
        return tx
    return tx._replace(card_id=tokenize_card(tx.card_id))


def _with_progress(rows: Iterable[Transaction], total: int, enabled: bool) -> Iterable[Transaction]:
    bar: Iterable[Transaction] = tqdm(
        rows,
        total=total,
        desc="seed",
        unit="tx",
        unit_scale=True,
        disable=not enabled,
        mininterval=1.0,
    )
    return bar
