"""The scoring use case: a raw transaction in, a decision out, within the caller's budget.

    validate → event time too far ahead? fallback "clock_skew" → budget gone? fallback
    "deadline" → already answered? same answer → feature state → model score → thresholds
    → reasons (REVIEW and DECLINE only)
    → the answer listeners (`service.core.ports.AnswerListener`: decision metrics, drift
      statistics, the challenger's shadow, the decision log), in the order given

Threading: a `Scorer` is NOT thread-safe. The feature state's session and the model's bound
buffers belong to one thread: the server calls the scorer from its asyncio event-loop
thread, one call at a time (a call never awaits).

Choices made for the caller, to whom a late answer costs more than a conservative one:

- Clock: a transaction whose event time is further ahead of the server's clock than
  `ScoringLimits.max_future_skew_seconds` is answered by the fallback policy ("clock_skew")
  and does NOT update the feature state: one of the two clocks is wrong, and a refusal
  would leave the caller with no answer at all, while counting it would move the card's,
  terminal's and merchant's windows to a wrong time. How far ahead it was goes to the
  `ClockSkewListener`, and so does an outcome's report time beyond the skew (that one is
  counted from the latest time allowed: `service.core.validation`).
- Deadline: a request whose deadline has passed when work would start is answered by the
  fallback policy ("deadline") and does NOT update the feature state. It was not worked on,
  so a retry is scored exactly as this attempt would have been. The check is made once,
  before the work: once the work has started, its answer is ready sooner than any retry.
- Idempotency: the feature state keeps each counted transaction as validated (card number
  already tokenised) and its answer, for as long as an outcome may still arrive, and shared
  by every worker and replica on the same store; the same request again gets the same
  answer and is not counted twice. The same transaction_id with other content is refused
  (ConflictingRepeat, naming the first field that differs): answering it from the first
  one's answer would approve a new payment on an old decision. A repeat whose deadline has
  passed gets the "deadline" fallback, like any late request: its caller has given up.
- Token key rotation: while the tokenizer holds a previous key, the card's token under it
  goes to the feature state with the transaction, which carries the card's history over
  to the current token the first time it sees the card (docs/security.md); a repeat of a
  transaction first scored under the previous token is the same transaction.
- No model loaded: the transaction still updates the feature state, so features are exact
  when a model arrives, and the fallback answers ("model_unavailable").
- Inference fails (or scores outside [0, 1]): logged, and the fallback answers
  ("model_error").
- The feature state's store fails (full disk, broken file): logged at most every 10 s,
  the fallback answers ("state_unavailable") and nothing is counted; an outcome the store
  cannot count raises StateUnavailable, after its listeners have heard it.
- Fallback disabled: ModelUnavailable instead of a fallback answer. With no model it is
  raised before the state is touched; after a failed inference the transaction stays
  counted, and a repeat raises ModelUnavailable again rather than counting it twice.
- The answer is decided inside the feature state's session and kept with the transaction,
  in one commit, so a retry finds both or neither. A repeat of a transaction counted but
  never answered (fallback disabled, or a state of an older version) gets the fallback
  answer ("state_unavailable"), kept from then on: refusing it would fail every retry
  until the record expires.

Lists and rules (`service.core.rules`, docs/rules.md): the rule book deciding now is read
once per call; after the model's score, its block and allow lists, then decline, review and
allow rules may decide instead of the thresholds (source RULE, the rule's reason first).
When the model cannot answer, the lists and the rules that need no score still apply
before the fallback policy; with no features computed ("clock_skew", "deadline"), the
lists and the rules that read only the transaction. The card's BIN is taken from the card
number before tokenisation, only when the book reads it, and lives for the call alone.

Stage timings: the `StageTimer` chooses the calls whose feature state, inference (score and
decision) and reasons stages are timed; reasons are timed only when computed, for REVIEW
and DECLINE.

Listeners: every answer but a repeat's is heard, with the transaction and its features, or
None for a "clock_skew" or "deadline" answer, which computed none. Such a transaction is not
counted, so a retry is answered, and heard, again: the decision log's readers keep its first
line that has features. A repeat is not a new decision: no listener hears it, no metric counts it.

Outcomes feed the same feature state: an outcome reported before its transaction's event
time counts from that event time (the state clamps it), as one reported right then would.
When reports on one transaction disagree, the state keeps the label of the highest-ranked
caller's report, the latest among equals (`service.core.label_conflicts`; a caller's rank
comes from `caller_ranks`, 0 by default). Every valid outcome is also heard by the outcome
listeners with what the state made of it (`OutcomeFate`): in the server, the outcome log
keeps those of transactions the state holds, and a quarantine of its own, with a byte
budget of its own, the others, so that a flood of made-up ids can never push a genuine
outcome out of the log (a late chargeback for a transaction the state has forgotten is
quarantined too, where retraining still finds it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Generic, NamedTuple

import structlog

from service.core.callers import current_caller
from service.core.card_data import first_card_number
from service.core.card_tokens import CardTokenizer
from service.core.domain import (
    FALLBACK_MODES,
    NANOS_PER_SECOND,
    Admitted,
    Decision,
    DecisionSource,
    EarlierAttempt,
    FallbackMode,
    FallbackReason,
    ModelSummary,
    OutcomeFate,
    RawOutcome,
    RawTransaction,
    Reason,
    ScoreResult,
    Transaction,
)
from service.core.errors import (
    ConflictingRepeat,
    ModelUnavailable,
    StateUnavailable,
    UnknownTransaction,
)
from service.core.label_conflicts import DEFAULT_RANK
from service.core.ports import (
    AnswerListener,
    BatchFeatureState,
    ClockSkewListener,
    DecisionThresholds,
    FeatureState,
    ModelSource,
    ModelT,
    OutcomeListener,
    RuleSource,
    SkewedTime,
    StageTimer,
)
from service.core.rules import RuleBook, Verdict, card_bin
from service.core.validation import ScoringLimits, to_outcome, to_transaction

_STATE_LOG_SECONDS = 10.0

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """How to decide when the model cannot; the composition root maps settings onto it.

    "amount_floor": APPROVE below `approve_below_minor` (minor units of the request's own
    currency), REVIEW from there up. "decline": DECLINE everything. "disabled": answer
    nothing (ModelUnavailable).
    """

    mode: FallbackMode = "amount_floor"
    approve_below_minor: int = 5_000

    def __post_init__(self) -> None:
        if self.mode not in FALLBACK_MODES:
            raise ValueError(f"fallback mode {self.mode!r} is not one of {FALLBACK_MODES}")
        if self.approve_below_minor < 0:
            raise ValueError("approve_below_minor must be 0 or more")


class _NoStageTimer:
    """Times nothing: for a scorer built without metrics (tools, tests of other things)."""

    def due(self) -> bool:
        return False

    def features(self, seconds: float) -> None:
        """Never called: no call is due."""

    def inference(self, seconds: float) -> None:
        """Never called: no call is due."""

    def reasons(self, seconds: float) -> None:
        """Never called: no call is due."""


class _NoClockSkewListener:
    """Hears nothing: for a scorer built without metrics."""

    def on_clock_skew(self, time: SkewedTime, seconds_ahead: float) -> None:
        """Nothing to record."""


class Scorer(Generic[ModelT]):
    """Scores transactions, records outcomes and describes the model. One thread only."""

    def __init__(
        self,
        features: FeatureState,
        models: ModelSource[ModelT],
        *,
        tokenizer: CardTokenizer,
        limits: ScoringLimits,
        fallback: FallbackPolicy,
        answer_listeners: Sequence[AnswerListener[ModelT]] = (),
        outcome_listeners: Sequence[OutcomeListener] = (),
        stage_timer: StageTimer | None = None,
        clock_skew_listener: ClockSkewListener | None = None,
        caller_ranks: Mapping[str, int] | None = None,
        rules: RuleSource | None = None,
    ) -> None:
        """Score with `features`' state and `models`' current model.

        `answer_listeners` hear every answer given to a counted transaction (not a repeat's),
        `outcome_listeners` every valid outcome; `stage_timer` chooses the calls whose
        stages are timed; `clock_skew_listener` hears each request time beyond the allowed
        skew; `rules` holds the lists and rules deciding before the thresholds;
        `caller_ranks` the rank of each caller whose reports outrank others' (0 if absent).
        """
        self._features = features
        self._batches = features if isinstance(features, BatchFeatureState) else None
        self._models = models
        self._tokenizer = tokenizer
        self._limits = limits
        self._fallback = fallback
        self._answer_listeners = tuple(answer_listeners)
        self._outcome_listeners = tuple(outcome_listeners)
        self._stages: StageTimer = stage_timer or _NoStageTimer()
        self._clock_skew: ClockSkewListener = clock_skew_listener or _NoClockSkewListener()
        self._max_skew = limits.max_future_skew_seconds
        self._caller_ranks: Mapping[str, int] = caller_ranks or {}
        self._rotating = tokenizer.rotating
        self._rules = rules
        self._state_logged_at = -math.inf

    def score(self, raw: RawTransaction, *, deadline: float | None = None) -> ScoreResult:
        """The decision for `raw`; `deadline` is the `time.monotonic()` value to answer by.

        InvalidRequest for bad input (the state is untouched), ModelUnavailable when neither
        the model nor the fallback may answer.
        """
        book = None if self._rules is None else self._rules.current
        planned = self._plan(raw, deadline, time.time_ns(), book)
        if planned.uncounted is not None:
            return self._answer_planned_uncounted(planned, planned.uncounted, book)
        model = self._models.current
        if model is None and self._fallback.mode == "disabled":
            raise ModelUnavailable("no model is loaded and the fallback is disabled")
        return self._count_one(planned, model, book)

    def score_batch(
        self,
        requests: Sequence[tuple[RawTransaction, float | None]],
        *,
        validate_all_first: bool = False,
    ) -> BatchAnswers:
        """The decisions for a stream's transactions (each with its `score` deadline), in
        order, equal to `score`'s one after the other; the first that fails ends the batch
        (its error is returned after the answers before it, nothing after it is counted).
        With `validate_all_first` (a unary batch, answered whole or not at all), every
        transaction is validated before any is counted: one that fails validation fails the
        batch with no answer and nothing counted (`failed_at` its position).

        The transactions are counted in one feature-state session where the store allows
        it, each seeing those before it, and the model scores those counted in one call.
        Each deadline is checked once, before the batch's work. A store failure sends each
        transaction through `score`'s path alone, so that a failure is its own; with the
        fallback disabled, or a feature state that counts one transaction at a time, the
        batch is scored one by one.
        """
        batches = self._batches
        each_alone = len(requests) == 1 or self._fallback.mode == "disabled" or batches is None
        if each_alone and not validate_all_first:
            return self._one_by_one(requests)
        book = None if self._rules is None else self._rules.current
        now_ns = time.time_ns()
        planned: list[_Planned] = []
        error: Exception | None = None
        for raw, deadline in requests:
            try:
                planned.append(self._plan(raw, deadline, now_ns, book))
            except Exception as failure:  # that transaction's error, after the ones before
                if validate_all_first:
                    return BatchAnswers([], failure, len(planned))
                error = failure
                break
        if each_alone or batches is None:
            return self._count_each(planned, book)
        model = self._models.current
        counted = [one for one in planned if one.uncounted is None]
        admitted = self._admit_batch(batches, counted, model, book) if counted else []
        answers: list[ScoreResult] = []
        answered_at: dict[str, int] = {}  # each id's answer in the batch, for its repeats
        at = 0
        for one in planned:
            try:
                if one.uncounted is not None:
                    result = self._answer_planned_uncounted(one, one.uncounted, book)
                elif admitted is None:  # the batch's session failed: one session each
                    result = self._count_one(one, model, book)
                else:
                    result = self._answer_admitted(one, admitted[at], model, answers, answered_at)
                    at += 1
            except Exception as failure:
                error = failure
                break
            answers.append(result)
        return BatchAnswers(answers, error)

    def _one_by_one(self, requests: Sequence[tuple[RawTransaction, float | None]]) -> BatchAnswers:
        return score_one_by_one(self.score, requests)

    def _count_each(self, planned: Sequence[_Planned], book: RuleBook | None) -> BatchAnswers:
        """`score`'s work after validation, for each of `planned` in turn, until one fails."""
        answers: list[ScoreResult] = []
        for one in planned:
            try:
                if one.uncounted is not None:
                    answers.append(self._answer_planned_uncounted(one, one.uncounted, book))
                    continue
                model = self._models.current
                if model is None and self._fallback.mode == "disabled":
                    raise ModelUnavailable("no model is loaded and the fallback is disabled")
                answers.append(self._count_one(one, model, book))
            except Exception as failure:
                return BatchAnswers(answers, failure)
        return BatchAnswers(answers)

    def _plan(
        self, raw: RawTransaction, deadline: float | None, now_ns: int, book: RuleBook | None
    ) -> _Planned:
        """`raw` validated, and why it is answered without being counted, if it is."""
        tx = to_transaction(raw, limits=self._limits, tokenizer=self._tokenizer)
        bin_ = card_bin(first_card_number(raw.card_id)) if book and book.reads_bin else ""
        ahead = tx.timestamp - now_ns / NANOS_PER_SECOND
        if ahead > self._max_skew:
            return _Planned(raw, tx, bin_, FallbackReason.CLOCK_SKEW, None, ahead)
        if deadline is not None and time.monotonic() >= deadline:
            return _Planned(raw, tx, bin_, FallbackReason.DEADLINE, None)
        previous_card_id = self._tokenizer.previous_token(raw.card_id) if self._rotating else None
        return _Planned(raw, tx, bin_, None, previous_card_id)

    def _answer_planned_uncounted(
        self, planned: _Planned, reason: FallbackReason, book: RuleBook | None
    ) -> ScoreResult:
        if reason is FallbackReason.CLOCK_SKEW:
            self._clock_skew.on_clock_skew("event_time", planned.ahead)
        return self._answer_uncounted(
            planned.tx, planned.raw.amount_minor, reason, book, planned.bin_
        )

    def _count_one(
        self, planned: _Planned, model: ModelT | None, book: RuleBook | None
    ) -> ScoreResult:
        """`planned` counted in a session of its own and answered (see `score`)."""
        raw, tx, bin_, previous_card_id = planned.raw, planned.tx, planned.bin_, planned.previous
        stages = self._stages
        timed = stages.due()
        deciding = 0.0  # of the session's time, the model's (run again on a conflict)
        refusal: ModelUnavailable | None = None

        def decide(features: Sequence[float]) -> ScoreResult | None:
            """Runs inside the state's session, so the answer is kept with the transaction."""
            nonlocal deciding, refusal
            started_deciding = perf_counter()
            try:
                return self._decide(model, tx, raw.amount_minor, features, timed, book, bin_)
            except ModelUnavailable as error:  # the fallback is disabled: counted, unanswered
                refusal = error
                return None
            finally:
                deciding += perf_counter() - started_deciding

        started = perf_counter()
        try:
            admitted = self._features.admit(tx, decide, previous_card_id=previous_card_id)
        except Exception:
            self._state_failed("state_unavailable")
            return self._answer_uncounted(
                tx, raw.amount_minor, FallbackReason.STATE_UNAVAILABLE, book, bin_
            )
        if timed:
            stages.features(perf_counter() - started - deciding)
        if isinstance(admitted, EarlierAttempt):
            return self._answer_repeat(tx, raw.amount_minor, previous_card_id, *admitted)
        features, answer = admitted
        if answer is None:
            raise refusal or ModelUnavailable("the model could not answer; fallback disabled")
        decided_by = model if answer.fallback_reason is None else None
        for listener in self._answer_listeners:
            listener.on_answer(tx, features, answer, decided_by)
        return answer

    def _admit_batch(
        self,
        batches: BatchFeatureState,
        counted: list[_Planned],
        model: ModelT | None,
        book: RuleBook | None,
    ) -> list[Admitted | EarlierAttempt] | None:
        """`counted` through the feature state as one batch, decided by one model call;
        None when the store failed (nothing was counted)."""
        timed = self._stages.due()
        deciding = 0.0

        def decide(rows: Sequence[tuple[int, list[float]]]) -> list[ScoreResult]:
            nonlocal deciding
            started_deciding = perf_counter()
            try:
                return self._decide_rows(
                    model, [(counted[at], row) for at, row in rows], timed, book
                )
            finally:
                deciding += perf_counter() - started_deciding

        def go_on(at: int, attempt: EarlierAttempt) -> bool:
            one = counted[at]
            return _as_first(one.tx, one.previous, attempt.transaction) == attempt.transaction

        started = perf_counter()
        try:
            admitted = batches.admit_many(
                [one.tx for one in counted],
                decide,
                previous_card_ids=[one.previous for one in counted],
                go_on=go_on,
            )
        except Exception:
            self._state_failed("state_unavailable")
            return None
        if timed:  # each transaction's share of the session, as one call's features stage
            share = (perf_counter() - started - deciding) / len(counted)
            for _ in admitted:
                self._stages.features(share)
        return admitted

    def _answer_admitted(
        self,
        planned: _Planned,
        admitted: Admitted | EarlierAttempt,
        model: ModelT | None,
        answers: list[ScoreResult],
        answered_at: dict[str, int],
    ) -> ScoreResult:
        """The answer to `planned` from what the batch's session made of it, heard by the
        listeners as `score` would have it heard."""
        tx = planned.tx
        if isinstance(admitted, EarlierAttempt):
            first, answer = admitted
            earlier_in_batch = answered_at.get(tx.transaction_id)
            if answer is None and earlier_in_batch is not None:
                _check_repeat(tx, planned.previous, first)
                return answers[earlier_in_batch]
            result = self._answer_repeat(tx, planned.raw.amount_minor, planned.previous, *admitted)
            answered_at.setdefault(tx.transaction_id, len(answers))
            return result
        features, answer = admitted
        if answer is None:
            raise ModelUnavailable("the model could not answer; fallback disabled")
        answered_at[tx.transaction_id] = len(answers)
        decided_by = model if answer.fallback_reason is None else None
        for listener in self._answer_listeners:
            listener.on_answer(tx, features, answer, decided_by)
        return answer

    def report_outcome(self, raw: RawOutcome) -> None:
        """Count a confirmed label from its report time on, unless an earlier report by a
        higher-ranked caller holds the label, and tell the outcome listeners what became of
        it (the caller is the call's, `service.core.callers`; its rank `caller_ranks`').

        InvalidRequest for bad input (nothing kept). UnknownTransaction when the feature
        state does not hold the transaction (never scored, or forgotten: past the state
        horizon, dropped, scored before a restart of an in-memory state) or holds it but
        the report comes too late to change any feature; StateUnavailable when the store
        fails. The listeners hear every valid outcome, with its fate: the outcome log keeps
        those of held transactions, the quarantine the others.
        """
        now_ns = time.time_ns()
        outcome = to_outcome(raw, now_ns=now_ns, limits=self._limits)
        sent_ns = raw.reported_at_ns
        if (
            sent_ns is not None
            and (ahead := (sent_ns - now_ns) / NANOS_PER_SECOND) > self._max_skew
        ):
            self._clock_skew.on_clock_skew("reported_at", ahead)
        rank = self._caller_ranks.get(current_caller(), DEFAULT_RANK)
        fate = OutcomeFate.STATE_UNAVAILABLE
        try:
            fate = self._features.report_outcome(
                outcome.transaction_id, outcome.is_fraud, outcome.reported_at, rank
            )
        except Exception as error:
            self._state_failed("state_unavailable")
            raise StateUnavailable("the feature state could not count the outcome") from error
        finally:  # a valid outcome is kept, in the log or the quarantine, whatever the state did
            for listener in self._outcome_listeners:
                listener.on_outcome(outcome, fate, rank)
        if fate is OutcomeFate.NOT_HELD:
            raise UnknownTransaction(
                "transaction_id unknown to this server's features (never scored, or "
                "forgotten); the outcome is quarantined, apart from the outcome log"
            )
        if fate is OutcomeFate.TOO_LATE:
            raise UnknownTransaction(
                "transaction_id too old to affect any feature; the outcome is kept for retraining"
            )

    def _answer_uncounted(
        self,
        tx: Transaction,
        amount_minor: int,
        reason: FallbackReason,
        book: RuleBook | None,
        bin_: str,
    ) -> ScoreResult:
        """The lists', the transaction-only rules' or the fallback's answer to `tx`, which
        the feature state did not count, heard by the listeners without features."""
        result = self._without_model(tx, amount_minor, reason, book, None, bin_)
        for listener in self._answer_listeners:
            listener.on_answer(tx, None, result, None)
        return result

    def _answer_repeat(
        self,
        tx: Transaction,
        amount_minor: int,
        previous_card_id: str | None,
        first: Transaction,
        answer: ScoreResult | None,
    ) -> ScoreResult:
        """The answer to `tx`, a repeat of `first`'s transaction_id (`first` may name the
        card by `previous_card_id`, its token under the key being rotated out).

        One counted but never answered (the process died, or the store failed to keep the
        answer, between the two) gets the fallback answer now, kept for later repeats:
        refusing it would make every retry fail until the record expires. With the
        fallback disabled, ModelUnavailable.
        """
        _check_repeat(tx, previous_card_id, first)
        if answer is not None:
            return answer
        result = self._fall_back(tx.transaction_id, amount_minor, FallbackReason.STATE_UNAVAILABLE)
        try:
            self._features.record_answer(tx.transaction_id, result)
        except Exception:
            self._state_failed("state_answer_not_kept")
        for listener in self._answer_listeners:
            listener.on_answer(tx, None, result, None)
        return result

    def _state_failed(self, event: str) -> None:
        """Log a store failure with its trace, at most once per `_STATE_LOG_SECONDS`: a
        failing store fails every call, and the log must not drown."""
        now = time.monotonic()
        if now >= self._state_logged_at + _STATE_LOG_SECONDS:
            self._state_logged_at = now
            _log.exception(event)

    def model_summary(self) -> ModelSummary:
        """The model deciding now; ModelUnavailable when none is loaded."""
        model = self._models.current
        if model is None:
            raise ModelUnavailable("no model is loaded")
        return model.summary()

    def _decide(
        self,
        model: ModelT | None,
        tx: Transaction,
        amount_minor: int,
        features: Sequence[float],
        timed: bool,
        book: RuleBook | None,
        bin_: str,
    ) -> ScoreResult:
        if model is None:
            return self._without_model(
                tx, amount_minor, FallbackReason.MODEL_UNAVAILABLE, book, features, bin_
            )
        # Any failure of a verified model is unexpected: answer by the rules, keep the trace.
        try:
            started = perf_counter()
            score = model.scorer.score_one(features)
        except Exception:
            _log.exception("model_error", model_version=model.version)
            return self._without_model(
                tx, amount_minor, FallbackReason.MODEL_ERROR, book, features, bin_
            )
        scoring = perf_counter() - started
        return self._decide_scored(
            model, tx, amount_minor, features, score, scoring, timed, book, bin_
        )

    def _decide_rows(
        self,
        model: ModelT | None,
        rows: Sequence[tuple[_Planned, list[float]]],
        timed: bool,
        book: RuleBook | None,
    ) -> list[ScoreResult]:
        """The answers to a batch's counted transactions, their rows scored in one call."""
        if model is None or len(rows) == 1:
            return [
                self._decide(model, one.tx, one.raw.amount_minor, row, timed, book, one.bin_)
                for one, row in rows
            ]
        try:
            started = perf_counter()
            scores = [float(score) for score in model.scorer.score_batch([row for _, row in rows])]
            scoring = (perf_counter() - started) / len(rows)  # each row's share
        except Exception:
            _log.exception("model_error", model_version=model.version)
            return [
                self._without_model(
                    one.tx, one.raw.amount_minor, FallbackReason.MODEL_ERROR, book, row, one.bin_
                )
                for one, row in rows
            ]
        return [
            self._decide_scored(
                model, one.tx, one.raw.amount_minor, row, score, scoring, timed, book, one.bin_
            )
            for (one, row), score in zip(rows, scores, strict=True)
        ]

    def _decide_scored(
        self,
        model: ModelT,
        tx: Transaction,
        amount_minor: int,
        features: Sequence[float],
        score: float,
        scoring_seconds: float,
        timed: bool,
        book: RuleBook | None,
        bin_: str,
    ) -> ScoreResult:
        """The answer to `tx` once the model has scored it (`scoring_seconds` its share)."""
        transaction_id = tx.transaction_id
        try:
            started = perf_counter()
            decision = decision_for(score, model.thresholds)
            inferred = perf_counter()
            reasons = () if decision is Decision.APPROVE else model.explainer.explain(features)
        except Exception:
            _log.exception("model_error", model_version=model.version)
            return self._without_model(
                tx, amount_minor, FallbackReason.MODEL_ERROR, book, features, bin_
            )
        if timed:  # reasons first: their clock is still running
            if decision is not Decision.APPROVE:
                self._stages.reasons(perf_counter() - inferred)
            self._stages.inference(scoring_seconds + inferred - started)
        verdict = None if book is None else book.decide(tx, features, score, bin_)
        if verdict is not None:
            return _ruled(transaction_id, score, reasons, model.version, None, verdict)
        return ScoreResult(
            transaction_id, score, decision, reasons, model.version, DecisionSource.MODEL, None
        )

    def _without_model(
        self,
        tx: Transaction,
        amount_minor: int,
        reason: FallbackReason,
        book: RuleBook | None,
        features: Sequence[float] | None,
        bin_: str,
    ) -> ScoreResult:
        """The answer when the model cannot give one: the lists' and the rules' that read
        no score (nor features, when there are none), else the fallback policy's."""
        verdict = None if book is None else book.decide(tx, features, None, bin_)
        if verdict is not None:
            return _ruled(tx.transaction_id, 0.0, (), "", reason, verdict)
        return self._fall_back(tx.transaction_id, amount_minor, reason)

    def _fall_back(
        self, transaction_id: str, amount_minor: int, reason: FallbackReason
    ) -> ScoreResult:
        mode = self._fallback.mode
        if mode == "disabled":
            raise ModelUnavailable(f"the model could not answer ({reason}); fallback disabled")
        if mode == "decline":
            decision = Decision.DECLINE
        elif amount_minor < self._fallback.approve_below_minor:
            decision = Decision.APPROVE
        else:
            decision = Decision.REVIEW
        return ScoreResult(transaction_id, 0.0, decision, (), "", DecisionSource.FALLBACK, reason)


@dataclass(frozen=True, slots=True)
class BatchAnswers:
    """The answers to a batch's first transactions, in order, and what the next one failed
    with (None when every one was answered): the one at `failed_at`, or when None, the one
    after the answers."""

    answers: list[ScoreResult]
    error: Exception | None = None
    failed_at: int | None = None

    @property
    def failed_position(self) -> int:
        """The position in the batch of the transaction that failed (with `error`)."""
        return len(self.answers) if self.failed_at is None else self.failed_at


def score_one_by_one(
    score: Callable[..., ScoreResult], requests: Sequence[tuple[RawTransaction, float | None]]
) -> BatchAnswers:
    """`score(raw, deadline=deadline)` of each request in turn, until the first that fails."""
    answers: list[ScoreResult] = []
    for raw, deadline in requests:
        try:
            answers.append(score(raw, deadline=deadline))
        except Exception as failure:
            return BatchAnswers(answers, failure)
    return BatchAnswers(answers)


class _Planned(NamedTuple):
    """A transaction validated, and why it is answered without being counted (None: it is
    counted); `previous` is its card's token under a key being rotated out."""

    raw: RawTransaction
    tx: Transaction
    bin_: str
    uncounted: FallbackReason | None
    previous: str | None
    ahead: float = 0.0


def _as_first(tx: Transaction, previous_card_id: str | None, first: Transaction) -> Transaction:
    """`tx` as `first` would name it: its card by its previous token if `first` did."""
    if previous_card_id is not None and first.card_id == previous_card_id:
        return tx._replace(card_id=previous_card_id)  # the same card, as first named
    return tx


def _check_repeat(tx: Transaction, previous_card_id: str | None, first: Transaction) -> None:
    """ConflictingRepeat unless `tx` is `first` again."""
    as_first = _as_first(tx, previous_card_id, first)
    if as_first != first:
        raise ConflictingRepeat(_first_difference(as_first, first))


def _ruled(
    transaction_id: str,
    score: float,
    reasons: tuple[Reason, ...],
    model_version: str,
    fallback_reason: FallbackReason | None,
    verdict: Verdict,
) -> ScoreResult:
    """The answer a list or rule decided: its reason first, then the model's, if any."""
    return ScoreResult(
        transaction_id,
        score,
        verdict.decision,
        (verdict.reason, *reasons),
        model_version,
        DecisionSource.RULE,
        fallback_reason,
        verdict.rule_id,
        verdict.version,
    )


def _first_difference(tx: Transaction, first: Transaction) -> str:
    """The request field, as the proto names it, of the first difference in proto order."""
    for attribute, field in _FIELDS_IN_PROTO_ORDER:
        if getattr(tx, attribute) != getattr(first, attribute):
            return field
    raise AssertionError("the transactions differ in no field")  # pragma: no cover


# Each Transaction attribute and the request field it comes from, in the proto's order.
_FIELDS_IN_PROTO_ORDER = (
    ("card_id", "transaction.card_id"),
    ("terminal_id", "transaction.terminal_id"),
    ("merchant_id", "transaction.merchant_id"),
    ("amount", "transaction.amount_minor"),
    ("currency", "transaction.currency"),
    ("timestamp", "transaction.timestamp"),
    ("mcc", "transaction.mcc"),
    ("entry_mode", "transaction.entry_mode"),
    ("card_present", "transaction.card_present"),
    ("country", "transaction.country"),
)


def decision_for(score: float, thresholds: DecisionThresholds) -> Decision:
    """DECLINE at or above the decline threshold, REVIEW at or above review, else APPROVE."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score {score!r} is not a probability")
    if score >= thresholds.decline:
        return Decision.DECLINE
    if score >= thresholds.review:
        return Decision.REVIEW
    return Decision.APPROVE
