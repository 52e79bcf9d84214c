"""A scored transaction on the Redis store, on a real redis-server: one round trip, the
records the server writes byte for byte those Python computes, and scripts the server lost
(restarted, flushed) loaded again without losing a count or an answer."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest
import redis

from service.core.domain import (
    Decision,
    DecisionSource,
    EarlierAttempt,
    EntryMode,
    ScoreResult,
    Transaction,
)
from service.features import EntityKind, FeatureConfig, FeatureEngine, state_identity
from service.features.memory_store import MemoryStore
from service.state.redis_store import RedisStore
from tests.service.features.engine_io import DAY, HOUR, T0, tx

CONFIG = FeatureConfig()
# Where a terminal's or merchant's record keeps what readers settle (the settled hour's
# cached features): left to the next reader by a count on the server (`redis_swipes`).
_READERS_ONLY = range(4, 11)


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    opened = RedisStore(
        redis_url,
        identity=state_identity(CONFIG),
        horizon_seconds=CONFIG.state_horizon_seconds,
        timeout_seconds=0.5,
    )
    yield opened
    opened.close()


def _answer(transaction_id: str) -> ScoreResult:
    return ScoreResult(transaction_id, 0.2, Decision.APPROVE, (), "v1", DecisionSource.MODEL, None)


def _deciding(current: Transaction) -> Callable[[list[float]], ScoreResult]:
    return lambda features: _answer(current.transaction_id)


def test_a_scored_transaction_costs_one_round_trip(store: RedisStore, redis_url: str) -> None:
    """Each new transaction, answered, waits for one reply: the swipe script's; its answer
    is sent without waiting (one more EVALSHA on the server, its reply read with the next
    call's), and no record is fetched apart. A retry costs one round trip too, and counts
    nothing."""
    engine = FeatureEngine(CONFIG, store)
    warm_up = tx(0, T0 - DAY)
    engine.admit(warm_up, _deciding(warm_up))  # the scripts loaded, its answer's reply read
    engine.admit(warm_up, _deciding(warm_up))
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    before = store.round_trips
    scored = [
        tx(number, T0 + 60 * number, card=f"card{number % 4}", terminal=f"term{number % 3}",
           merchant_id=f"m{number % 2}" if number % 3 else "")
        for number in range(1, 31)
    ]  # fmt: skip
    for number, current in enumerate(scored):
        previous = "old" if number % 5 == 0 else None
        engine.admit(current, _deciding(current), previous_card_id=previous)
    assert store.round_trips - before == len(scored)
    retried = engine.admit(scored[5], _deciding(scored[5]))
    assert retried == EarlierAttempt(scored[5], _answer(scored[5].transaction_id))
    assert store.round_trips - before == len(scored) + 1
    calls = {
        command.removeprefix("cmdstat_"): stats["calls"]
        for command, stats in client.info("commandstats").items()
    }
    # The swipe of each transaction and the retry's, and each answer: EVALSHA. (The
    # counts include what scripts call, so GET and SET are counted: MGET, never.)
    assert calls.get("evalsha") == 2 * len(scored) + 1
    assert "mget" not in calls
    client.close()


def test_the_server_applies_each_swipe_byte_for_byte_as_python_does(store: RedisStore) -> None:
    """Over swipes late and early, minutes to weeks apart, past the horizon, carried over
    from a previous token, probes, e-commerce, countries and none: after each, the card's
    record the server wrote is the very bytes memory holds, and the terminal's and
    merchant's are too but for what only readers settle."""
    generator = random.Random(13)
    memory = MemoryStore(horizon_seconds=CONFIG.state_horizon_seconds)
    in_memory = FeatureEngine(CONFIG, memory)
    on_redis = FeatureEngine(CONFIG, store)
    now = T0
    for number in range(400):
        now += generator.choice((0.0, 1.0, 59.0, HOUR, 3 * HOUR, DAY, 9 * DAY, 45 * DAY))
        card = f"card{generator.randrange(6)}"
        current = Transaction(
            f"tx{number}",
            now - 2 * HOUR if generator.random() < 0.1 else now,
            card,
            f"term{generator.randrange(12)}",
            generator.choice((0.5, 3.0, 42.0, 980.25)),
            merchant_id=generator.choice(("", "m0", "m1")),
            entry_mode=generator.choice(tuple(EntryMode)),
            country=generator.choice(("", "FR", "DE")),
            card_present=generator.choice((None, True, False)),
        )
        previous = f"card{generator.randrange(6)}" if generator.random() < 0.2 else None
        expected = in_memory.admit(current, previous_card_id=previous)
        assert on_redis.admit(current, previous_card_id=previous) == expected, number
        with store.session() as session:
            held = session.entity(EntityKind.CARD, card)
            assert held is not None
            assert held.tobytes() == memory.entity(EntityKind.CARD, card).tobytes(), number  # type: ignore[union-attr]
            for kind, key in ((EntityKind.TERMINAL, current.terminal_id),
                              (EntityKind.MERCHANT, current.merchant_id)):  # fmt: skip
                if not key:
                    continue
                counted, computed = session.entity(kind, key), memory.entity(kind, key)
                assert counted is not None
                assert computed is not None
                for index in _READERS_ONLY:
                    counted[index] = computed[index] = 0.0
                assert counted.tobytes() == computed.tobytes(), (number, kind)


def test_scripts_the_server_lost_are_loaded_again_counts_and_answers_kept(
    store: RedisStore, redis_url: str
) -> None:
    """After SCRIPT FLUSH (as after a restart), the next swipe loads its script, and the
    answer sent after it, refused for want of the commit script, is sent again with it: the
    retry gets it."""
    engine = FeatureEngine(CONFIG, store)
    client = redis.Redis.from_url(redis_url)
    first = tx(1, T0, card="c1")
    engine.admit(first, _deciding(first))
    client.script_flush()
    second = tx(2, T0 + 60, card="c1")
    engine.admit(second, _deciding(second))
    client.script_flush()
    assert engine.admit(second) == EarlierAttempt(second, _answer("tx2"))
    assert engine.observe(tx(3, T0 + 120, card="c1"))[6] == 3  # card_tx_count_1h
    client.close()
