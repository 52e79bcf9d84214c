"""Where a retrain parses its logs and replays its history: in this process by default, or
on a Dask cluster (`training.retraining.cluster_logs.reading_on_cluster`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.features import FeatureConfig
from training.data.dataset import FeatureTable, build_feature_table
from training.retraining.feedback import SegmentMap, map_here

HistoryReplay = Callable[[Path, FeatureConfig], FeatureTable]


@dataclass(frozen=True)
class LogReading:
    """How segments are read (one at a time here, or spread over workers) and how a
    `--history` is replayed; either way the same rows in the same order."""

    map_segments: SegmentMap = map_here
    replay_history: HistoryReplay = build_feature_table


IN_PROCESS = LogReading()
