"""What the decision log costs the server's CPU per record, apart from any gRPC traffic.

    python -m benchmarks.measurements.decision_log_cost on|off [--records N] [--rate R] [--dir DIR]

Queues N decisions (a transaction, 33 features, an answer) at R a second from this thread,
which otherwise sleeps, so that the process's CPU time is the loop's plus, with `on`, the
log's: its writer thread's encoding, writes and fsyncs. Prints user and system CPU per
record; the difference between `on` and `off` is the log's cost.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from service.core.domain import Decision, DecisionSource, EntryMode, ScoreResult, Transaction
from service.features import FeatureConfig
from service.records.decision_writer import DecisionLogWriter

FEATURE_COUNT = 33
PACE_EVERY = 20  # records between two sleeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("on", "off"))
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--dir", type=Path, help="where the log goes (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        user, system = _cost(args.mode == "on", Path(directory), args.records, args.rate)
    print(
        f"{args.mode}: user {user / args.records * 1e6:.1f} µs/record, "
        f"system {system / args.records * 1e6:.1f} µs/record"
    )


def _cost(logging: bool, directory: Path, records: int, rate: float) -> tuple[float, float]:
    tx = Transaction(
        "tx-123456", 1.7e9, "c1f0e3a1b2", "T-0042", 61.28, "M-17", 5411, EntryMode.CHIP,
        "EUR", "FR", True,
    )  # fmt: skip
    answer = ScoreResult(
        "tx-123456", 0.0123, Decision.APPROVE, (), "20261126T000000Z-3fa2c1d0",
        DecisionSource.MODEL, None,
    )  # fmt: skip
    log = DecisionLogWriter(directory, feature_config=FeatureConfig()) if logging else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for number in range(records):
        features = [61.28 * column / 7 for column in range(FEATURE_COUNT)]
        if log is not None:
            log.on_answer(tx, features, answer, None)
        if number % PACE_EVERY == PACE_EVERY - 1:
            time.sleep(max(0.0, started + (number + 1) / rate - time.perf_counter()))
    if log is not None:
        log.close()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


if __name__ == "__main__":
    main()
