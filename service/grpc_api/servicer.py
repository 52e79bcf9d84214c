"""The gRPC face of the scoring core: each RPC converts its request, makes one call to the
core and converts the answer. No thresholds, features or rules live here.

Errors are mapped by one table, the same for every RPC:

    InvalidRequest      INVALID_ARGUMENT   details "field: reason"
    ConflictingRepeat   ALREADY_EXISTS     details "field: reason"
    UnknownTransaction  NOT_FOUND
    ModelUnavailable    UNAVAILABLE
    StateUnavailable    UNAVAILABLE
    anything else       INTERNAL           details "internal error"; traceback in the log

No status detail quotes a request value, which could be a card number: the core's
messages name the field and the reason only, a stream's error names its transaction by
position in the stream, and an unexpected exception's text, which can hold anything, goes
to the log only (where card numbers are redacted), never to the caller.

Deadlines: a transaction must be answered by the earlier of its server budget, counted from
the call's pickup (for a stream, from when the handler takes the message up, in its batch),
and the client's deadline, less
`SAFETY_MARGIN_SECONDS` for sending the answer. The core gets that instant and answers by
fallback once it has passed.

Each scored transaction and each refused request gets one log line, for a sampled share of
them; a request outside the sample costs one random draw and no formatting. A logged line
carries the request id (the caller's `x-request-id` metadata, else a fresh one) and the
model version, bound through structlog's context variables while it is written; so does
every internal error's line.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from typing import NoReturn, Protocol

import grpc
import structlog

from service.core.domain import (
    ModelSummary,
    RawOutcome,
    RawTransaction,
    ScoreResult,
)
from service.core.errors import (
    ConflictingRepeat,
    InvalidRequest,
    ModelUnavailable,
    ScoringError,
    StateUnavailable,
    UnknownTransaction,
)
from service.core.scoring import BatchAnswers
from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.batch_call import BatchCalls, to_score_batch_response
from service.grpc_api.converters import (
    to_model_info,
    to_raw_outcome,
    to_raw_transaction,
    to_score_response,
)
from service.grpc_api.interceptors import call_arrival
from service.grpc_api.stream_batches import WaitingBatches
from service.observability.logs import RequestLogSampler, new_request_id
from service.observability.metrics import STREAM_BATCH_SIZE

# Time kept back from every deadline to serialise and send the answer: twice what that takes,
# for a busy machine.
SAFETY_MARGIN_SECONDS = 0.0005
INTERNAL_DETAILS = "internal error"
REQUEST_ID_KEY = "x-request-id"
# A caller's request id is logged as sent, cut to this length.
MAX_REQUEST_ID_LENGTH = 128

STATUS_BY_ERROR: tuple[tuple[type[ScoringError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ConflictingRepeat, grpc.StatusCode.ALREADY_EXISTS),
    (UnknownTransaction, grpc.StatusCode.NOT_FOUND),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StateUnavailable, grpc.StatusCode.UNAVAILABLE),
)

ScoreContext = grpc.aio.ServicerContext[scoring_pb2.ScoreRequest, scoring_pb2.ScoreResponse]
OutcomeContext = grpc.aio.ServicerContext[scoring_pb2.OutcomeRequest, scoring_pb2.OutcomeResponse]
InfoContext = grpc.aio.ServicerContext[scoring_pb2.GetModelInfoRequest, scoring_pb2.ModelInfo]
BatchContext = grpc.aio.ServicerContext[
    scoring_pb2.ScoreBatchRequest, scoring_pb2.ScoreBatchResponse
]
AnyContext = ScoreContext | OutcomeContext | InfoContext | BatchContext

_log = structlog.get_logger(__name__)


class ScoringCore(Protocol):
    """What the servicer asks of the scoring core (`service.core.scoring.Scorer`)."""

    def score(self, raw: RawTransaction, *, deadline: float | None) -> ScoreResult:
        """The decision for `raw`, answered by fallback once `time.monotonic()` > deadline."""

    def score_batch(
        self,
        requests: Sequence[tuple[RawTransaction, float | None]],
        *,
        validate_all_first: bool = False,
    ) -> BatchAnswers:
        """`score` of each (request, deadline) in order; the answers until the first that
        failed, and its error (with `validate_all_first`, none if one is invalid)."""

    def report_outcome(self, raw: RawOutcome) -> None:
        """Count a confirmed label from its report time on."""

    def model_summary(self) -> ModelSummary:
        """The model deciding now."""


def status_for(error: Exception) -> grpc.StatusCode:
    """The status code of a call that failed with `error` (INTERNAL when unexpected)."""
    for error_class, code in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return code
    return grpc.StatusCode.INTERNAL


def request_id(context: AnyContext) -> str:
    """The call's `x-request-id` metadata (cut to MAX_REQUEST_ID_LENGTH), else a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            return text[:MAX_REQUEST_ID_LENGTH]
    return new_request_id()


class _CallLog:
    """One call's request id, worked out when its first line is logged and kept for the
    rest: every line of a stream carries the same id, and an unlogged call costs none."""

    __slots__ = ("_context", "_request_id")

    def __init__(self, context: AnyContext) -> None:
        self._context = context
        self._request_id: str | None = None

    def bound(self, **values: str) -> AbstractContextManager[None]:
        """The request id, and `values`, in every log line written inside the block."""
        if self._request_id is None:
            self._request_id = request_id(self._context)
        return structlog.contextvars.bound_contextvars(request_id=self._request_id, **values)


def answer_by(arrived: float, now: float, budget: float, time_remaining: float | None) -> float:
    """The `time.monotonic()` instant by which a transaction that `arrived` must be answered.

    The earlier of `budget` seconds after arrival and the client's deadline
    (`time_remaining` seconds after `now`, None without one), less the safety margin.
    """
    deadline = arrived + budget
    if time_remaining is not None:
        deadline = min(deadline, now + time_remaining)
    return deadline - SAFETY_MARGIN_SECONDS


class FraudScoringServicer(scoring_pb2_grpc.FraudScoringServicer):
    """The `fraud.v1.FraudScoring` service over a scoring core. Event-loop thread only."""

    def __init__(
        self,
        scorer: ScoringCore,
        *,
        budget_seconds: float,
        log_sampler: RequestLogSampler,
        stream_max_batch: int = 32,
        batch_max_transactions: int = 64,
    ) -> None:
        """Serve `scorer`, answering each transaction within `budget_seconds` of arrival, a
        stream's in batches of at most `stream_max_batch`, a ScoreBatch call's of at most
        `batch_max_transactions` (`service.grpc_api.batch_call`)."""
        self._scorer = scorer
        self._budget = budget_seconds
        self._sampler = log_sampler
        self._max_batch = stream_max_batch
        self._batch_calls = BatchCalls(scorer, batch_max_transactions)

    async def Score(
        self, request: scoring_pb2.ScoreRequest, context: ScoreContext
    ) -> scoring_pb2.ScoreResponse:
        """Scores one transaction."""
        arrived = call_arrival()
        remaining = context.time_remaining()
        deadline = answer_by(arrived, time.monotonic(), self._budget, remaining)
        try:
            result = self._scorer.score(to_raw_transaction(request), deadline=deadline)
        except Exception as error:
            await self._fail(_CallLog(context), context, "Score", error)
        self._log_answer("Score", result, arrived, _CallLog(context))
        return to_score_response(result)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[scoring_pb2.ScoreRequest], context: ScoreContext
    ) -> AsyncIterator[scoring_pb2.ScoreResponse]:
        """Scores the stream's transactions in order, in batches of those waiting; the
        first bad one ends it, after the answers to those before it."""
        position = 0
        call_log = _CallLog(context)
        async with WaitingBatches(request_iterator, self._max_batch) as waiting:
            while batch := await waiting.next_batch():
                STREAM_BATCH_SIZE.observe(len(batch))
                taken_up = time.monotonic()
                requests, unconverted = self._requests(batch, taken_up, context.time_remaining())
                try:
                    scored = self._scorer.score_batch(requests)
                except Exception as failure:  # a bug: INTERNAL, logged
                    scored = BatchAnswers([], failure)
                for result in scored.answers:
                    self._log_answer("ScoreStream", result, taken_up, call_log)
                    yield to_score_response(result)
                position += len(scored.answers)
                error = scored.error or unconverted
                if error is not None:
                    where = f"transaction #{position}: "
                    await self._fail(call_log, context, "ScoreStream", error, where)

    def _requests(
        self,
        batch: list[scoring_pb2.ScoreRequest],
        taken_up: float,
        time_remaining: float | None,
    ) -> tuple[list[tuple[RawTransaction, float | None]], Exception | None]:
        """The batch's requests for the core, each with its deadline, up to the first that
        does not convert, and its error. Each one's budget runs from when the handler takes
        it up, as a unary call's from its pickup: waiting in the read-ahead is waiting in
        the transport, which no budget counted either."""
        deadline = answer_by(taken_up, taken_up, self._budget, time_remaining)
        requests: list[tuple[RawTransaction, float | None]] = []
        for request in batch:
            try:
                raw = to_raw_transaction(request)
            except Exception as failure:
                return requests, failure
            requests.append((raw, deadline))
        return requests, None

    async def ScoreBatch(
        self, request: scoring_pb2.ScoreBatchRequest, context: BatchContext
    ) -> scoring_pb2.ScoreBatchResponse:
        """Scores a batch's transactions in order, all validated before any is counted."""
        arrived = call_arrival()
        remaining = context.time_remaining()
        deadline = answer_by(arrived, time.monotonic(), self._budget, remaining)
        scored = self._batch_calls.score(request, deadline)
        call_log = _CallLog(context)
        if scored.error is not None:
            await self._fail(call_log, context, "ScoreBatch", scored.error, scored.where)
        for result in scored.answers:
            self._log_answer("ScoreBatch", result, arrived, call_log)
        return to_score_batch_response(scored.answers)

    async def ReportOutcome(
        self, request: scoring_pb2.OutcomeRequest, context: OutcomeContext
    ) -> scoring_pb2.OutcomeResponse:
        """Records the confirmed outcome of an earlier transaction."""
        try:
            self._scorer.report_outcome(to_raw_outcome(request))
        except Exception as error:
            await self._fail(_CallLog(context), context, "ReportOutcome", error)
        return scoring_pb2.OutcomeResponse()

    async def GetModelInfo(
        self, request: scoring_pb2.GetModelInfoRequest, context: InfoContext
    ) -> scoring_pb2.ModelInfo:
        """Describes the model deciding now."""
        try:
            summary = self._scorer.model_summary()
        except Exception as error:
            await self._fail(_CallLog(context), context, "GetModelInfo", error)
        return to_model_info(summary)

    def _log_answer(
        self, rpc: str, result: ScoreResult, arrived: float, call_log: _CallLog
    ) -> None:
        """The log line of a sampled answer (the core's listeners count every decision)."""
        if self._sampler.should_log():
            # Card, terminal and merchant ids stay out: only what identifies the request.
            with call_log.bound(model_version=result.model_version):
                _log.info(
                    "scored",
                    rpc=rpc,
                    transaction_id=result.transaction_id,
                    decision=result.decision.name,
                    source=result.source.name,
                    fallback_reason=result.fallback_reason or "",
                    score=result.score,
                    latency_ms=round((time.monotonic() - arrived) * 1000, 3),
                )

    async def _fail(
        self, call_log: _CallLog, context: AnyContext, rpc: str, error: Exception, where: str = ""
    ) -> NoReturn:
        """End the call with the status `error` maps to; `where` prefixes the details."""
        code = status_for(error)
        if code is grpc.StatusCode.INTERNAL:
            # Logged whatever the sample: every one is a bug to fix. No request data.
            with call_log.bound():
                _log.error("internal_error", rpc=rpc, exc_info=error)
            await context.abort(code, INTERNAL_DETAILS)
        if self._sampler.should_log():
            field = error.field if isinstance(error, InvalidRequest) else None
            with call_log.bound():
                _log.info("refused", rpc=rpc, code=code.name, field=field)
        await context.abort(code, where + str(error))
