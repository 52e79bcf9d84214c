"""Training features by replaying history through the server's own feature engine.

Transactions go through `FeatureEngine.observe` in event-time order, exactly as the server
would see them, and each known fraud is fed back with `report_outcome` as reported one
label delay after its transaction: the server's path, with the handbook's label timing.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm import tqdm

from service.domain import EntryMode, Transaction, epoch_seconds
from service.features import FEATURES, FeatureConfig, FeatureEngine

_ENTRY_MODES = tuple(EntryMode)


def transactions(frame: pd.DataFrame) -> Iterator[Transaction]:
    """Domain transactions from a loaded (normalised, time-sorted) history frame."""
    columns = (
        frame["transaction_id"].tolist(),
        frame["timestamp_ns"].tolist(),
        frame["card_id"].tolist(),
        frame["terminal_id"].tolist(),
        frame["amount"].tolist(),
        frame["merchant_id"].tolist(),
        frame["mcc"].tolist(),
        frame["entry_mode"].tolist(),
        frame["currency"].tolist(),
        frame["country"].tolist(),
        frame["card_present"].tolist(),
    )
    for tx_id, ns, card, terminal, amount, merchant, mcc, mode, currency, country, present in zip(
        *columns, strict=True
    ):
        yield Transaction(
            tx_id,
            epoch_seconds(ns),
            card,
            terminal,
            amount,
            merchant,
            mcc,
            _ENTRY_MODES[mode],
            currency,
            country,
            None if present < 0 else present == 1,
        )


def replay_features(
    frame: pd.DataFrame, config: FeatureConfig, *, progress: bool = False
) -> NDArray[np.float32]:
    """The feature matrix of `frame` (rows in frame order), as the server computes it online.

    The matrix is float32, the precision the ONNX model reads, so training and serving
    split on the very same values.
    """
    engine = FeatureEngine(config)
    delay = config.label_delay_seconds
    values = array("f")
    labels = frame["is_fraud"].to_numpy(dtype=np.int8).tolist()
    rows = tqdm(
        zip(transactions(frame), labels, strict=True),
        total=len(labels),
        desc="replay",
        unit="tx",
        unit_scale=True,
        disable=not progress,
        mininterval=1.0,
    )
    for tx, is_fraud in rows:
        values.extend(engine.observe(tx))
        if is_fraud:
            engine.report_outcome(tx.transaction_id, True, tx.timestamp + delay)
    return np.frombuffer(values, dtype=np.float32).reshape(len(labels), len(FEATURES))
