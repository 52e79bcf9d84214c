"""What the scoring path costs the server's CPU per transaction, apart from any gRPC traffic.

    python -m benchmarks.measurements.scoring_path --registry DIR [--transactions N]

Builds the scorer as `service.app.create_app` does (decision metrics, drift statistics, the
challenger's shadow, the decision log in a temporary directory, sampled stage timings) over
the registry's champion, scores `--warmup` transactions with unique ids, cards and
terminals cycling through fixed pools, then times the next `--transactions`: process CPU
(the scoring thread and the decision log's writer thread) and wall time per transaction.
What it leaves out is what the gRPC floors measure: the transport, the servicer and the
interceptor.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from service.app import build_scorer, champion_feature_config
from service.config.settings import ServeSettings
from service.core.domain import RawTransaction
from service.core.scoring import Scorer
from service.features import FeatureEngine
from service.model.loading import LoadedModel
from service.model.shadow import ShadowScorer
from service.model.store import ModelStore
from service.observability.drift import DriftCollector
from service.observability.logs import RequestLogSampler
from service.records.decision_writer import DecisionLogWriter

START_NS = 1_704_067_200 * 1_000_000_000  # 2024-01-01T00:00:00Z
CARDS = 5_000
TERMINALS = 3_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--transactions", type=int, default=40_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    args = parser.parse_args()
    cpu, wall = measure(args.registry, args.transactions, args.warmup)
    print(
        f"scoring path: cpu {cpu / args.transactions * 1e6:.1f} µs/transaction, "
        f"wall {wall / args.transactions * 1e6:.1f} µs/transaction"
    )


def measure(registry: Path, transactions: int, warmup: int) -> tuple[float, float]:
    """Process CPU seconds and wall seconds for scoring `transactions` after `warmup`."""
    with tempfile.TemporaryDirectory() as directory:
        scorer, log = _production_scorer(registry, Path(directory))
        requests = _requests(warmup + transactions)
        for _ in range(warmup):
            scorer.score(next(requests))
        batch = [next(requests) for _ in range(transactions)]
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for raw in batch:
            scorer.score(raw)
        wall = time.perf_counter() - started
        log.close()  # the writer's CPU for the timed records counts too
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, wall


def _production_scorer(
    registry: Path, log_directory: Path
) -> tuple[Scorer[LoadedModel], DecisionLogWriter]:
    config = champion_feature_config(registry)
    store = ModelStore(registry, feature_config=config)
    store.load_champion()
    shadow = ShadowScorer(
        store, asyncio.new_event_loop().call_soon, log_sampler=RequestLogSampler(0.0)
    )
    log = DecisionLogWriter(log_directory, feature_config=config)
    scorer = build_scorer(
        ServeSettings(registry=registry),
        FeatureEngine(config),
        store,
        answer_listeners=[DriftCollector(), shadow, log],
    )
    return scorer, log


def _requests(count: int) -> Iterator[RawTransaction]:
    """Unique transaction ids (a repeat would be answered from the idempotency cache)."""
    for number in range(count):
        yield RawTransaction(
            transaction_id=f"tx-{number}",
            card_id=f"card-{number % CARDS}",
            terminal_id=f"term-{number % TERMINALS}",
            merchant_id=f"merchant-{number % 200}",
            amount_minor=1_000 + number % 90_000,
            currency="EUR",
            timestamp_ns=START_NS + number * 1_000_000_000,
            mcc=5411,
            entry_mode=1 + number % 5,
            card_present=number % 3 != 0,
            country="FR",
        )


if __name__ == "__main__":
    main()
