"""`retrain --dask`: the logs parsed on the cluster's workers, one task per segment, and a
`--history` checked and replayed there as `train --dask` does (`training.data.cluster_history`).

Each worker reads its segments (their Parquet twins when current) and sends back the parsed
rows: compact columns and the float32 feature matrix, never the JSON lines. The parts come
back in segment order and are put together by `training.retraining.feedback` exactly as in
one process, so the labelled rows are the same, in the same order. The workers must read the
log directories at the same paths as this process (a shared volume).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from distributed import Client

from service.features import FeatureConfig
from training.data.cluster_history import check_on_cluster, gather_table, replayed_frame
from training.data.dataset import FeatureTable
from training.retraining.log_reading import LogReading

_Part = TypeVar("_Part")


def reading_on_cluster(client: Client, *, progress: bool = False) -> LogReading:
    """Segments parsed and a history replayed on `client`'s cluster."""

    def map_segments(read: Callable[[Path], _Part], paths: Sequence[Path]) -> list[_Part]:
        # Not pure: a segment's content changes under the same path while it is written.
        futures = client.map(read, list(paths), pure=False)
        parts: list[_Part] = client.gather(futures)
        return parts

    def replay_history(history: Path, config: FeatureConfig) -> FeatureTable:
        checked = check_on_cluster(client, history, progress=progress)
        return gather_table(client, checked, replayed_frame(checked, config), progress=progress)

    return LogReading(map_segments, replay_history)
