"""Retrain's reading of months of decision and outcome logs: JSON lines against Parquet
twins, in one process against a Dask cluster (`fraud-train retrain [--dask local:N]`).

    python -m benchmarks.measurements.retrain_logs generate --out LOGS --records 2000000
    python -m benchmarks.measurements.retrain_logs read --logs LOGS --mode one-process
    python -m benchmarks.measurements.retrain_logs read --logs LOGS --mode local:2
    python -m benchmarks.measurements.retrain_logs compact --logs LOGS
    (then both reads again: the twins are read now)

`generate` writes synthetic decisions in the server's line format (33 features, random
values, one segment of `--per-segment` lines per day, as a server at about one decision a
second per segment rotates them) and a fraud report for one in a hundred. `read` reads both
logs and labels them as `fraud-train retrain` does before it trains (`read_decision_log`,
`read_outcomes`, `label_log`) and prints one JSON record: the time of each step and the
peak RSS of this process and, on a cluster, of each worker. Run each in a fresh process, so
that each peak is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.probes.machine import describe_run
from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from service.records.schema import segment_name
from training.data.cluster import open_client, parse_cluster
from training.retraining.cluster_logs import reading_on_cluster
from training.retraining.feedback import (
    SegmentMap,
    map_here,
    newest_time_ns,
    read_decision_log,
    read_outcomes,
)
from training.retraining.log_compaction import compact
from training.retraining.retrain_data import label_log

_MIB = 1024  # ru_maxrss is in KiB on Linux
_START = datetime(2026, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate")
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--records", type=int, required=True)
    generate.add_argument("--per-segment", type=int, default=100_000)
    read = commands.add_parser("read")
    read.add_argument("--logs", type=Path, required=True)
    read.add_argument("--mode", required=True, help="one-process, or local:N")
    compacting = commands.add_parser("compact")
    compacting.add_argument("--logs", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "generate":
        record = _generate(args.out, args.records, args.per_segment)
    elif args.command == "compact":
        record = _compact(args.logs)
    else:
        record = _read(args.logs, args.mode)
    print(json.dumps({**describe_run(), "benchmark": "retrain_logs", **record}, indent=2))


def _generate(out: Path, records: int, per_segment: int) -> dict[str, Any]:
    random = np.random.default_rng(11)
    decisions, outcomes = out / "decisions", out / "outcomes"
    decisions.mkdir(parents=True, mode=0o700)
    outcomes.mkdir(parents=True, mode=0o700)
    started = time.monotonic()
    for segment, first in enumerate(range(0, records, per_segment)):
        count = min(per_segment, records - first)
        day = _START + timedelta(days=segment)
        opened = day.timestamp() + 1
        lines, reports = [], []
        features = random.normal(size=(count, len(FEATURES))).astype(np.float32)
        for row in range(count):
            number = first + row
            event = day + timedelta(seconds=row * 86_000 / count)
            line = _decision(number, event, features[row].tolist(), random.random())
            lines.append(orjson.dumps(line))
            if number % 100 == 0:
                at = (event + timedelta(days=2)).isoformat()
                report = {"transaction_id": line["transaction_id"], "is_fraud": True,
                          "reported_at": at, "received_at": at}  # fmt: skip
                reports.append(orjson.dumps(report))
        (decisions / segment_name("decisions", opened, 1, segment, "bench")).write_bytes(
            b"\n".join(lines) + b"\n"
        )
        (outcomes / segment_name("outcomes", opened, 1, segment, "bench")).write_bytes(
            b"\n".join(reports) + b"\n"
        )
    return {
        "step": "generate",
        "records": records,
        "decision_bytes": _bytes(decisions, "*.jsonl"),
        "outcome_bytes": _bytes(outcomes, "*.jsonl"),
        "seconds": round(time.monotonic() - started, 1),
    }


def _decision(number: int, event: datetime, vector: list[float], score: float) -> dict[str, Any]:
    return {
        "transaction_id": f"tx-{number}",
        "event_time": event.isoformat(timespec="microseconds"),
        "card": f"{number % 50_000:064x}",
        "terminal_id": f"T-{number % 10_000}",
        "merchant_id": f"M-{number % 2_000}",
        "amount": round(score * 500, 2),
        "currency": "EUR",
        "mcc": 5411,
        "entry_mode": number % 4,
        "card_present": bool(number % 2),
        "country": "FR",
        "score": score,
        "decision": "DECLINE" if score > 0.99 else "APPROVE",
        "source": "MODEL",
        "fallback_reason": "",
        "model_version": "20260101T000000Z-00000000",
        "feature_engine_version": FEATURE_ENGINE_VERSION,
        "feature_config": "",
        "features": vector,
        "logged_at": event.isoformat(),
    }


def _compact(logs: Path) -> dict[str, Any]:
    steps = {}
    for kind in ("decisions", "outcomes"):
        done = compact(logs / kind, kind, feature_count=len(FEATURES))
        steps[kind] = {
            "twins": done.written,
            "json_bytes": done.source_bytes,
            "twin_bytes": done.twin_bytes,
            "seconds": round(done.seconds, 1),
        }
    return {"step": "compact", **steps, "peak_rss_mib": {"this process": _peak_rss_mib()}}


def _read(logs: Path, mode: str) -> dict[str, Any]:
    twins = len(list((logs / "decisions").glob("*.parquet")))
    with _reading(mode) as (map_segments, workers_peak):
        started = time.monotonic()
        decisions = read_decision_log(
            logs / "decisions", feature_count=len(FEATURES), map_segments=map_segments
        )
        read_at = time.monotonic()
        outcomes = read_outcomes(logs / "outcomes", map_segments=map_segments)
        outcomes_at = time.monotonic()
        labelled = label_log(
            decisions,
            outcomes,
            as_of_ns=newest_time_ns(decisions, outcomes),
            feature_config=FeatureConfig(),
            silent_declines="exclude",
        )
        labelled_at = time.monotonic()
        peaks = workers_peak()
    return {
        "step": "read",
        "mode": mode,
        "decision_segments": decisions.segments,
        "twins_present": twins,
        "decisions": len(decisions),
        "outcomes": len(outcomes.frame),
        "usable_rows": len(labelled),
        "seconds": {
            "decisions": round(read_at - started, 1),
            "outcomes": round(outcomes_at - read_at, 1),
            "labels": round(labelled_at - outcomes_at, 1),
        },
        "peak_rss_mib": {"this process": _peak_rss_mib(), **peaks},
    }


@contextmanager
def _reading(mode: str) -> Iterator[tuple[SegmentMap, Any]]:
    if mode == "one-process":
        yield map_here, dict
        return
    with open_client(parse_cluster(mode)) as client:

        def workers_peak() -> dict[str, int]:
            peaks: dict[str, int] = client.run(_peak_rss_mib)
            return {f"worker {index}": peak for index, peak in enumerate(peaks.values())}

        yield reading_on_cluster(client).map_segments, workers_peak


def _bytes(directory: Path, pattern: str) -> int:
    return sum(path.stat().st_size for path in directory.glob(pattern))


def _peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _MIB)


if __name__ == "__main__":
    main()
