"""The feature state stays within its bound under fresh ids: resident memory (memory
backend) or file size (LMDB) after a flood of transactions whose card, terminal and
merchant ids are all new.

    python -m benchmarks.measurements.state_bound --backend lmdb --requests 500000 \
        --max-entities 20000 --max-transactions 20000

In a fresh process, each request goes through the scoring core as the server runs it
(validation, card tokenising, the state's admit and the answer kept for retries), with no
model loaded, so the fallback answers and only the state grows. The figures are read at
the half and at the end: a bounded state takes no more at the end than at the half.
Prints one JSON record (`BoundFigures`).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import psutil

from benchmarks.measurements.fresh_process import add_record_option, run_fresh, write_record
from service.app import build_scorer
from service.config.settings import ServeSettings, StateBackend, StateSettings
from service.core.domain import RawTransaction
from service.core.scoring import Scorer
from service.features import EntityKind, FeatureConfig, FeatureEngine
from service.model.loading import LoadedModel
from service.state.lmdb_store import LmdbStore
from service.state.opening import open_state

FRESH_TIMEOUT = 1_800.0
_T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
_SPACING_NS = 10**6  # a millisecond apart: 500,000 requests span under 9 minutes


@dataclass(frozen=True)
class BoundFigures:
    """What the state held and took at the half and at the end of the flood."""

    backend: str
    requests: int
    max_entities: int
    max_transactions: int
    seconds: float
    rss_start_bytes: int
    rss_half_bytes: int
    rss_end_bytes: int
    file_half_bytes: int
    file_end_bytes: int
    records_end: dict[str, int]
    evictions_capacity: int
    evictions_idle: int
    answers: dict[str, int]


class _NoModel:
    """A model source with nothing loaded: the fallback answers, the state still counts."""

    current: LoadedModel | None = None


def measure(
    backend: StateBackend, requests: int, max_entities: int, max_transactions: int, path: Path
) -> BoundFigures:
    """Send `requests` transactions of fresh ids through a scorer on the named backend."""
    config = FeatureConfig()
    settings = StateSettings(
        backend=backend,
        path=path,
        max_entities=max_entities,
        max_transactions=max_transactions,
        max_bytes=4 << 30,
    )
    store = open_state(settings, config)
    serve = ServeSettings(state=settings)
    scorer: Scorer[LoadedModel] = build_scorer(serve, FeatureEngine(config, store), _NoModel())
    answers: Counter[str] = Counter()
    process = psutil.Process()
    gc.collect()
    rss_start = process.memory_info().rss
    started = time.perf_counter()
    half: tuple[int, int] = (0, 0)
    for number in range(requests):
        if number == requests // 2:
            gc.collect()
            half = (process.memory_info().rss, _file_bytes(store))
        result = scorer.score(_fresh(number))
        answers[result.fallback_reason or "model"] += 1
    seconds = time.perf_counter() - started
    gc.collect()
    figures = BoundFigures(
        backend=backend,
        requests=requests,
        max_entities=max_entities,
        max_transactions=max_transactions,
        seconds=round(seconds, 1),
        rss_start_bytes=rss_start,
        rss_half_bytes=half[0],
        rss_end_bytes=process.memory_info().rss,
        file_half_bytes=half[1],
        file_end_bytes=_file_bytes(store),
        records_end={
            "cards": store.records(EntityKind.CARD),
            "terminals": store.records(EntityKind.TERMINAL),
            "merchants": store.records(EntityKind.MERCHANT),
            "transactions": store.records(None),
        },
        evictions_capacity=store.evictions.capacity,
        evictions_idle=store.evictions.idle,
        answers=dict(answers),
    )
    store.close()
    return figures


def measure_in_fresh_process(
    backend: StateBackend, requests: int, max_entities: int, max_transactions: int
) -> BoundFigures:
    """`measure` in a new Python process, its LMDB store in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="fraud-state-bound-") as directory:
        arguments = ["--backend", backend, "--requests", str(requests), "--path", directory]
        arguments += ["--max-entities", str(max_entities)]
        arguments += ["--max-transactions", str(max_transactions)]
        record = run_fresh(
            "benchmarks.measurements.state_bound",
            arguments,
            timeout=FRESH_TIMEOUT,
            what="the bound measurement",
        )
    return BoundFigures(**record)


def _fresh(number: int) -> RawTransaction:
    """A transaction whose card, terminal and merchant were never seen, as long ids as the
    default limits allow (128 characters), the worst case for the state's memory."""
    suffix = f"{number:012d}" + "x" * 110
    return RawTransaction(
        transaction_id=f"tx-{suffix}",
        card_id=f"card-{suffix}",
        terminal_id=f"term-{suffix}",
        merchant_id=f"mer-{suffix}",
        amount_minor=1_000 + number % 50_000,
        currency="EUR",
        timestamp_ns=_T0_NS + number * _SPACING_NS,
        mcc=5411,
        entry_mode=1,
        card_present=True,
        country="FR",
    )


def _file_bytes(store: object) -> int:
    return store.file_bytes() if isinstance(store, LmdbStore) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Measure in this (fresh) process and write the JSON record."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measurements.state_bound",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--backend", choices=get_args(StateBackend), default="lmdb")
    parser.add_argument("--requests", type=int, default=500_000)
    parser.add_argument("--max-entities", type=int, default=20_000)
    parser.add_argument("--max-transactions", type=int, default=20_000)
    parser.add_argument("--path", type=Path, default=Path("state-bound"), help="LMDB directory")
    add_record_option(parser)
    args = parser.parse_args(argv)
    figures = measure(
        args.backend, args.requests, args.max_entities, args.max_transactions, args.path
    )
    write_record(figures, args.record)


if __name__ == "__main__":
    main()
