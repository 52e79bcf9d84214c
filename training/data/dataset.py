"""A loaded history with its replayed features: what every training command starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.features import FeatureConfig
from training.data.history_parts import is_partitioned, load_parts
from training.data.loading import LoadedTransactions, load_transactions
from training.data.replay import replay_features
from training.data.split import day_index


@dataclass(frozen=True)
class FeatureTable:
    """Row-aligned arrays over a time-sorted history."""

    source: LoadedTransactions
    features: NDArray[np.float32]
    labels: NDArray[np.int8]
    days: NDArray[np.int64]
    cards: NDArray[np.object_]
    transaction_ids: NDArray[np.object_]

    def __len__(self) -> int:
        return len(self.labels)


def build_feature_table(
    path: Path,
    config: FeatureConfig,
    *,
    rejects_path: Path | None = None,
    progress: bool = False,
) -> FeatureTable:
    """Load `path`, validate it, and replay it through the feature engine."""
    loaded = load_history(path, rejects_path=rejects_path)
    return table_of(loaded, replay_features(loaded.frame, config, progress=progress))


def load_history(path: Path, *, rejects_path: Path | None = None) -> LoadedTransactions:
    """A file, or the parts of a directory or glob (`training.data.history_parts`), checked
    and time-sorted in this process."""
    if is_partitioned(path):
        return load_parts(path, rejects_path=rejects_path)
    return load_transactions(path, rejects_path=rejects_path)


def table_of(loaded: LoadedTransactions, features: NDArray[np.float32]) -> FeatureTable:
    """The table of a loaded history and its feature matrix, row for row."""
    frame = loaded.frame
    return FeatureTable(
        source=loaded,
        features=features,
        labels=frame["is_fraud"].to_numpy(dtype=np.int8),
        days=day_index(frame["timestamp_ns"].to_numpy(dtype=np.int64)),
        cards=frame["card_id"].to_numpy(dtype=object),
        transaction_ids=frame["transaction_id"].to_numpy(dtype=object),
    )
