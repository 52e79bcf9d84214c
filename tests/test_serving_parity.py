"""Serving parity: the server scores a history exactly as `fraud-train evaluate` does.

A history the model never saw (tests/parity_history.py) is scored twice: offline by the
real `fraud-train evaluate` command (once for the session), and online by a real gRPC
server fed the way a backend feeds it (`tests.parity_feed`), each fraud label reported
through ReportOutcome at the moment it becomes known. Online means: one in-process server
on each feature state backend, fed through one ScoreStream; two worker processes sharing
one LMDB store, called over several connections, with ScoreStream and ScoreBatch calls in
turn; and a server killed with SIGKILL in the middle of a call, then started again on its
store.
"""

from __future__ import annotations

import json
import operator
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from benchmarks.servers.launch import free_ports
from service.app import build_scorer
from service.config.settings import (
    BudgetSettings,
    ServerSettings,
    ServeSettings,
    StateBackend,
    StateSettings,
)
from service.features import FeatureConfig, FeatureEngine
from service.model.store import ModelStore
from service.records.schema import segment_glob
from service.state.opening import open_state
from tests.conftest import TrainedModel
from tests.parity_feed import (
    Batch,
    OneStream,
    RotatingChannels,
    feed,
    kill_while_scoring,
    model_scores,
    retry_one_by_one,
    split,
)
from tests.parity_history import OfflineRun
from tests.server_process import ServerProcess
from tests.service.loopback import LoopbackServer

TOLERANCE = 1e-6
# Defaults but for the budget: a request falling back on a busy machine would prove nothing.
SETTINGS = ServeSettings(
    server=ServerSettings(host="127.0.0.1", port=0),
    budget=BudgetSettings(server_budget_ms=60_000),
)
SERVER_PROCESS_ENVIRONMENT = {
    "FRAUD_STATE__BACKEND": "lmdb",  # in tmp_path: the `start_process` fixture sets the path
    "FRAUD_BUDGET__SERVER_BUDGET_MS": "60000",
}
CHUNK_SIZE = 16
# With 16 connections, the chance that SO_REUSEPORT hands every one to the same of two
# workers is 2 / 2**16.
CONNECTIONS = 16


@pytest.fixture(scope="module")
def champion(trained_model: TrainedModel, champion_config: FeatureConfig) -> ModelStore:
    store = ModelStore(trained_model.registry, feature_config=champion_config)
    store.load_champion()
    return store


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_server_scores_equal_evaluate_scores_with_outcomes_reported_as_they_become_known(
    backend: StateBackend,
    champion: ModelStore,
    champion_config: FeatureConfig,
    history_batches: list[Batch],
    offline: OfflineRun,
    tmp_path: Path,
) -> None:
    """On either feature state backend, every score of one server fed through one stream
    matches `fraud-train evaluate` within 1e-6, transactions waiting together having been
    scored together (batches of more than one), and outcomes mattered."""
    state = StateSettings(backend=backend, path=tmp_path / "state")
    batches_before = _stream_batches()
    with _server(champion, champion_config, state) as target, OneStream(target) as link:
        online = feed(link, history_batches)
    batches, in_batches_of_one, scored = map(operator.sub, _stream_batches(), batches_before)
    # A prefix (about 13 days: labels arrive after 7) scores as it does in the full run.
    in_order = [request for batch in history_batches for request in batch.requests]
    without_outcomes = [Batch(requests=in_order[: len(in_order) // 3])]
    state = StateSettings(backend=backend, path=tmp_path / "blind")
    with _server(champion, champion_config, state) as target, OneStream(target) as link:
        blind = feed(link, without_outcomes)

    assert online.keys() == offline.scores.keys()
    _assert_match(online, offline.scores)
    assert scored == len(online)
    assert in_batches_of_one < batches, "some transactions were scored in batches"
    reported = sum(len(batch.outcomes) for batch in history_batches)
    changed = sum(abs(online[tx] - blind[tx]) > TOLERANCE for tx in blind)
    assert reported > 100, "the history holds frauds whose labels arrive within it"
    assert changed > 100, "reported outcomes change the risk features of later transactions"


def test_two_workers_on_one_store_score_as_evaluate_whichever_answers(
    trained_model: TrainedModel,
    history_batches: list[Batch],
    offline: OfflineRun,
    start_process: Any,
    tmp_path: Path,
) -> None:
    """`fraud-serve --workers 2` on LMDB, called over 16 connections in turn, a few
    transactions per call, ScoreStream and ScoreBatch calls in turn: both workers answer,
    each transaction is decided once, and every score matches `fraud-train evaluate`
    within 1e-6."""
    port = free_ports(1)
    process = _start_on_lmdb(start_process, trained_model, port, "--workers", "2")
    worker_pids = set(process.wait_for("supervising")["pids"])
    for _ in worker_pids:
        process.wait_for("serving")
    with RotatingChannels(f"127.0.0.1:{port}", CONNECTIONS) as link:
        online = feed(link, split(history_batches, CHUNK_SIZE))
    process.signal(signal.SIGTERM)
    assert process.wait() == 0, process.text()
    assert min(link.calls["ScoreStream"], link.calls["ScoreBatch"]) > 100, link.calls

    assert online.keys() == offline.scores.keys()
    _assert_match(online, offline.scores)
    decided = _decisions_by_process(tmp_path / "decisions")
    assert decided.keys() == worker_pids, {pid: len(ids) for pid, ids in decided.items()}
    counts = Counter(tx for ids in decided.values() for tx in ids)
    assert counts.keys() == online.keys()
    assert max(counts.values()) == 1, "no transaction is decided by both workers"


def test_server_killed_mid_call_and_restarted_on_its_state_scores_as_evaluate(
    trained_model: TrainedModel,
    history_batches: list[Batch],
    offline: OfflineRun,
    start_process: Any,
) -> None:
    """A server SIGKILLed halfway through the history with a call in flight, then started
    again on the same LMDB state, the client retrying that call's transactions one by one:
    every other transaction scores as the uninterrupted `fraud-train evaluate` run within
    1e-6, and so does any answer the interrupted ones got."""
    chunks = list(split(history_batches, CHUNK_SIZE))
    # The first full chunk from halfway on: the more transactions in flight, the likelier
    # the kill lands between counting one and answering it, as well as before counting.
    halfway = len(chunks) // 2
    killed_at = next(at for at in range(halfway, len(chunks)) if _is_full(chunks[at]))
    interrupted = chunks[killed_at]
    first = _start_on_lmdb(start_process, trained_model, 0)
    with RotatingChannels(_target(first), CONNECTIONS) as link:
        online = feed(link, chunks[:killed_at])
        for outcome in interrupted.outcomes:
            link.report(outcome)
        answered = kill_while_scoring(first, link.next_stub(), interrupted.requests)
    assert first.process.returncode == -signal.SIGKILL
    second = _start_on_lmdb(start_process, trained_model, 0)  # the same state directory
    with RotatingChannels(_target(second), CONNECTIONS) as link:
        answered += retry_one_by_one(link, interrupted.requests)
        online |= feed(link, chunks[killed_at + 1 :])

    in_flight = {request.transaction.transaction_id for request in interrupted.requests}
    assert online.keys() == offline.scores.keys() - in_flight
    _assert_match(online | model_scores(answered), offline.scores)


@contextmanager
def _server(store: ModelStore, config: FeatureConfig, state: StateSettings) -> Iterator[str]:
    """A loopback server with the loaded champion and fresh feature state in the store
    `state` names; yields its target."""
    opened = open_state(state, config)
    try:
        scorer = build_scorer(SETTINGS, FeatureEngine(config, opened), store)
        server = LoopbackServer(SETTINGS, scorer)
        try:
            yield server.target
        finally:
            server.stop()
    finally:
        opened.close()


def _start_on_lmdb(
    start_process: Any, trained_model: TrainedModel, port: int, *extra: str
) -> ServerProcess:
    """`python -m service` serving the champion on `port` (0: any), its state in LMDB."""
    arguments = [
        "--registry", str(trained_model.registry),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--metrics-port", "0",
        *extra,
    ]  # fmt: skip
    process: ServerProcess = start_process(*arguments, environment=SERVER_PROCESS_ENVIRONMENT)
    return process


def _target(process: ServerProcess) -> str:
    """The address of a one-worker server process, once it serves."""
    return f"127.0.0.1:{process.wait_for('serving')['port']}"


def _assert_match(online: dict[str, float], expected: dict[str, float]) -> None:
    """Every online score is the offline one within TOLERANCE."""
    mismatches = {
        tx: (score, expected.get(tx))
        for tx, score in online.items()
        if tx not in expected or abs(score - expected[tx]) > TOLERANCE
    }
    assert not mismatches, f"{len(mismatches)} scores differ, e.g. {list(mismatches.items())[:5]}"


def _stream_batches() -> tuple[float, float, float]:
    """ScoreStream's batches so far in this process, those of one transaction, and the
    transactions in them (`fraud_stream_batch_size`)."""
    name = "fraud_stream_batch_size"
    count = REGISTRY.get_sample_value(f"{name}_count") or 0.0
    ones = REGISTRY.get_sample_value(f"{name}_bucket", {"le": "1.0"}) or 0.0
    return count, ones, REGISTRY.get_sample_value(f"{name}_sum") or 0.0


def _is_full(chunk: Batch) -> bool:
    return len(chunk.requests) == CHUNK_SIZE


def _decisions_by_process(directory: Path) -> dict[int, list[str]]:
    """The transaction ids in each process's decision log segments, by process id."""
    decided: dict[int, list[str]] = {}
    for segment in directory.glob(segment_glob("decisions")):
        pid = int(segment.stem.split("-")[-2])  # decisions-<opened>-<host>-<pid>-<seq>
        lines = segment.read_text(encoding="utf-8").splitlines()
        decided.setdefault(pid, []).extend(json.loads(line)["transaction_id"] for line in lines)
    return decided
