"""What the scoring path costs the server's CPU per transaction, apart from any gRPC traffic.

    python -m benchmarks.measurements.scoring_path --registry DIR [--transactions N]
        [--state memory|lmdb|redis] [--state-url redis://HOST:PORT/DB]
        [--ids short|uuid | --data HISTORY.csv]

Builds the scorer and its listeners as `service.app.create_app` does (decision metrics, drift
statistics, the challenger's shadow, the decision log in a temporary directory, sampled
stage timings) over the registry's champion, scores `--warmup` transactions, then times the
next `--transactions`: process CPU (the scoring thread and the decision log's writer
thread) and wall time per transaction, and the share of answers flagged (REVIEW or
DECLINE), each of which is explained: an explanation costs several times the model's call,
so figures compare only at like shares.

The traffic is synthetic by default: unique ids, cards and terminals cycling through fixed
pools, one transaction a second. Its features drift as the windows fill, and so does its
flagged share (a sixth of the first 20,000 answers, most of the later ones with the
default model). `--data` sends the rows of a `fraud-train simulate` history instead, as
`fraud-bench` does (its ids, cards and times; a few percent flagged): the mix the server
is measured with. The feature state is in memory, in an LMDB store in the temporary
directory, or in the Redis at `--state-url` (`--state`, memory by default; empty the Redis
database between runs: it keeps the records). Synthetic ids are short (`tx-123`,
`card-45`: `--ids short`, the default) or UUIDs, as many callers send them (`--ids uuid`):
long ids are what the search for card numbers in every id pays for. What it leaves out is
what the gRPC floors measure: the transport, the servicer and the interceptor.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple, get_args

from benchmarks.load.traffic import load_history
from service.app import build_scorer, champion_feature_config, open_listeners
from service.config.settings import RecordLogSettings, ServeSettings, StateBackend, StateSettings
from service.core.domain import Decision, RawTransaction
from service.features import FeatureEngine
from service.features.engine import FEATURE_NAMES
from service.grpc_api.converters import to_raw_transaction
from service.model.rule_store import RuleStore
from service.model.store import ModelStore
from service.observability.rule_metrics import RuleHitMetrics
from service.state.opening import open_state

START_NS = 1_704_067_200 * 1_000_000_000  # 2024-01-01T00:00:00Z
CARDS = 5_000
TERMINALS = 3_000
IdShape = Literal["short", "uuid"]


class PathCost(NamedTuple):
    """One measurement: process CPU and wall seconds over the timed transactions, and the
    share of them flagged (REVIEW or DECLINE, so explained)."""

    cpu_seconds: float
    wall_seconds: float
    flagged_share: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--transactions", type=int, default=40_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--state", choices=get_args(StateBackend), default="memory")
    parser.add_argument("--state-url", default=StateSettings().url)
    traffic = parser.add_mutually_exclusive_group()
    traffic.add_argument("--ids", choices=get_args(IdShape), default="short")
    traffic.add_argument("--data", type=Path, help="a history CSV to send instead")
    args = parser.parse_args()
    cost = measure(
        args.registry,
        args.transactions,
        args.warmup,
        args.state,
        state_url=args.state_url,
        ids=args.ids,
        data=args.data,
    )
    shown = args.state
    if args.data is not None:
        shown += ", history rows"
    elif args.ids == "uuid":
        shown += ", uuid ids"
    print(
        f"scoring path ({shown}): cpu {cost.cpu_seconds / args.transactions * 1e6:.1f} "
        f"µs/transaction, wall {cost.wall_seconds / args.transactions * 1e6:.1f} "
        f"µs/transaction, {cost.flagged_share:.1%} flagged"
    )


def measure(
    registry: Path,
    transactions: int,
    warmup: int,
    state: StateBackend = "memory",
    *,
    state_url: str = StateSettings().url,
    ids: IdShape = "short",
    rules: bool = False,
    data: Path | None = None,
) -> PathCost:
    """Process CPU seconds and wall seconds for scoring `transactions` after `warmup`, and
    the share flagged; the rows of the history `data` when given, else synthetic traffic;
    with `rules`, the registry's lists and rule sets decide first, as in the server."""
    with tempfile.TemporaryDirectory() as directory:
        settings = ServeSettings(
            registry=registry,
            decision_log=RecordLogSettings(directory=Path(directory) / "decisions"),
            outcome_log=RecordLogSettings(directory=Path(directory) / "outcomes"),
            state=StateSettings(backend=state, path=Path(directory) / "state", url=state_url),
        )
        config = champion_feature_config(registry)
        store = ModelStore(registry, feature_config=config)
        store.load_champion()
        listeners = open_listeners(settings, store, config, asyncio.new_event_loop().call_soon)
        state_store = open_state(settings.state, config)
        rule_store = RuleStore(registry, FEATURE_NAMES) if rules else None
        if rule_store is not None:
            rule_store.refresh()
        scorer = build_scorer(
            settings,
            FeatureEngine(config, state_store),
            store,
            answer_listeners=[*listeners.answers, *([RuleHitMetrics()] if rules else [])],
            outcome_listeners=listeners.outcomes,
            rules=rule_store,
        )
        requests = (
            _requests(warmup + transactions, ids)
            if data is None
            else _history_requests(data, warmup + transactions)
        )
        for _ in range(warmup):
            scorer.score(next(requests))
        batch = [next(requests) for _ in range(transactions)]
        flagged = 0
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for raw in batch:
            flagged += scorer.score(raw).decision is not Decision.APPROVE
        wall = time.perf_counter() - started
        listeners.close()  # the writer's CPU for the timed records counts too
        after = resource.getrusage(resource.RUSAGE_SELF)
        state_store.close()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return PathCost(cpu, wall, flagged / transactions)


def _requests(count: int, ids: IdShape = "short") -> Iterator[RawTransaction]:
    """Unique transaction ids (a repeat would be answered from the idempotency cache)."""
    name = _uuid if ids == "uuid" else lambda prefix, number: f"{prefix}-{number}"
    for number in range(count):
        yield RawTransaction(
            transaction_id=name("tx", number),
            card_id=name("card", number % CARDS),
            terminal_id=name("term", number % TERMINALS),
            merchant_id=name("merchant", number % 200),
            amount_minor=1_000 + number % 90_000,
            currency="EUR",
            timestamp_ns=START_NS + number * 1_000_000_000,
            mcc=5411,
            entry_mode=1 + number % 5,
            card_present=number % 3 != 0,
            country="FR",
        )


def _history_requests(data: Path, count: int) -> Iterator[RawTransaction]:
    """The first `count` rows of the history CSV `data`, as `fraud-bench` sends them."""
    for request in load_history(data, count).requests:
        yield to_raw_transaction(request)


def _uuid(prefix: str, number: int) -> str:
    """A UUID of its own for each (prefix, number), the same in every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{prefix}-{number}"))


if __name__ == "__main__":
    main()
