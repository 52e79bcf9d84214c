"""What every feature state store must do alike, whatever it keeps records in: memory,
LMDB, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config.settings import StateBackend, StateSettings
from service.core.domain import (
    Admitted,
    Decision,
    DecisionSource,
    EarlierAttempt,
    OutcomeFate,
    ScoreResult,
    Transaction,
)
from service.features import FeatureConfig, FeatureEngine, StateStore
from service.state.opening import open_state
from tests.service.features.engine_io import T0, as_dict, tx

CONFIG = FeatureConfig()


@pytest.fixture(params=["memory", "lmdb", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    backend: StateBackend = request.param
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    settings = StateSettings(backend=backend, path=tmp_path / "state", url=url or "redis://x")
    opened = open_state(settings, CONFIG)
    yield opened
    opened.close()


def _approve(transaction_id: str) -> ScoreResult:
    return ScoreResult(transaction_id, 0.01, Decision.APPROVE, (), "v1", DecisionSource.MODEL, None)


def test_an_id_reused_past_the_horizon_never_gets_the_old_answer(store: StateStore) -> None:
    """A transaction id idle past the state horizon is new again: another payment under it
    is counted, and until it is answered a retry of it is not answered with the old
    payment's decision (found by review: LMDB and Redis kept the old answer)."""
    engine = FeatureEngine(CONFIG, store)
    small = tx(1, T0, card="c1", amount=1.0)
    engine.observe(small)
    engine.record_answer(small.transaction_id, _approve(small.transaction_id))
    later = Transaction(
        small.transaction_id, T0 + CONFIG.state_horizon_seconds + 60, "c2", "t9", 1e6
    )
    assert isinstance(engine.admit(later), Admitted)  # counted as new
    assert engine.admit(later) == EarlierAttempt(later, None)  # no answer yet: not the old one


def test_a_card_s_history_under_its_previous_token_is_carried_over(store: StateStore) -> None:
    """During a token key rotation, a card with no history under its new token continues
    the one under its previous token; from then on its new token's record is read and
    written, and the old record is left as it was (it ages out)."""
    engine = FeatureEngine(CONFIG, store)
    for number in range(3):
        engine.observe(tx(number, T0 + 60 * number, card="k1:old"))

    def card_count(transaction: Transaction, previous_card_id: str | None = None) -> float:
        admitted = engine.admit(transaction, previous_card_id=previous_card_id)
        assert isinstance(admitted, Admitted)
        return as_dict(list(admitted.features))["card_tx_count_1d"]

    assert card_count(tx(3, T0 + 180, card="k2:new"), previous_card_id="k1:old") == 4
    assert card_count(tx(4, T0 + 240, card="k2:new"), previous_card_id="k1:old") == 5
    assert card_count(tx(5, T0 + 300, card="k1:old")) == 4
    assert card_count(tx(6, T0 + 360, card="k2:other"), previous_card_id="k1:none") == 1


def test_a_label_keeps_its_reporter_s_rank_across_sessions(store: StateStore) -> None:
    """A higher-ranked caller's fraud stands against a lower-ranked reversal, on every store
    (the rank is read back from the stored record in each session), and falls to an
    equal-ranked one; the terminal's risk follows the label that stands."""
    engine = FeatureEngine(CONFIG, store)
    engine.observe(tx(1, T0, terminal="t1"))
    reported, later = T0 + 3_600, T0 + CONFIG.label_delay_seconds + 43_200

    def terminal_risk(number: int) -> float:
        return as_dict(engine.observe(tx(number, later + number, terminal="t1")))[
            "terminal_risk_1d"
        ]

    assert engine.report_outcome("tx1", True, reported, 2) is OutcomeFate.COUNTED
    assert engine.report_outcome("tx1", False, reported + 60, 0) is OutcomeFate.OUTRANKED
    assert terminal_risk(10) == 1.0
    assert engine.report_outcome("tx1", False, reported + 120, 2) is OutcomeFate.COUNTED
    assert terminal_risk(11) == 0.0
