"""Tests for `Scorer.score_batch(..., validate_all_first=True)`, a unary batch's scoring:
every transaction validated before any is counted, answers as `score` one by one."""

from __future__ import annotations

from typing import Any

import pytest

from service.core.card_tokens import CardTokenizer
from service.core.domain import FallbackMode
from service.core.errors import InvalidRequest
from service.core.scoring import BatchAnswers, FallbackPolicy, Scorer
from service.core.validation import ScoringLimits
from service.features import FeatureEngine, MemoryStore
from service.model.loading import LoadedModel
from tests.factories import raw_transaction
from tests.service.core.test_score_batch import OneModel, model

__all__ = ["model"]  # the module fixture, shared

# "disabled" scores a batch one transaction at a time, the others in one session.
MODES: tuple[FallbackMode, ...] = ("amount_floor", "disabled")


def _scorer(model: LoadedModel, mode: FallbackMode) -> tuple[Scorer[Any], MemoryStore]:
    store = MemoryStore()
    scorer: Scorer[Any] = Scorer(
        FeatureEngine(model.manifest.feature_config, store),
        OneModel(model),
        tokenizer=CardTokenizer(b"test key"),
        limits=ScoringLimits(),
        fallback=FallbackPolicy(mode=mode),
    )
    return scorer, store


@pytest.mark.parametrize("mode", MODES)
def test_an_invalid_transaction_fails_the_batch_with_nothing_counted(
    model: LoadedModel, mode: FallbackMode
) -> None:
    """The third transaction invalid: no answer, its position, and no transaction counted,
    not even the two before it."""
    scorer, store = _scorer(model, mode)
    batch = [raw_transaction(1), raw_transaction(2), raw_transaction(3, currency="")]
    answers = scorer.score_batch([(raw, None) for raw in batch], validate_all_first=True)
    assert answers.answers == []
    assert isinstance(answers.error, InvalidRequest)
    assert answers.error.field == "transaction.currency"
    assert (answers.failed_at, answers.failed_position) == (2, 2)
    assert store.records() == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_valid_batch_answers_as_one_by_one(model: LoadedModel, mode: FallbackMode) -> None:
    """Validated first or not, the answers are `score`'s one by one, repeats included, and
    a second sending of the batch gets the same answers, counted once."""
    scorer, store = _scorer(model, mode)
    alone, _ = _scorer(model, mode)
    batch = [raw_transaction(n) for n in (1, 2, 3, 2)]
    expected = BatchAnswers([alone.score(raw) for raw in batch])
    requests = [(raw, None) for raw in batch]
    assert scorer.score_batch(requests, validate_all_first=True) == expected
    assert scorer.score_batch(requests, validate_all_first=True) == expected
    assert store.records() == 3
