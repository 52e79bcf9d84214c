"""Training features by replaying history through the server's own feature engine.

Transactions go through the two halves `FeatureEngine` is made of (`CardFeatures`, then
`RiskFeatures`) in event-time order, exactly as the server would see them, and each known
fraud is fed back with `report_outcome` as reported one label delay after its transaction:
the server's path, with the handbook's label timing. The halves keep disjoint state, so
they can replay one after the other or side by side, or each on the partitions of its own
keys on a Dask cluster (`training.data.cluster_replay`).
"""

from __future__ import annotations

import multiprocessing
import os
from array import array
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm import tqdm

from service.core.domain import EntryMode, Transaction, epoch_seconds
from service.features import (
    CARD_HALF,
    RISK_HALF,
    CardFeatures,
    FeatureConfig,
    MemoryStore,
    RiskFeatures,
)

_ENTRY_MODES = tuple(EntryMode)
# Below this, starting a second process costs more than it saves.
_PARALLEL_FROM_ROWS = 200_000
_T = TypeVar("_T")


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
    frame: pd.DataFrame,
    config: FeatureConfig,
    *,
    progress: bool = False,
    processes: int | None = None,
) -> NDArray[np.float32]:
    """The feature matrix of `frame` (rows in frame order), as the server computes it online.

    The matrix is float32, the precision the ONNX model reads, so training and serving
    split on the very same values. With two `processes` (the default for large histories
    on a multi-core machine) the card half and the risk half of the engine replay side by
    side; their states are disjoint, so the result is identical to one process.
    """
    if processes is None:
        processes = 2 if len(frame) >= _PARALLEL_FROM_ROWS and (os.cpu_count() or 1) > 1 else 1
    if processes == 1:
        card_half = replay_card_half(frame, config, progress=progress)
        return np.hstack([card_half, replay_risk_half(frame, config)])
    spawn = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        risk_half = pool.submit(replay_risk_half, frame, config)
        card_half = replay_card_half(frame, config, progress=progress)
        return np.hstack([card_half, risk_half.result()])


def replay_card_half(
    frame: pd.DataFrame, config: FeatureConfig, *, progress: bool = False
) -> NDArray[np.float32]:
    """The `CARD_HALF` columns of a time-sorted `frame` holding every card it names in full."""
    half = CardFeatures(config)
    store = MemoryStore(horizon_seconds=config.state_horizon_seconds)
    values = array("f")
    for tx in _progress(transactions(frame), frame, progress):
        values.extend(half.observe(store, tx))
    return _matrix(values, len(frame), len(CARD_HALF))


def replay_risk_half(frame: pd.DataFrame, config: FeatureConfig) -> NDArray[np.float32]:
    """The `RISK_HALF` columns of a time-sorted `frame` holding every terminal and merchant
    it names in full, each fraud reported one label delay after its transaction."""
    half = RiskFeatures(config)
    store = MemoryStore(horizon_seconds=config.state_horizon_seconds)
    delay = config.label_delay_seconds
    values = array("f")
    out: list[float] = []
    for tx, is_fraud in zip(transactions(frame), _labels(frame), strict=True):
        store.put_transaction(half.observe(store, tx, out))
        values.extend(out)
        out.clear()
        if is_fraud:
            half.report_outcome(store, tx.transaction_id, True, tx.timestamp + delay)
    return _matrix(values, len(frame), len(RISK_HALF))


def _labels(frame: pd.DataFrame) -> list[int]:
    labels: list[int] = frame["is_fraud"].to_numpy(dtype=np.int8).tolist()
    return labels


def _progress(rows: Iterable[_T], frame: pd.DataFrame, enabled: bool) -> Iterable[_T]:
    bar: Iterable[_T] = tqdm(
        rows,
        total=len(frame),
        desc="replay",
        unit="tx",
        unit_scale=True,
        disable=not enabled,
        mininterval=1.0,
    )
    return bar


def _matrix(values: array[float], rows: int, columns: int) -> NDArray[np.float32]:
    if not rows:  # frombuffer refuses an empty buffer
        return np.empty((0, columns), dtype=np.float32)
    return np.frombuffer(values, dtype=np.float32).reshape(rows, columns)
