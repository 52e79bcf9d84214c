"""The replay on a Dask cluster: each half of the engine per partition of its own key, then
joined back on transaction_id; the features are those of `training.data.replay`, bit for bit.

A feature reads the records of one entity only: the card half its card's, the risk half its
terminal's and its merchant's, which `RiskFeatures` keeps apart and updates alike. So the
history is shuffled three times, and every partition of a shuffle holds every transaction
of the entities it holds:

    card pass      by card_id, every column: `replay_card_half`
    terminal pass  by terminal_id (ids, time, label): `replay_risk_half` with no merchant,
                   which gives the terminal's six features and, for a transaction without a
                   merchant, the engine's own merchant columns
    merchant pass  by merchant_id, rows with a merchant: `replay_risk_half` with the
                   merchant in the terminal's place, whose six terminal columns are then the
                   merchant's features

Each partition is replayed in (timestamp_ns, transaction_id) order, the loader's order, so
every entity sees its transactions, and each fraud's report one label delay later, exactly
as in one process. `tests/training/data/test_cluster_replay.py` checks the equality on a
LocalCluster; a change to the engine that broke this decomposition fails it.
"""

from __future__ import annotations

import math

import dask.dataframe as dd
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from service.core.domain import EntryMode
from service.features import CARD_HALF, RISK_HALF, FeatureConfig
from training.data.replay import replay_card_half, replay_risk_half

TIME_ORDER = ["timestamp_ns", "transaction_id"]
# What the card pass carries through for the table: labels, days, cards, ids.
ROW_KEYS = ["transaction_id", "timestamp_ns", "card_id", "is_fraud"]
CARD_NAMES = [spec.name for spec in CARD_HALF]
RISK_NAMES = [spec.name for spec in RISK_HALF]
_ENTITY_FEATURES = len(RISK_NAMES) // 2
MERCHANT_NAMES = RISK_NAMES[_ENTITY_FEATURES:]
_MERCHANT_PASS = [f"merchant_pass_{index}" for index in range(_ENTITY_FEATURES)]
_RISK_INPUT = ["transaction_id", "timestamp_ns", "terminal_id", "merchant_id", "is_fraud"]
# Rows per partition of a shuffle, at most: a partition's replay state stays small.
_ROWS_PER_PARTITION = 1_000_000


def shuffle_partitions(rows: int, workers: int) -> int:
    """Partitions per shuffle: two per worker, so that a slow one does not hold up the rest,
    and more when the history is large."""
    return max(2 * workers, math.ceil(rows / _ROWS_PER_PARTITION))


def replay_on_cluster(
    history: dd.DataFrame, config: FeatureConfig, partitions: int
) -> dd.DataFrame:
    """Lazily: `ROW_KEYS` and every feature column, one row per transaction of `history`
    (normalised, as the loader gives it), in no particular order."""
    card = history.shuffle("card_id", npartitions=partitions).map_partitions(
        card_pass, config, meta=card_pass(history._meta, config)
    )
    risk_input = history[_RISK_INPUT]
    terminal = risk_input.shuffle("terminal_id", npartitions=partitions).map_partitions(
        terminal_pass, config, meta=terminal_pass(risk_input._meta, config)
    )
    with_merchant = risk_input[risk_input["merchant_id"] != ""]
    merchant = with_merchant.shuffle("merchant_id", npartitions=partitions).map_partitions(
        merchant_pass, config, meta=merchant_pass(risk_input._meta, config)
    )
    joined = card.merge(terminal, on="transaction_id", how="inner", npartitions=partitions)
    joined = joined.merge(merchant, on="transaction_id", how="left", npartitions=partitions)
    return joined.map_partitions(merchant_risk_in_place, meta=merchant_risk_in_place(joined._meta))


def card_pass(part: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """The card half of a partition holding every transaction of its cards."""
    ordered = part.sort_values(TIME_ORDER, kind="stable")
    return _with_features(ordered[ROW_KEYS], replay_card_half(ordered, config), CARD_NAMES)


def terminal_pass(part: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """The risk half of a partition holding every transaction of its terminals, without
    their merchants: the terminal's features, and the engine's for no merchant."""
    ordered = part.sort_values(TIME_ORDER, kind="stable")
    matrix = replay_risk_half(_risk_frame(ordered, ordered["terminal_id"]), config)
    return _with_features(ordered[["transaction_id"]], matrix, RISK_NAMES)


def merchant_pass(part: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """The merchant's features of a partition holding every transaction of its merchants."""
    ordered = part.sort_values(TIME_ORDER, kind="stable")
    matrix = replay_risk_half(_risk_frame(ordered, ordered["merchant_id"]), config)
    return _with_features(ordered[["transaction_id"]], matrix[:, :_ENTITY_FEATURES], _MERCHANT_PASS)


def merchant_risk_in_place(joined: pd.DataFrame) -> pd.DataFrame:
    """The merchant pass's values in the merchant columns, where the row has a merchant."""
    passed = joined[_MERCHANT_PASS].to_numpy()
    has_merchant = ~np.isnan(passed).all(axis=1)
    merchant = joined[MERCHANT_NAMES].to_numpy(copy=True)
    merchant[has_merchant] = passed[has_merchant]
    result = joined.drop(columns=_MERCHANT_PASS)
    result[MERCHANT_NAMES] = merchant
    return result


def feature_matrix(replayed: pd.DataFrame) -> NDArray[np.float32]:
    """The feature columns in the engine's order, float32 as replayed."""
    return replayed[CARD_NAMES + RISK_NAMES].to_numpy(dtype=np.float32)


def _risk_frame(ordered: pd.DataFrame, entity: pd.Series) -> pd.DataFrame:
    """The loader's columns for the risk half: `entity` in the terminal's place, no
    merchant, and what the risk half never reads as "not known"."""
    rows = len(ordered)
    return pd.DataFrame(
        {
            "transaction_id": ordered["transaction_id"].to_numpy(),
            "timestamp_ns": ordered["timestamp_ns"].to_numpy(),
            "terminal_id": entity.to_numpy(),
            "merchant_id": np.full(rows, "", dtype=object),
            "is_fraud": ordered["is_fraud"].to_numpy(),
            "card_id": np.full(rows, "", dtype=object),
            "amount": np.zeros(rows),
            "mcc": np.full(rows, -1, dtype=np.int32),
            "entry_mode": np.full(rows, EntryMode.UNKNOWN.value, dtype=np.int8),
            "currency": np.full(rows, "", dtype=object),
            "country": np.full(rows, "", dtype=object),
            "card_present": np.full(rows, -1, dtype=np.int8),
        }
    )


def _with_features(
    keys: pd.DataFrame, matrix: NDArray[np.float32], names: list[str]
) -> pd.DataFrame:
    features = pd.DataFrame(matrix, columns=names, index=keys.index)
    return pd.concat([keys, features], axis=1).reset_index(drop=True)
