"""How fast training replays a history through the feature engine.

    python -m benchmarks.measurements.replay_speed --data data/transactions.csv [--repeat 3]
    [--processes 1|2]

Prints one JSON record with the machine, commit, settings and timings: loading and
validating the file, then replaying it (the same `FeatureEngine` the server runs), in
seconds and in microseconds per transaction, plus the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from benchmarks.probes.machine import describe_run
from service.features import FeatureConfig
from training.data.loading import load_transactions
from training.data.replay import replay_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="history, CSV or Parquet")
    parser.add_argument("--repeat", type=int, default=3, help="replays to time (3)")
    parser.add_argument(
        "--processes", type=int, choices=(1, 2), help="1 or 2 (default: as training decides)"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    frame = load_transactions(args.data).frame
    load_seconds = time.perf_counter() - started
    replays = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        replay_features(frame, FeatureConfig(), processes=args.processes)
        replays.append(time.perf_counter() - started)
    best = min(replays)
    record = {
        **describe_run(),
        "benchmark": "replay",
        "data": args.data.name,
        "transactions": len(frame),
        "processes": args.processes or "auto",
        "load_seconds": round(load_seconds, 2),
        "replay_seconds": [round(seconds, 2) for seconds in replays],
        "replay_us_per_transaction_best": round(best / len(frame) * 1e6, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
