"""Shadow scoring: the challenger scores what the champion decided, after the answer is out.

A challenger is a candidate model a data scientist wants to compare with the champion on
live traffic before promoting it. It must see exactly the champion's inputs and must not
change, or slow down, any answer. So the scorer hands each decided transaction (its
feature vector, the champion's score and decision) to `ShadowScorer.submit`, which only
appends it to a backlog and, if none is pending, schedules one drain with the event loop
(`loop.call_soon`). The drain runs after the current callback, i.e. after the servicer
has returned its response to grpc, and scores the whole backlog with the challenger.

What it costs the request: one append and, at most once per loop iteration, one
`call_soon`. The challenger's own inference is still spent on the event-loop thread, so it
takes throughput, not latency, from requests.
The backlog is bounded: beyond `backlog_limit` waiting transactions, new ones are skipped
and counted, never queued without bound.

Each comparison feeds the shadow metrics (`service.observability.metrics`): the challenger's
score, the absolute score difference, and agreement of the decisions. Every disagreement gets a
log line (event "shadow_disagreement") for offline comparison; agreements are logged at the
request-log sample rate (event "shadow_agreement"). Neither carries card data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from service.core.domain import Decision, DecisionSource, ScoreResult, Transaction
from service.core.scoring import decision_for
from service.model.loading import LoadedModel
from service.observability.logs import RequestLogSampler
from service.observability.metrics import (
    SHADOW_AGREEMENT_COUNTERS,
    SHADOW_SCORE_DIFFERENCE,
    SHADOW_SCORES,
    SHADOW_SKIP_COUNTERS,
)

DEFAULT_BACKLOG_LIMIT = 4096

# Runs a callback soon, on the thread that submits: `asyncio.get_running_loop().call_soon`.
Schedule = Callable[[Callable[[], None]], object]

# transaction id, features, champion version, champion score, champion decision
_Pending = tuple[str, Sequence[float], str, float, Decision]

_log = structlog.get_logger(__name__)


class ChallengerSource(Protocol):
    """Where the shadow finds the challenger: a `ModelStore` in the server."""

    @property
    def challenger(self) -> LoadedModel | None:
        """The challenger now; None without one."""


class ShadowScorer:
    """Scores the champion's transactions with the challenger, later. One thread only."""

    def __init__(
        self,
        store: ChallengerSource,
        schedule: Schedule,
        *,
        log_sampler: RequestLogSampler,
        backlog_limit: int = DEFAULT_BACKLOG_LIMIT,
    ) -> None:
        """Compare with `store`'s challenger in callbacks given to `schedule`."""
        self._store = store
        self._schedule = schedule
        self._sampler = log_sampler
        self._backlog_limit = backlog_limit
        self._backlog: deque[_Pending] = deque()
        self._drain_scheduled = False

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: LoadedModel | None,
    ) -> None:
        """Queue a transaction the champion decided (`service.core.ports.AnswerListener`);
        fallback and rule answers have no champion decision to compare with."""
        # A list's or rule's decision is no model decision to compare with (docs/rules.md).
        if model is not None and features is not None and result.source is DecisionSource.MODEL:
            self.submit(tx.transaction_id, features, model, result.score, result.decision)

    def submit(
        self,
        transaction_id: str,
        features: Sequence[float],
        champion: LoadedModel,
        score: float,
        decision: Decision,
    ) -> None:
        """Queue one decided transaction for the challenger; `features` must not change."""
        challenger = self._store.challenger
        if challenger is None or challenger.version == champion.version:
            return
        if len(self._backlog) >= self._backlog_limit:
            SHADOW_SKIP_COUNTERS["backlog_full"].inc()
            return
        self._backlog.append((transaction_id, features, champion.version, score, decision))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._schedule(self.drain)

    def drain(self) -> None:
        """Score every queued transaction with the challenger of now."""
        self._drain_scheduled = False
        backlog = self._backlog
        challenger = self._store.challenger
        if challenger is None:
            backlog.clear()  # the challenger was retired meanwhile: nothing to compare with
            return
        while backlog:
            self._compare(challenger, *backlog.popleft())

    def _compare(
        self,
        challenger: LoadedModel,
        transaction_id: str,
        features: Sequence[float],
        champion_version: str,
        champion_score: float,
        champion_decision: Decision,
    ) -> None:
        if challenger.version == champion_version:
            return  # promoted meanwhile: comparing a model with itself says nothing
        try:
            score = challenger.scorer.score_one(features)
            decision = decision_for(score, challenger.thresholds)
        except Exception:
            SHADOW_SKIP_COUNTERS["challenger_error"].inc()
            _log.exception("shadow_error", challenger_version=challenger.version)
            return
        agreed = decision is champion_decision
        SHADOW_SCORES.observe(score)
        SHADOW_SCORE_DIFFERENCE.observe(abs(score - champion_score))
        SHADOW_AGREEMENT_COUNTERS[agreed].inc()
        if not agreed or self._sampler.should_log():
            _log.info(
                "shadow_agreement" if agreed else "shadow_disagreement",
                transaction_id=transaction_id,
                champion_version=champion_version,
                champion_score=champion_score,
                champion_decision=champion_decision.name,
                challenger_version=challenger.version,
                challenger_score=score,
                challenger_decision=decision.name,
            )
