"""`fraud-train state build` as a user runs it (real files, the real command), and seeded
parity: a server starting from a store seeded with a history's first days scores the rest
exactly as `fraud-train evaluate` scores them after as many warm-up days."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.app import build_scorer
from service.config.settings import BudgetSettings, ServerSettings, ServeSettings, StateSettings
from service.core.card_tokens import CardTokenizer
from service.features import EntityKind, FeatureConfig, FeatureEngine
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.model.store import ModelStore
from service.state.errors import StateMismatch
from service.state.opening import open_state
from service.state.redis_store import RedisStore
from tests.conftest import TrainedModel
from tests.parity_feed import Batch, OneStream, batches, feed, history_rows
from tests.service.loopback import LoopbackServer
from tests.training.cli.fraud_train import FRAUD_TRAIN, exit_code, run
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate

SEEDED_DAYS = 20
CARD_NUMBER = "4111111111111111"
TOLERANCE = 1e-6
EVALUATE_TIMEOUT = 300.0
# Defaults but for the budget: a request falling back on a busy machine would prove nothing.
SETTINGS = ServeSettings(
    server=ServerSettings(host="127.0.0.1", port=0),
    budget=BudgetSettings(server_budget_ms=60_000),
)


@pytest.fixture(scope="module")
def short_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 days of 60 cards: shorter than the state horizon, so the store keeps everything."""
    path = tmp_path_factory.mktemp("short") / "history.csv"
    write_transactions(simulate(SimulationParams(customers=60, terminals=120, days=10)), path)
    return path


@pytest.fixture(scope="module")
def unseen_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 days of 150 simulated cards, from another seed than the one the model trained on:
    10 days to score after the 20 seeded, a quarter of the swipes 300 cards and 40 days
    gave. The checks still count hundreds where they ask for more than 10 and 100: 435
    seed-period outcomes reported after it, and 323 of the first scored day's 323 scores
    changed by the seeding (640, and 635 of 637, at 300 cards and 40 days)."""
    path = tmp_path_factory.mktemp("unseen") / "history.csv"
    params = SimulationParams(customers=150, terminals=300, days=30, seed=5)
    write_transactions(simulate(params), path)
    return path


def _build(data: Path, state: Path | str, registry: Path, *more: str) -> list[str]:
    return ["state", "build", "--data", str(data), "--state", str(state),
            "--registry", str(registry), *more]  # fmt: skip


def test_build_publishes_the_history_with_the_champions_features(
    trained_model: TrainedModel,
    short_history: Path,
    champion_config: FeatureConfig,
    tmp_path: Path,
) -> None:
    """Every card, terminal, merchant and transaction is kept; the store opens with the
    champion's settings only; the summary says what was done."""
    state = tmp_path / "state"
    result = run(*_build(short_history, state, trained_model.registry))
    rows = history_rows(short_history)

    store = open_state(StateSettings(path=state), champion_config)
    try:
        for kind, column in (
            (EntityKind.CARD, "card_id"),
            (EntityKind.TERMINAL, "terminal_id"),
            (EntityKind.MERCHANT, "merchant_id"),
        ):
            assert store.records(kind) == len({row[column] for row in rows}), kind
        assert store.records() == len(rows)
    finally:
        store.close()
    other = champion_config.model_copy(update={"label_delay_days": 3.0})
    with pytest.raises(StateMismatch):
        open_state(StateSettings(path=state), other)
    assert [path.name for path in tmp_path.iterdir()] == ["state"]
    assert f"replayed {len(rows):,} transactions" in result.stderr
    assert trained_model.version in result.stderr


def test_an_existing_store_is_kept_unless_replace_is_given(
    trained_model: TrainedModel,
    short_history: Path,
    champion_config: FeatureConfig,
    tmp_path: Path,
) -> None:
    """A second build into the store exits 2 and leaves it be; --replace replaces it."""
    state = tmp_path / "state"
    first_half = tmp_path / "first_half.csv"
    rows = history_rows(short_history)
    _write_rows(first_half, rows[: len(rows) // 2])
    assert exit_code(_build(first_half, state, trained_model.registry)) == 0
    before = {path.name: path.read_bytes() for path in state.iterdir()}

    refused = run(*_build(short_history, state, trained_model.registry), check=False)
    assert refused.returncode == 2
    assert "is not empty" in refused.stderr
    assert "--replace" in refused.stderr
    assert {path.name: path.read_bytes() for path in state.iterdir()} == before

    assert exit_code(_build(short_history, state, trained_model.registry, "--replace")) == 0
    store = open_state(StateSettings(path=state), champion_config)
    try:
        assert store.records() == len(rows)
    finally:
        store.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first_half.csv", "state"]


def test_card_numbers_are_stored_under_the_token_the_servers_key_makes(
    trained_model: TrainedModel, champion_config: FeatureConfig, tmp_path: Path
) -> None:
    """With the key of --server-config, a card number is kept as the servers' token only."""
    key = "a card token key of the servers, long enough"
    server_config = tmp_path / "serve.toml"
    server_config.write_text(f'card_token_key = "{key}"\n')
    history = tmp_path / "cards.csv"
    history.write_text(
        "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud\n"
        f"a,2024-01-01T10:00:00Z,{CARD_NUMBER},t1,10.00,0\n"
    )
    state = tmp_path / "state"
    argv = _build(history, state, trained_model.registry, "--server-config", str(server_config))
    assert exit_code(argv) == 0

    store = open_state(StateSettings(path=state), champion_config)
    try:
        with store.session() as session:
            token = CardTokenizer(key.encode()).token(CARD_NUMBER)
            assert session.entity(EntityKind.CARD, token) is not None
            assert session.entity(EntityKind.CARD, CARD_NUMBER) is None
    finally:
        store.close()


def test_a_registry_without_a_champion_exits_2_saying_to_train_first(
    short_history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No champion, no feature settings: nothing is built."""
    (tmp_path / "models").mkdir()
    assert exit_code(_build(short_history, tmp_path / "state", tmp_path / "models")) == 2
    assert "train" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_a_url_other_than_redis_exits_2_without_its_password(
    short_history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a directory or a Redis URL is a state; another URL is refused, without
    repeating its password."""
    argv = _build(short_history, tmp_path / "state", tmp_path / "models")
    argv[argv.index("--state") + 1] = "https://user:s3cret@cache:6379/0"
    assert exit_code(argv) == 2
    message = capsys.readouterr().err
    assert "Redis" in message
    assert "s3cret" not in message


def test_a_redis_url_is_seeded_with_the_records_a_directory_gets(
    trained_model: TrainedModel,
    short_history: Path,
    champion_config: FeatureConfig,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--state redis://...` keeps, for every card, terminal, merchant and transaction of
    the history, the very record the LMDB store built from it keeps, under the servers'
    card tokens; a second build exits 2 leaving the state be, unless --replace."""
    key = "a card token key of the servers, long enough"
    server_config = tmp_path / "serve.toml"
    server_config.write_text(f'card_token_key = "{key}"\n')
    more = ("--server-config", str(server_config))
    directory = tmp_path / "state"
    assert exit_code(_build(short_history, directory, trained_model.registry, *more)) == 0
    assert exit_code(_build(short_history, redis_url, trained_model.registry, *more)) == 0
    assert "in use by the Redis server" in capsys.readouterr().err
    refused = exit_code(_build(short_history, redis_url, trained_model.registry, *more))
    assert refused == 2
    assert "--replace" in capsys.readouterr().err
    again = _build(short_history, redis_url, trained_model.registry, *more, "--replace")
    assert exit_code(again) == 0

    rows = history_rows(short_history)
    assert len(rows) > 1_000
    token = CardTokenizer(key.encode()).token
    ids = {
        EntityKind.CARD: {token(row["card_id"]) for row in rows},
        EntityKind.TERMINAL: {row["terminal_id"] for row in rows},
        EntityKind.MERCHANT: {row["merchant_id"] for row in rows if row["merchant_id"]},
    }
    in_lmdb = open_state(StateSettings(path=directory), champion_config)
    on_redis = open_state(StateSettings(backend="redis", url=redis_url), champion_config)
    assert isinstance(on_redis, RedisStore)
    try:
        with in_lmdb.session() as kept, on_redis.session() as seeded:
            for kind, keys in ids.items():
                for key in keys:
                    record = kept.entity(kind, key)
                    assert record is not None
                    assert seeded.entity(kind, key) == record, (kind, key)
            for row in rows:
                held = kept.transaction(row["transaction_id"])
                assert held is not None
                assert seeded.transaction(row["transaction_id"]) == held
        on_redis.census()
        assert on_redis.records() == len(rows)
        assert on_redis.records(EntityKind.CARD) == len(ids[EntityKind.CARD])
    finally:
        in_lmdb.close()
        on_redis.close()


def test_a_server_seeded_with_the_first_days_scores_the_rest_as_evaluate_does(
    trained_model: TrainedModel,
    unseen_history: Path,
    champion_config: FeatureConfig,
    tmp_path: Path,
) -> None:
    """Seed from the first 20 days of an unseen history, serve with that store, report each
    fraud when it falls due (seed-period frauds too): every score of the later days equals
    `evaluate --warmup-days 20` on the whole file within 1e-6, and seeding mattered."""
    rows = history_rows(unseen_history)
    start = min(datetime.fromisoformat(row["timestamp"]) for row in rows)
    cutoff = start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(SEEDED_DAYS)
    seeded_rows = [row for row in rows if datetime.fromisoformat(row["timestamp"]) < cutoff]
    seeded_ids = {row["transaction_id"] for row in seeded_rows}
    seed_file, state, scores_file = tmp_path / "seed.csv", tmp_path / "state", tmp_path / "s.csv"
    _write_rows(seed_file, seeded_rows)
    assert exit_code(_build(seed_file, state, trained_model.registry)) == 0
    label_delay = timedelta(seconds=champion_config.label_delay_seconds)
    fed = list(_from_cutoff(batches(rows, label_delay), cutoff))
    models = ModelStore(trained_model.registry, feature_config=champion_config)
    models.load_champion()

    with _evaluate(unseen_history, trained_model.registry, scores_file) as offline:
        store = open_state(StateSettings(path=state), champion_config)
        try:
            online = _serve(models, FeatureEngine(champion_config, store), fed)
        finally:
            store.close()
        first_scored_day = [r for r in _requests(fed) if _time(r) < cutoff + timedelta(days=1)]
        blind = _serve(models, FeatureEngine(champion_config), [Batch([], first_scored_day)])
        _, errors = offline.communicate(timeout=EVALUATE_TIMEOUT)

    assert offline.returncode == 0, errors
    expected = _read_scores(scores_file)
    assert online.keys() == expected.keys()
    assert not seeded_ids & expected.keys()
    mismatches = {
        tx: (online[tx], expected[tx])
        for tx in expected
        if abs(online[tx] - expected[tx]) > TOLERANCE
    }
    assert not mismatches, f"{len(mismatches)} scores differ, e.g. {list(mismatches.items())[:5]}"
    late_reports = [o for b in fed for o in b.outcomes if o.transaction_id in seeded_ids]
    assert len(late_reports) > 10, "frauds of the seed period are reported after it"
    changed = sum(abs(blind[tx] - expected[tx]) > TOLERANCE for tx in blind)
    assert changed > 100, "without the seeded state, the first scored day scores otherwise"


def _from_cutoff(whole: Iterable[Batch], cutoff: datetime) -> Iterator[Batch]:
    """The swipes from `cutoff` on, each after the outcomes that fell due from `cutoff` to
    it; swipes and outcomes before `cutoff` are the seeded store's."""
    carried = []
    for batch in whole:
        carried += [o for o in batch.outcomes if o.reported_at.ToDatetime(UTC) >= cutoff]
        requests = [request for request in batch.requests if _time(request) >= cutoff]
        if requests:
            yield Batch(carried, requests)
            carried = []


def _requests(fed: Iterable[Batch]) -> list[scoring_pb2.ScoreRequest]:
    return [request for batch in fed for request in batch.requests]


def _time(request: scoring_pb2.ScoreRequest) -> datetime:
    return request.transaction.timestamp.ToDatetime(UTC)


def _serve(models: ModelStore, engine: FeatureEngine, fed: list[Batch]) -> dict[str, float]:
    """Scores of `fed` from a loopback server over `engine`'s state, on one ScoreStream."""
    server = LoopbackServer(SETTINGS, build_scorer(SETTINGS, engine, models))
    try:
        with OneStream(server.target) as link:
            return feed(link, fed)
    finally:
        server.stop()


def _read_scores(path: Path) -> dict[str, float]:
    with path.open(newline="", encoding="utf-8") as file:
        return {row["transaction_id"]: float(row["score"]) for row in csv.DictReader(file)}


def _evaluate(history: Path, registry: Path, scores: Path) -> subprocess.Popen[str]:
    """`fraud-train evaluate` after the seeded days, running while the server is fed."""
    command = [
        FRAUD_TRAIN, "evaluate", "--data", str(history), "--registry", str(registry),
        "--warmup-days", str(SEEDED_DAYS), "--scores-out", str(scores),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
