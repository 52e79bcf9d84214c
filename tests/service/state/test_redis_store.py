"""The Redis store on a real redis-server: the same features as in memory, no update lost
between replicas, answers kept for retries, other settings refused, and a server that goes
away (or stalls) failing each transaction fast until it is back."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import ANY

import pytest
import redis
from structlog.testing import capture_logs

from benchmarks.servers.launch import free_ports
from service.app import build_scorer
from service.config.settings import ServeSettings, StateSettings
from service.core.domain import (
    Decision,
    DecisionSource,
    EarlierAttempt,
    FallbackReason,
    ScoreResult,
    Transaction,
)
from service.features import EntityKind, FeatureConfig, FeatureEngine, state_identity
from service.features.engine import StateContention
from service.features.risk_history import RiskRing
from service.features.state import NO_PLAN, SessionConflict, SessionPlan, StateSession
from service.features.tiles import apply_count
from service.model.loading import LoadedModel
from service.state.errors import StateMismatch, StateStoreError
from service.state.opening import open_state
from service.state.redis_store import RedisStore
from tests.factories import raw_transaction
from tests.redis_server import RedisServer
from tests.service.features.engine_io import DAY, DELAY, HOUR, T0, tx
from tests.service.state.shared_stores import (
    assert_a_retry_after_a_reopening_gets_the_first_answer,
    assert_as_in_memory_across_a_reopening,
    stream,
)

CONFIG = FeatureConfig()
TIMEOUT = 0.5  # seconds: generous, on a shared two-core machine
COUNTS = (6, 7, 8, 9, 16, 17)  # the card's counts (features by index)
DELAYED_COUNTS = (21, 23, 25, 27, 29, 31)  # the terminal's and merchant's


def _open(url: str, config: FeatureConfig = CONFIG, timeout: float = TIMEOUT) -> RedisStore:
    return RedisStore(
        url,
        identity=state_identity(config),
        horizon_seconds=config.state_horizon_seconds,
        timeout_seconds=timeout,
    )


def test_redis_computes_what_memory_computes_across_a_reopening(redis_url: str) -> None:
    """The same stream with outcomes gives identical vectors in memory and on Redis, even
    when the store is closed and another opened halfway (a restarted replica)."""
    assert_as_in_memory_across_a_reopening(CONFIG, lambda: _open(redis_url))


def test_outcomes_reported_late_count_from_their_report_time_as_in_memory(
    redis_url: str,
) -> None:
    """Outcomes reported days after their label delay wait in the terminal's and merchant's
    records; on Redis they are settled by each reader and kept settled only by the next
    outcome (a count on the server never settles them), yet every vector is the one memory
    gives, with more waiting than the record holds at once."""
    transactions = stream(3_000)
    memory = FeatureEngine(CONFIG)
    store = _open(redis_url)
    on_redis = FeatureEngine(CONFIG, store)
    lags = itertools.cycle([2 * DAY, 5 * HOUR, 11 * DAY, DAY / 2, 3 * DAY])
    for number, current in enumerate(transactions):
        assert on_redis.observe(current) == memory.observe(current), number
        if number % 3 == 0:  # known now, counted from a report time days ahead
            reported = current.timestamp + DELAY + next(lags)
            assert on_redis.report_outcome(current.transaction_id, True, reported)
            assert memory.report_outcome(current.transaction_id, True, reported)
    store.close()


class _CountingConflicts:
    """A store that counts the sessions another writer made it run again."""

    applies_swipes = True  # as the store it wraps: scored transactions counted by the server

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.conflicts = 0

    @contextmanager
    def session(self, plan: SessionPlan = NO_PLAN) -> Iterator[StateSession]:
        try:
            with self.store.session(plan) as session:
                yield session
        except SessionConflict:
            self.conflicts += 1
            raise

    def close(self) -> None:
        self.store.close()


def test_two_replicas_scoring_the_same_cards_at_once_lose_no_update(redis_url: str) -> None:
    """Two stores (two replicas) score the same three cards, two terminals and one merchant
    from two threads at once, as fast as they can: each transaction's records are read and
    updated by one script on the server, so none is refused or run again, every one is
    counted once, and the counts are what a serial run gives."""
    stream = [
        tx(number, T0 + number, card=f"card{number % 3}", terminal=f"term{number % 2}",
           merchant_id="m0")
        for number in range(600)
    ]  # fmt: skip
    replicas = [_CountingConflicts(_open(redis_url)) for _ in range(2)]
    counted: list[Transaction] = []
    refused: list[Transaction] = []

    def score(engine: FeatureEngine, share: list[Transaction]) -> None:
        for current in share:
            try:
                engine.observe(current)
            except StateContention:
                refused.append(current)
            else:
                counted.append(current)

    _at_once(replicas, stream, score)
    assert refused == []
    assert len(counted) == len(stream)
    serial = FeatureEngine(CONFIG)
    for current in sorted(counted, key=lambda kept: kept.timestamp):
        serial.observe(current)
    shared = FeatureEngine(CONFIG, replicas[0])
    for card in range(3):  # within the hour: every card's counts
        soon = tx(1_000 + card, T0 + HOUR / 2 + card, card=f"card{card}", terminal="term0")
        kept = sum(current.card_id == f"card{card}" for current in counted)
        features = shared.observe(soon)
        assert features[7] == kept + 1  # card_tx_count_1d: what was counted, and this one
        assert _at(features, COUNTS) == _at(serial.observe(soon), COUNTS)
    for card in range(3):  # a week and more on: the terminals' and the merchant's
        later = tx(2_000 + card, T0 + DELAY + 2 * DAY + card, card=f"card{card}", merchant_id="m0")
        features = shared.observe(later)
        assert _at(features, DELAYED_COUNTS) == _at(serial.observe(later), DELAYED_COUNTS)
    assert [replica.conflicts for replica in replicas] == [0, 0]
    for replica in replicas:
        replica.close()


def test_the_server_counts_a_terminal_exactly_as_python_does(redis_url: str) -> None:
    """The commit script's count (Lua, where the record lives) leaves the very bytes that
    `apply_count` leaves in Python, over counts late and early, within an hour, across days
    and past a whole ring; a count after the record went idle past the horizon keeps the
    record the session computed."""
    ring = RiskRing(CONFIG.label_delay_seconds)
    generator = random.Random(13)
    scratch, expected = ring.new_record(), ring.new_record()
    store = _open(redis_url)
    now = T0
    for number in range(400):
        now += generator.choice((0.0, 1.0, 59.0, HOUR, 3 * HOUR, DAY, 9 * DAY, 45 * DAY))
        late = generator.random() < 0.1
        counted = ring.observe(scratch, now - 2 * HOUR if late else now, [])
        apply_count(expected, counted)
        with store.session() as session:
            session.put_counted(EntityKind.TERMINAL, "t0", array("d", expected), counted)
        with store.session() as session:
            held = session.entity(EntityKind.TERMINAL, "t0")
        assert held is not None
        assert held.tobytes() == expected.tobytes(), number
    idle = ring.new_record()
    counted = ring.observe(idle, now + CONFIG.state_horizon_seconds + DAY, [])
    with store.session() as session:
        session.put_counted(EntityKind.TERMINAL, "t0", idle, counted)
    with store.session() as session:
        assert session.entity(EntityKind.TERMINAL, "t0") == idle
    store.close()


def test_a_counted_record_dropped_before_the_commit_makes_the_session_run_again(
    redis_url: str,
) -> None:
    """A session that read a terminal's record sends only the count; if the server dropped
    the record meanwhile (expired, or evicted at its memory bound), nothing of the session
    is written and it runs again, rather than count into nothing."""
    store = _open(redis_url)
    FeatureEngine(CONFIG, store).observe(tx(1, T0, card="c1", terminal="t0"))
    client = redis.Redis.from_url(redis_url)
    [terminal_key] = [key for key in client.scan_iter() if key.endswith(b":t:t0")]
    ring = RiskRing(CONFIG.label_delay_seconds)
    plan = SessionPlan(((EntityKind.CARD, "c2"), (EntityKind.TERMINAL, "t0")))

    def count_while_the_record_is_dropped() -> None:
        with store.session(plan) as session:
            record = session.entity(EntityKind.TERMINAL, "t0")
            assert record is not None
            counted = ring.observe(record, T0 + 60, [])
            session.put_entity(EntityKind.CARD, "c2", array("d", [T0 + 60.0]))
            session.put_counted(EntityKind.TERMINAL, "t0", record, counted)
            client.delete(terminal_key)

    with pytest.raises(SessionConflict):
        count_while_the_record_is_dropped()
    assert [key for key in client.scan_iter() if b":c:c2" in key or key == terminal_key] == []
    client.close()
    store.close()


def test_two_replicas_at_one_busy_merchant_never_conflict(redis_url: str) -> None:
    """Two replicas scoring distinct cards at one terminal and one merchant as fast as they
    can: the terminal's and merchant's counts are made where the records live, so no
    session runs again and every transaction is counted once, as a serial run counts them
    (with the compare-and-set of whole records, about 28% ran again and some were given
    up: benchmarks/RESULTS.md)."""
    stream = [
        tx(number, T0 + number, card=f"card{number}", terminal="term0", merchant_id="m0")
        for number in range(600)
    ]
    replicas = [_CountingConflicts(_open(redis_url)) for _ in range(2)]

    def score(engine: FeatureEngine, share: list[Transaction]) -> None:
        for current in share:
            engine.observe(current)

    _at_once(replicas, stream, score)
    assert [replica.conflicts for replica in replicas] == [0, 0]
    serial = FeatureEngine(CONFIG)
    for current in stream:
        serial.observe(current)
    later = tx(9_999, T0 + DELAY + 2 * DAY, card="card0", terminal="term0", merchant_id="m0")
    features = FeatureEngine(CONFIG, replicas[0]).observe(later)
    assert _at(features, DELAYED_COUNTS) == _at(serial.observe(later), DELAYED_COUNTS)
    assert features[DELAYED_COUNTS[-1]] == len(stream)  # the merchant's month: all of them
    for replica in replicas:
        replica.close()


def test_a_retry_after_a_restart_gets_the_stored_answer(redis_url: str) -> None:
    """A retry reaching a new store object (a restarted or another replica) gets the first
    answer, and counts nothing."""
    store = assert_a_retry_after_a_reopening_gets_the_first_answer(CONFIG, lambda: _open(redis_url))
    store.census()
    assert [store.records(kind) for kind in (*EntityKind, None)] == [1, 1, 1, 1]
    store.close()


def test_a_transaction_and_its_answer_live_as_one_record(redis_url: str) -> None:
    """The answer, kept in the transaction's session, is part of its record: one key, one
    expiry, which an outcome restarts; an answer for a transaction never kept is not
    kept either."""
    store = _open(redis_url)
    engine = FeatureEngine(CONFIG, store)
    engine.admit(tx(1, T0, merchant_id="m"), lambda features: _answer("tx1"))
    engine.record_answer("unknown", _answer("unknown"))
    client = redis.Redis.from_url(redis_url)
    keys = [key for key in client.scan_iter() if b":x:" in key]
    assert [key.rsplit(b":", 2)[1:] for key in keys] == [[b"x", b"tx1"]]
    horizon_ms = CONFIG.state_horizon_seconds * 1000
    assert horizon_ms - 60_000 < client.pttl(keys[0]) <= horizon_ms
    client.pexpire(keys[0], 10_000)
    assert engine.report_outcome("tx1", True, T0 + HOUR)
    assert client.pttl(keys[0]) > horizon_ms - 60_000
    assert engine.admit(tx(1, T0, merchant_id="m")) == EarlierAttempt(ANY, _answer("tx1"))
    client.close()
    store.close()


def test_a_server_without_a_memory_bound_is_warned_about(tmp_path: Path) -> None:
    """No `maxmemory`: the store opens, and warns that nothing bounds the server."""
    with RedisServer(tmp_path, maxmemory=None) as server, capture_logs() as logs:
        _open(server.url).close()
    assert [log["event"] for log in logs] == ["state_unbounded"]


def test_without_a_horizon_records_and_answers_never_expire(redis_url: str) -> None:
    """An unbounded horizon (as the memory store's default) sets no expiry at all."""
    store = RedisStore(
        redis_url,
        identity=state_identity(CONFIG),
        horizon_seconds=math.inf,
        timeout_seconds=TIMEOUT,
    )
    engine = FeatureEngine(CONFIG, store)
    engine.admit(tx(1, T0), lambda features: _answer("tx1"))
    client = redis.Redis.from_url(redis_url)
    keys = [key for key in client.scan_iter() if key != b"fraud:identity"]
    assert len(keys) == 3  # card, terminal, transaction with its answer
    assert {client.pttl(key) for key in keys} == {-1}
    client.close()
    store.close()


def test_state_of_other_feature_settings_is_refused(redis_url: str) -> None:
    """A server written with one label delay is not read with another."""
    _open(redis_url).close()
    with pytest.raises(StateMismatch, match="FLUSHDB"):
        _open(redis_url, FeatureConfig(label_delay_days=3))


def test_a_server_that_cannot_be_reached_is_refused_at_open_without_its_password() -> None:
    """Nothing listens: StateStoreError naming the server, its password masked."""
    url = f"redis://:hunter2-secret@127.0.0.1:{free_ports(1)}/0"  # nothing listens there
    with pytest.raises(StateStoreError, match="cannot use the feature state's Redis") as caught:
        _open(url)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_ids_longer_than_the_key_bound_are_kept_apart(redis_url: str) -> None:
    """Two long ids that share a long prefix are two cards."""
    store = _open(redis_url)
    engine = FeatureEngine(CONFIG, store)
    engine.observe(tx(1, T0, card="é" * 300 + "a"))
    second = engine.observe(tx(2, T0 + 1, card="é" * 300 + "b"))
    assert second[6] == 1  # card_tx_count_1h: a card of its own
    store.census()
    assert store.records(EntityKind.CARD) == 2
    store.close()


def test_the_settings_open_a_redis_store(redis_url: str) -> None:
    """`state.backend = "redis"` opens the server at `state.url`."""
    store = open_state(StateSettings(backend="redis", url=redis_url), CONFIG)
    assert isinstance(store, RedisStore)
    store.close()


def test_a_stopped_server_fails_transactions_fast_until_it_is_back(tmp_path: Path) -> None:
    """With the server gone every transaction raises within a few timeouts, and once a
    server is back on the same port the store works again by itself."""
    with RedisServer(tmp_path) as server:
        store = _open(server.url, timeout=0.05)
        engine = FeatureEngine(CONFIG, store)
        engine.observe(tx(1, T0))
        server.stop()
        for number in range(2, 5):
            started = time.monotonic()
            with pytest.raises(redis.ConnectionError):
                engine.observe(tx(number, T0 + number))
            assert time.monotonic() - started < 0.5
        with pytest.raises(redis.ConnectionError):
            engine.report_outcome("tx1", True, T0 + HOUR)
        server.start()  # empty: nothing was saved
        assert engine.observe(tx(5, T0 + 5))[6] == 1
        store.close()


def test_a_stalled_server_times_out_each_transaction_until_it_answers(tmp_path: Path) -> None:
    """A server that stops answering (paused) costs each transaction a few timeouts, then
    serves again once resumed, with nothing counted twice: a transaction timed out may
    have been counted by the server once resumed (it runs what it received), and then its
    retry finds it, unanswered, and counts nothing."""
    with RedisServer(tmp_path) as server:
        store = _open(server.url, timeout=0.05)
        engine = FeatureEngine(CONFIG, store)
        engine.observe(tx(1, T0))
        server.pause()
        for number in range(2, 4):
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                engine.observe(tx(number, T0 + number))
            assert time.monotonic() - started < 0.5
        server.resume()
        counted = engine.observe(tx(4, T0 + 4))[6]
        retries = [engine.admit(tx(number, T0 + number)) for number in range(2, 4)]
        found = [retry for retry in retries if isinstance(retry, EarlierAttempt)]
        assert all(retry.answer is None for retry in found)
        assert counted == 2 + len(found)
        assert engine.observe(tx(5, T0 + 5))[6] == 5  # each stalled one counted once
        store.close()


class _NoModel:
    """A model source with nothing loaded: the fallback answers, the state still counts."""

    current: LoadedModel | None = None


def test_the_scorer_answers_state_unavailable_while_the_server_is_down(tmp_path: Path) -> None:
    """The scoring core gives the `state_unavailable` fallback while the server is down,
    and scores normally (here: no model) once it is back."""
    with RedisServer(tmp_path) as server:
        state = StateSettings(backend="redis", url=server.url, timeout_seconds=0.05)
        store = open_state(state, CONFIG)
        scorer = build_scorer(ServeSettings(state=state), FeatureEngine(CONFIG, store), _NoModel())
        assert scorer.score(raw_transaction(1)).fallback_reason == FallbackReason.MODEL_UNAVAILABLE
        server.stop()
        assert scorer.score(raw_transaction(2)).fallback_reason == FallbackReason.STATE_UNAVAILABLE
        started = time.monotonic()  # after the first failure's log line, slow in a terminal
        assert scorer.score(raw_transaction(3)).fallback_reason == FallbackReason.STATE_UNAVAILABLE
        assert time.monotonic() - started < 0.5
        server.start()
        assert scorer.score(raw_transaction(4)).fallback_reason == FallbackReason.MODEL_UNAVAILABLE
        store.close()


def test_records_idle_past_the_horizon_expire_and_are_counted(redis_url: str) -> None:
    """With a horizon of a fifth of a second a card's record expires by itself: the card
    starts again as new, and the census counts the expiry as idle."""
    store = RedisStore(
        redis_url, identity=state_identity(CONFIG), horizon_seconds=0.2, timeout_seconds=TIMEOUT
    )
    engine = FeatureEngine(CONFIG, store)
    engine.observe(tx(1, T0))
    time.sleep(0.4)
    assert engine.observe(tx(2, T0 + 1))[6] == 1
    store.census()
    assert store.evictions.idle >= 1
    store.close()


def test_a_server_at_its_memory_bound_drops_records_and_is_counted(tmp_path: Path) -> None:
    """Fresh ids past `maxmemory` (volatile-lru): the server drops the least recently used
    records, counted as capacity evictions, and keeps within its bound."""
    with RedisServer(tmp_path, maxmemory="4mb") as server:
        store = _open(server.url)
        engine = FeatureEngine(CONFIG, store)
        for number in range(4_000):
            engine.observe(tx(number, T0 + number, card=f"c{number}", terminal=f"t{number}"))
        store.census()
        assert store.evictions.capacity > 1_000
        assert 0 < store.records(EntityKind.CARD) < 4_000
        client = server.client()
        assert client.info("memory")["used_memory"] < 5 * 1024 * 1024
        client.close()
        store.close()


def _at_once(
    replicas: list[_CountingConflicts],
    stream: list[Transaction],
    score: Callable[[FeatureEngine, list[Transaction]], None],
) -> None:
    """Each replica scores every other transaction of `stream`, in threads at once."""
    threads = [
        threading.Thread(target=score, args=(FeatureEngine(CONFIG, replica), stream[half::2]))
        for half, replica in enumerate(replicas)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _at(vector: list[float], indexes: tuple[int, ...]) -> list[float]:
    return [vector[index] for index in indexes]


def _answer(transaction_id: str) -> ScoreResult:
    return ScoreResult(transaction_id, 0.1, Decision.APPROVE, (), "v1", DecisionSource.MODEL, None)
