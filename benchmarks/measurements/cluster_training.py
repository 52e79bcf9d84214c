"""Training's replay and fit in one process against a Dask cluster (`fraud-train train --dask`).

    python -m benchmarks.measurements.cluster_training --data HISTORY --mode one-process
    python -m benchmarks.measurements.cluster_training --data DAYS_DIR --mode local:2

Prints one JSON record: the machine, the history, then per step its wall time (load and
check, replay, fit) and the peak memory (RSS) of every process that took part: this one
and, on a cluster, each worker. `--mode one-process` loads a file (or a directory's parts)
and replays it as `fraud-train train` does with one process (`--processes 2`: the card and
risk halves side by side, training's default on a large history); `local:N` checks and
replays on a LocalCluster of N workers and brings the table back, as `--dask local:N` does
when the fit stays local. The fit is LightGBM with the default booster for a fixed
`--rounds` (no early stopping, so both paths do the same work); on a cluster it is timed
both ways: locally on the gathered table, and with `lightgbm.dask` on the workers. Run each
mode in a fresh process, so that each peak is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.probes.machine import describe_run
from service.features import FeatureConfig
from training.config import BoosterConfig, SplitConfig, TrainSettings
from training.data.cluster import open_client, parse_cluster, persist_with_progress
from training.data.cluster_history import check_on_cluster, gather_table, replayed_frame
from training.data.dataset import FeatureTable, load_history, table_of
from training.data.replay import replay_features
from training.data.split import NANOS_PER_DAY, split_periods
from training.model_build.booster import fit_booster
from training.model_build.candidate import FEATURE_NAMES
from training.model_build.cluster_fit import fit_rounds_on_cluster

_MIB = 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="history file or directory")
    parser.add_argument("--mode", required=True, help="one-process, or local:N")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--rounds", type=int, default=100, help="trees fitted (100)")
    args = parser.parse_args()
    booster = BoosterConfig(max_rounds=args.rounds)
    if args.mode == "one-process":
        steps = _one_process(args.data, args.processes, booster)
    else:
        steps = _on_cluster(args.data, args.mode, booster)
    record = {
        **describe_run(),
        "benchmark": "cluster_training",
        "data": str(args.data),
        "mode": args.mode if args.mode != "one-process" else f"one process x{args.processes}",
        "rounds": args.rounds,
        **steps,
        "peak_rss_mib": {"this process": _peak_rss_mib(), **steps.pop("worker_peaks", {})},
    }
    print(json.dumps(record, indent=2))


def _one_process(data: Path, processes: int, booster: BoosterConfig) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = load_history(data)
    loaded_at = time.perf_counter()
    features = replay_features(loaded.frame, FeatureConfig(), processes=processes)
    replayed_at = time.perf_counter()
    table = table_of(loaded, features)
    fit_seconds = _local_fit(table, booster)
    return {
        "transactions": len(table),
        "load_seconds": round(loaded_at - started, 1),
        "replay_seconds": round(replayed_at - loaded_at, 1),
        "fit_seconds": round(fit_seconds, 1),
    }


def _on_cluster(data: Path, mode: str, booster: BoosterConfig) -> dict[str, Any]:
    started = time.perf_counter()
    with open_client(parse_cluster(mode)) as client:
        up_at = time.perf_counter()
        history = check_on_cluster(client, data)
        checked_at = time.perf_counter()
        # Kept on the workers: the table comes back, and the cluster fit reads it there.
        (replayed,) = persist_with_progress(
            client, [replayed_frame(history, FeatureConfig())], progress=False
        )
        table = gather_table(client, history, replayed)
        replayed_at = time.perf_counter()
        local_fit = _local_fit(table, booster)
        train = _training_rows(replayed, table)
        dask_started = time.perf_counter()
        fit_rounds_on_cluster(client, train, TrainSettings(booster=booster), booster.max_rounds)
        dask_fit = time.perf_counter() - dask_started
        peaks = client.run(_peak_rss_mib)
    return {
        "transactions": len(table),
        "cluster_start_seconds": round(up_at - started, 1),
        "load_seconds": round(checked_at - up_at, 1),
        "replay_seconds": round(replayed_at - checked_at, 1),
        "fit_seconds": round(local_fit, 1),
        "dask_fit_seconds": round(dask_fit, 1),
        "worker_peaks": {f"worker {index}": peak for index, peak in enumerate(peaks.values())},
    }


def _local_fit(table: FeatureTable, booster: BoosterConfig) -> float:
    periods = split_periods(table.days, table.labels, SplitConfig(), 7.0)
    started = time.perf_counter()
    fit_booster(
        booster, FEATURE_NAMES, (table.features[periods.train], table.labels[periods.train])
    )
    return time.perf_counter() - started


def _training_rows(replayed: Any, table: FeatureTable) -> Any:
    """The same training period as `_local_fit`, on the cluster."""
    periods = split_periods(table.days, table.labels, SplitConfig(), 7.0)
    start, end = periods.train_days
    day = replayed["timestamp_ns"] // NANOS_PER_DAY
    return replayed[(day >= start) & (day < end)]


def _peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _MIB)


if __name__ == "__main__":
    main()
