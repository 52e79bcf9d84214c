"""Tests for service.records.decision_writer: each decision as one JSON line of "decisions"
segments."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.card_tokens import CardTokenizer
from service.core.domain import (
    Decision,
    DecisionSource,
    EntryMode,
    FallbackReason,
    RawTransaction,
    ScoreResult,
    Transaction,
)
from service.core.scoring import FallbackPolicy, Scorer
from service.core.validation import ScoringLimits
from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig, FeatureEngine
from service.model.loading import LoadedModel
from service.records.decision_writer import DecisionLogWriter
from service.records.schema import host_for_segments

HOST = host_for_segments(socket.gethostname())  # the writer names its segments so

EVENT_TIME = datetime(2026, 9, 1, 10, 0, 0, 123_456, UTC).timestamp()
LOGGED_AT = datetime(2026, 9, 1, 10, 0, 1, 654_321, UTC).timestamp()
PAN = "4111111111111111"
TX = Transaction(
    transaction_id="tx-1",
    timestamp=EVENT_TIME,
    card_id="tok_0123456789abcdef0123456789abcdef",
    terminal_id="term-1",
    amount=12.5,
    merchant_id="merch-1",
    mcc=5411,
    entry_mode=EntryMode.CONTACTLESS,
    currency="EUR",
    country="FR",
    card_present=True,
)
MODEL_ANSWER = ScoreResult(
    "tx-1", 0.8125, Decision.DECLINE, (), "20260901T000000Z", DecisionSource.MODEL, None
)
FALLBACK_ANSWER = ScoreResult(
    "tx-1", 0.0, Decision.REVIEW, (), "", DecisionSource.FALLBACK, FallbackReason.DEADLINE
)


@dataclasses.dataclass(frozen=True)
class NoModel:
    """A model source with nothing loaded: the scorer answers by its rules."""

    current: LoadedModel | None = None


def logged(
    directory: Path, *decisions: tuple[Transaction, Sequence[float] | None, ScoreResult]
) -> list[dict[str, Any]]:
    """The lines a decision log writes for `decisions` (what it hears, the model aside)."""
    log = DecisionLogWriter(directory, feature_config=FeatureConfig(), clock=lambda: LOGGED_AT)
    for tx, features, result in decisions:
        log.on_answer(tx, features, result, None)
    log.close()
    (segment,) = directory.iterdir()
    assert segment.name == f"decisions-20260901T100001654321Z-{HOST}-{os.getpid()}-0.jsonl"
    return [json.loads(line) for line in segment.read_text().splitlines()]


def test_a_model_decision_is_one_line_with_every_field(tmp_path: Path) -> None:
    """Transaction, answer, engine version and features, times in ISO UTC to the
    microsecond, the decision and who decided by name."""
    (line,) = logged(tmp_path, (TX, [12.5, 10.0, 1.0], MODEL_ANSWER))
    assert line == {
        "transaction_id": "tx-1",
        "event_time": "2026-09-01T10:00:00.123456+00:00",
        "card": "tok_0123456789abcdef0123456789abcdef",
        "terminal_id": "term-1",
        "merchant_id": "merch-1",
        "amount": 12.5,
        "currency": "EUR",
        "mcc": 5411,
        "entry_mode": 2,
        "card_present": True,
        "country": "FR",
        "score": 0.8125,
        "decision": "DECLINE",
        "source": "MODEL",
        "fallback_reason": "",
        "model_version": "20260901T000000Z",
        "feature_engine_version": FEATURE_ENGINE_VERSION,
        "feature_config": FeatureConfig().fingerprint,
        "features": [12.5, 10.0, 1.0],
        "logged_at": "2026-09-01T10:00:01.654321+00:00",
        "caller": "",  # outside a call: no caller identified
        "rule_id": "",  # the model decided: no list or rule
        "rules_version": "",
    }


def test_nan_features_are_null_and_features_never_computed_a_null_list(tmp_path: Path) -> None:
    """A NaN feature is written as null (NaN is not JSON); a fallback answer computed
    without features has `features` null; unknown optional fields stay unknown."""
    unknown = TX._replace(card_present=None, mcc=-1, entry_mode=EntryMode.UNKNOWN)
    with_nan, without = logged(
        tmp_path,
        (TX, [1.0, math.nan, 2.0], MODEL_ANSWER),
        (unknown, None, FALLBACK_ANSWER),
    )
    assert with_nan["features"] == [1.0, None, 2.0]
    assert without["features"] is None
    assert (without["source"], without["fallback_reason"]) == ("FALLBACK", "deadline")
    assert (without["decision"], without["model_version"]) == ("REVIEW", "")
    assert (without["card_present"], without["mcc"], without["entry_mode"]) == (None, -1, 0)


def test_a_card_number_scored_is_logged_as_its_token_only(tmp_path: Path) -> None:
    """Scored through the Scorer, which the log listens to, a card number sent as card_id
    reaches the decision file as its keyed token alone, with every feature the engine
    computed."""
    tokenizer = CardTokenizer(b"a key for this test")
    log = DecisionLogWriter(tmp_path, feature_config=FeatureConfig())
    scorer = Scorer(
        FeatureEngine(FeatureConfig()),
        NoModel(),
        tokenizer=tokenizer,
        limits=ScoringLimits(),
        fallback=FallbackPolicy(),
        answer_listeners=[log],
    )
    for number, card_id in enumerate((PAN, "4111 1111 1111 1111")):
        raw = RawTransaction(
            f"tx-{number}", card_id, "term-1", "", 2_500, "EUR", 1_704_067_200_000_000_000,
            0, 0, None, "",
        )  # fmt: skip
        scorer.score(raw)
    log.close()
    (segment,) = tmp_path.iterdir()
    text = segment.read_text()
    assert PAN not in text
    assert "4111 1111" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["card"] for line in lines] == [tokenizer.token(PAN)] * 2
    assert [len(line["features"]) for line in lines] == [len(FEATURES)] * 2


def test_each_feature_config_marks_its_lines_with_its_own_fingerprint(tmp_path: Path) -> None:
    """Lines of a log for other feature settings carry another fingerprint: a retrain can
    tell rows computed with other settings from its own."""
    other = FeatureConfig(label_delay_days=3.0)
    log = DecisionLogWriter(tmp_path, feature_config=other)
    log.on_answer(TX, [1.0], MODEL_ANSWER, None)
    log.close()
    (segment,) = tmp_path.iterdir()
    line = json.loads(segment.read_text())
    assert line["feature_config"] == other.fingerprint != FeatureConfig().fingerprint
    assert FeatureConfig().fingerprint == FeatureConfig().fingerprint  # stable
