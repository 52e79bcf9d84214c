"""Server memory for 30 days of feature state: resident memory grown per card.

    python -m benchmarks.measurements.memory --registry models --data data/transactions.csv [--days
    30]

In a fresh process (the figure is this process's own growth, so nothing else may have
run in it), a `service.features.FeatureEngine` configured as the champion's manifest says
takes the first `days` days of a history, each row converted as the server converts a
request (`request_from_row`, then the gRPC adapter's and the validator's conversions), and
each fraud's outcome reported right after its swipe. Resident memory (psutil) is read
after a collection before the first row and after the last; the growth over the cards
tracked is the bytes per card. The history is streamed row by row, so that it is not in
the figure; what the engine keeps is: every card's and terminal's windows, and each
transaction an outcome can still reach (the label delay plus the longest window, so all
of 30 days).

Each transaction's record is in the figure (without an answer: no model scores here); the
model and gRPC's buffers are not. Prints one JSON record (`MemoryFigures`).
"""

from __future__ import annotations

import argparse
import csv
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.load.history_requests import request_from_row
from benchmarks.measurements.fresh_process import add_record_option, run_fresh, write_record
from service.config.settings import DEVELOPMENT_CARD_TOKEN_KEY
from service.core.card_tokens import CardTokenizer
from service.core.validation import ScoringLimits, to_transaction
from service.features import EntityKind, FeatureConfig, FeatureEngine, MemoryStore
from service.grpc_api.converters import to_raw_transaction
from service.model.registry import Registry

DAY_SECONDS = 86_400
TARGET_BYTES = 500 * 1024 * 1024
# Ample for 30 days of the default history (about 300,000 rows at some 50 µs each).
FRESH_TIMEOUT = 600.0


@dataclass(frozen=True)
class MemoryFigures:
    """Feature state built from `days` days of history, and the memory it took."""

    days: float
    transactions: int
    cards: int
    terminals: int
    rss_before_bytes: int
    rss_after_bytes: int
    growth_bytes: int
    bytes_per_card: float
    target_bytes: int
    within_target: bool


def champion_feature_config(registry: Path) -> FeatureConfig:
    """The feature config of the registry's champion; ValueError if there is none."""
    champion = Registry(registry).champion()
    if champion is None:
        raise ValueError(f"{registry} has no champion: train a model first")
    return champion[1].feature_config


def measure_memory(config: FeatureConfig, history: Path, days: float) -> MemoryFigures:
    """Feed the first `days` days of `history` to a fresh engine; what its state took."""
    store = MemoryStore(horizon_seconds=config.state_horizon_seconds)
    engine = FeatureEngine(config, store)
    tokenizer = CardTokenizer(DEVELOPMENT_CARD_TOKEN_KEY.encode())
    limits = ScoringLimits()
    gc.collect()
    before = psutil.Process().memory_info().rss
    transactions = 0
    end: float | None = None
    with history.open(newline="") as file:
        for row in csv.DictReader(file):
            raw = to_raw_transaction(request_from_row(row))
            tx = to_transaction(raw, limits=limits, tokenizer=tokenizer)
            end = tx.timestamp + days * DAY_SECONDS if end is None else end
            if tx.timestamp >= end:
                break
            engine.observe(tx)
            if row["is_fraud"] == "1":
                engine.report_outcome(tx.transaction_id, True, tx.timestamp)
            transactions += 1
    gc.collect()
    after = psutil.Process().memory_info().rss
    return _figures(store, days, transactions, before, after)


def _figures(
    store: MemoryStore, days: float, transactions: int, before: int, after: int
) -> MemoryFigures:
    growth = after - before
    cards = store.records(EntityKind.CARD)
    return MemoryFigures(
        days=days,
        transactions=transactions,
        cards=cards,
        terminals=store.records(EntityKind.TERMINAL),
        rss_before_bytes=before,
        rss_after_bytes=after,
        growth_bytes=growth,
        bytes_per_card=round(growth / cards, 1) if cards else 0.0,
        target_bytes=TARGET_BYTES,
        within_target=growth < TARGET_BYTES,
    )


def measure_in_fresh_process(registry: Path, history: Path, days: float) -> MemoryFigures:
    """`measure_memory` in a new Python process (this one has loaded other things)."""
    record = run_fresh(
        "benchmarks.measurements.memory",
        ["--registry", str(registry), "--data", str(history), "--days", str(days)],
        timeout=FRESH_TIMEOUT,
        what="the memory measurement",
    )
    return MemoryFigures(**record)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure in this (fresh) process and write the JSON record."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.measurements.memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--registry", type=Path, required=True, help="registry with a champion")
    parser.add_argument("--data", type=Path, required=True, help="history CSV, in time order")
    parser.add_argument("--days", type=float, default=30.0, help="days of history (30)")
    add_record_option(parser)
    args = parser.parse_args(argv)
    figures = measure_memory(champion_feature_config(args.registry), args.data, args.days)
    write_record(figures, args.record)


if __name__ == "__main__":
    main()
