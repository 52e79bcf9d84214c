"""Shadow rules: a candidate rule set judges every decided transaction, deciding nothing.

Like the challenger model (`service.model.shadow`), a rule set published under the
challenger alias (`fraud-train rules shadow`) sees what the champion saw: the transaction,
its features, the model's score and the lists deciding now. It runs after the answer is
decided, on the scoring thread, only while a challenger rule set is loaded; its verdict is
only counted (`fraud_rule_hits_total{rule_set="challenger"}`) and, when it differs from the
answer given, logged at the request-log sample rate ("shadow_rule_disagreement"). The
card's BIN lives for the call alone and is not handed to listeners, so shadow rules on BINs
never hit.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from service.core.domain import ScoreResult, Transaction
from service.core.rules import Lists, RuleBook, RuleSet
from service.model.rule_store import RuleStore
from service.observability.logs import RequestLogSampler
from service.observability.rule_metrics import RuleHitCounters

_log = structlog.get_logger(__name__)


class RuleShadow:
    """Counts what the challenger rule set would decide (`service.core.ports.AnswerListener`)."""

    def __init__(self, store: RuleStore, *, log_sampler: RequestLogSampler) -> None:
        self._store = store
        self._sampler = log_sampler
        self._counters = RuleHitCounters("challenger")
        self._book: RuleBook | None = None
        self._made_from: tuple[RuleSet, Lists | None] | None = None

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: object,
    ) -> None:
        challenger = self._store.challenger
        if challenger is None:
            return
        book = self._book_for(challenger)
        score = None if result.fallback_reason is not None else result.score
        verdict = book.decide(tx, features, score, "")
        if verdict is not None:
            self._counters.count(verdict.rule_id)
        shadow_rule = "" if verdict is None else verdict.rule_id
        if shadow_rule != result.rule_id and self._sampler.should_log():
            _log.info(
                "shadow_rule_disagreement",
                transaction_id=tx.transaction_id,
                champion_rule=result.rule_id,
                challenger_rule=shadow_rule,
                challenger_version=challenger.version,
            )

    def _book_for(self, challenger: RuleSet) -> RuleBook:
        """The challenger's rules with the lists deciding now, rebuilt only when either
        changes."""
        current = self._store.current
        lists = None if current is None else current.lists
        if self._book is None or self._made_from != (challenger, lists):
            self._book = RuleBook(challenger, lists or Lists.empty())
            self._made_from = (challenger, lists)
        return self._book
