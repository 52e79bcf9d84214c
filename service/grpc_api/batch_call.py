"""A unary ScoreBatch call: its size checked, its transactions converted and scored by the
core as one batch, validated whole before any is counted (a unary call is answered whole
or not at all), and its answers as one response in the transactions' order.

Why validated whole: a caller of ScoreStream has the answers before a bad transaction, a
caller of ScoreBatch would have none of them, so counting them would leave it counted
transactions it never saw the answers of. A conflicting repeat (ALREADY_EXISTS) is only
found as its transaction is counted, in the feature state's session: the ones before it
stay counted, and a retry without it gets their answers, counted once (the contract says
so).

Errors name the transaction by its position in the batch ("transaction #3: ", from 0);
the size limit names itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.core.domain import RawTransaction, ScoreResult
from service.core.errors import InvalidRequest
from service.core.scoring import BatchAnswers
from service.grpc_api._proto.fraud.v1 import scoring_pb2
from service.grpc_api.converters import to_raw_transaction, to_score_response
from service.observability.metrics import BATCH_SIZE

BATCH_LIMIT_SETTING = "connections.batch_max_transactions"


class BatchScoringCore(Protocol):
    """What a batch call asks of the scoring core (`service.core.scoring.Scorer`)."""

    def score_batch(
        self,
        requests: Sequence[tuple[RawTransaction, float | None]],
        *,
        validate_all_first: bool = False,
    ) -> BatchAnswers:
        """`score` of each (request, deadline) in order; see `Scorer.score_batch`."""


@dataclass(frozen=True, slots=True)
class BatchCallResult:
    """The answers, in order, or the error the call fails with (`where` the prefix of its
    details: the failing transaction's position)."""

    answers: Sequence[ScoreResult]
    error: Exception | None = None
    where: str = ""


_EMPTY = BatchCallResult(())


class BatchCalls:
    """Scores ScoreBatch calls of at most `max_transactions` with `scorer`."""

    def __init__(self, scorer: BatchScoringCore, max_transactions: int) -> None:
        if max_transactions < 1:
            raise ValueError("max_transactions must be at least 1")
        self._scorer = scorer
        self._max = max_transactions
        self._too_many = InvalidRequest(
            "transactions", f"at most {max_transactions} in one batch ({BATCH_LIMIT_SETTING})"
        )

    def score(self, request: scoring_pb2.ScoreBatchRequest, deadline: float) -> BatchCallResult:
        """The answers to the batch's transactions, each to be answered by `deadline` (the
        `time.monotonic()` instant past which it gets the "deadline" fallback)."""
        transactions = request.transactions
        size = len(transactions)
        if size > self._max:
            return BatchCallResult((), self._too_many)
        BATCH_SIZE.observe(size)
        if not size:
            return _EMPTY
        requests = [(to_raw_transaction(one), deadline) for one in transactions]
        try:
            scored = self._scorer.score_batch(requests, validate_all_first=True)
        except Exception as failure:  # a bug: INTERNAL, logged by the caller
            return BatchCallResult((), failure)
        if scored.error is None:
            return BatchCallResult(scored.answers)
        where = f"transaction #{scored.failed_position}: "
        return BatchCallResult(scored.answers, scored.error, where)


def to_score_batch_response(answers: Sequence[ScoreResult]) -> scoring_pb2.ScoreBatchResponse:
    """The wire response: one result per answer, in order."""
    response = scoring_pb2.ScoreBatchResponse()
    response.results.extend([to_score_response(answer) for answer in answers])
    return response
