"""A partitioned history checked and replayed on a Dask cluster: the same per-file checks as
`training.data.history_parts`, one task per file on the workers, then `cluster_replay`.

Parts are read once: the checked parts are kept in the cluster's memory (spilled to its
workers' disks when it fills) while the bad rows are looked at and the shuffles read them.
A bad row stops the run with its file and row before any replay, unless there is a rejects
file: then the bad rows come back to this process and are written there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.delayed import delayed
from distributed import Client
from numpy.typing import NDArray

from service.features import FeatureConfig
from training.data.cluster import persist_with_progress
from training.data.cluster_replay import (
    ROW_KEYS,
    TIME_ORDER,
    feature_matrix,
    replay_on_cluster,
    shuffle_partitions,
)
from training.data.dataset import FeatureTable, table_of
from training.data.history_parts import (
    CheckedPart,
    check_part,
    combined_sha256,
    describe,
    first_bad_row,
    history_parts,
    repeat_message,
    repeat_rejects,
    repeated_ids,
    write_part_rejects,
)
from training.data.loading import DataError, LoadedTransactions


@dataclass(frozen=True)
class ClusterHistory:
    """A checked history on the cluster and what the lineage records of it."""

    frame: dd.DataFrame
    rows: int
    rejected_rows: int
    source_sha256: str
    source_name: str
    workers: int


@dataclass(frozen=True)
class _PartSummary:
    name: str
    good_rows: int
    bad_rows: int
    first_bad_row: str | None
    sha256: str


def check_on_cluster(
    client: Client, data: Path, *, rejects_path: Path | None = None, progress: bool = False
) -> ClusterHistory:
    """Check every part of `data` on the cluster; DataError as `load_parts` raises it."""
    parts = history_parts(data)
    keep_rejects = rejects_path is not None
    checked = persist_with_progress(
        client,
        [delayed(check_part, pure=True)(part, keep_rejects) for part in parts],
        progress=progress,
    )
    summaries: list[_PartSummary] = client.compute(
        [delayed(_summary)(part) for part in checked], sync=True
    )
    message = first_bad_row([_as_checked(summary) for summary in summaries])
    if message is not None and rejects_path is None:
        raise DataError(message)
    meta = client.compute(delayed(_empty_good)(checked[0]), sync=True)
    frame = dd.from_delayed([delayed(_good)(c) for c in checked], meta=meta, verify_meta=False)
    repeats = _repeats(frame)
    if len(repeats) and rejects_path is None:
        raise DataError(repeat_message(repeats, parts))
    if rejects_path is not None:
        tables = client.compute([delayed(_rejects)(c) for c in checked], sync=True)
        write_part_rejects(rejects_path, [*tables, repeat_rejects(repeats, parts)])
        frame = frame.map_partitions(_without, repeats[["part", "source_row"]], meta=meta)
    rows = sum(summary.good_rows for summary in summaries) - len(repeats)
    if rows == 0:
        raise DataError(f"{data}: no transactions")
    return ClusterHistory(
        frame=frame.drop(columns=["part", "source_row"]),
        rows=rows,
        rejected_rows=sum(summary.bad_rows for summary in summaries) + len(repeats),
        source_sha256=combined_sha256([_as_checked(summary) for summary in summaries]),
        source_name=describe(parts),
        workers=len(client.scheduler_info()["workers"]),
    )


def replayed_frame(history: ClusterHistory, config: FeatureConfig) -> dd.DataFrame:
    """Lazily, every transaction's keys and features (`cluster_replay`)."""
    partitions = shuffle_partitions(history.rows, history.workers)
    return replay_on_cluster(history.frame, config, partitions)


def gather_table(
    client: Client, history: ClusterHistory, replayed: dd.DataFrame, *, progress: bool = False
) -> FeatureTable:
    """The whole feature table in this process, in the loader's time order."""
    (persisted,) = persist_with_progress(client, [replayed], progress=progress)
    frame: pd.DataFrame = client.compute(persisted, sync=True)
    ordered = frame.sort_values(TIME_ORDER, kind="stable").reset_index(drop=True)
    features: NDArray[np.float32] = feature_matrix(ordered)
    loaded = LoadedTransactions(
        frame=ordered[ROW_KEYS],
        rejected_rows=history.rejected_rows,
        source_sha256=history.source_sha256,
        source_name=history.source_name,
    )
    return table_of(loaded, features)


def _repeats(frame: dd.DataFrame) -> pd.DataFrame:
    """Rows whose transaction_id an earlier part holds: every id's rows in one partition."""
    ids = frame[["transaction_id", "part", "source_row"]]
    found: pd.DataFrame = (
        ids.shuffle("transaction_id").map_partitions(repeated_ids, meta=ids._meta).compute()
    )
    return found.reset_index(drop=True)


def _without(part: pd.DataFrame, repeats: pd.DataFrame) -> pd.DataFrame:
    keys = pd.MultiIndex.from_frame(repeats)
    kept: pd.DataFrame = part[~pd.MultiIndex.from_frame(part[["part", "source_row"]]).isin(keys)]
    return kept


def _summary(checked: CheckedPart) -> _PartSummary:
    return _PartSummary(
        checked.name, len(checked.good), checked.bad_rows, checked.first_bad_row, checked.sha256
    )


def _as_checked(summary: _PartSummary) -> CheckedPart:
    """A part's summary in the shape the shared helpers read; its rows stay on the cluster."""
    return CheckedPart(
        summary.name, pd.DataFrame(), summary.bad_rows, summary.first_bad_row, None, summary.sha256
    )


def _good(checked: CheckedPart) -> pd.DataFrame:
    return checked.good


def _empty_good(checked: CheckedPart) -> pd.DataFrame:
    return checked.good.iloc[:0]


def _rejects(checked: CheckedPart) -> Any:
    return checked.rejects
