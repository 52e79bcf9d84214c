"""Prometheus metrics of the scoring server, defined once, at import, on the default registry.

Label names are fixed and label values come from small closed sets (RPC method names, gRPC
status codes, decisions, fallback reasons), never from a request. The children the hot path
touches are bound here, so a request does no label lookup:

    rpc = rpc_metrics(handler_call_details.method)          # a dict lookup
    rpc.duration.observe(seconds); rpc.requests[code].inc()
    DECISION_COUNTERS[result.decision, result.source].inc(); SCORES.observe(result.score)

`DecisionMetrics` hears every answer and outcome of the scoring core (it is one of its
listeners); `SampledStageTimer` times the stages of one scoring call in `STAGE_TIMING_EVERY`:
a histogram observation is not free next to a call's own work, and a sample gives the same
percentiles (the histograms' counts are the sample's, a sixteenth of the calls).

`start_metrics_server` serves `/metrics` over HTTP on its own port. Each process has its own
metrics: with several server workers, each needs its own metrics port (or Prometheus
multiprocess mode, which this module does not set up).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Final, Literal, Protocol, get_args
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.core.domain import (
    Decision,
    DecisionSource,
    FallbackReason,
    Outcome,
    OutcomeFate,
    ScoreResult,
    Transaction,
)
from service.features.memory_store import Evictions
from service.features.state import EntityKind

# Fine-grained at the low end, where a scoring call's own work lies, up to 100 ms, past the
# budget; the last buckets only say how badly a stalled call overran.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# Most transactions score near 0, so the low end is logarithmic; thresholds sit anywhere.
SCORE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
    0.95, 0.99, 1.0,
)  # fmt: skip
# From the fastest stage (features) to the slowest (reasons), in fine steps; the upper
# buckets catch a stage stalled by a pause (GC, a model load holding the GIL).
STAGE_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.000075, 0.0001, 0.00015, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
)  # fmt: skip
STAGE_TIMING_EVERY: Final = 16
SCORING_SERVICE = "/fraud.v1.FraudScoring/"
SCORING_RPCS = ("Score", "ScoreStream", "ScoreBatch", "ReportOutcome", "GetModelInfo")

RPC_DURATION = Histogram(
    "fraud_rpc_duration_seconds",
    "Time the server took to answer an RPC, by method.",
    ["rpc"],
    buckets=LATENCY_BUCKETS,
)
RPC_REQUESTS = Counter(
    "fraud_rpc_requests", "RPCs answered, by method and gRPC status code.", ["rpc", "code"]
)
STAGE_DURATION = Histogram(
    "fraud_stage_duration_seconds",
    "Time spent in each stage of scoring one transaction: features (feature state), "
    "inference (ONNX score and decision), reasons (REVIEW and DECLINE only). One call in "
    f"{STAGE_TIMING_EVERY} is timed.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
IN_FLIGHT = Gauge("fraud_rpc_in_flight", "Scoring RPCs in progress (what shedding limits).")
STREAM_BATCH_SIZE = Histogram(
    "fraud_stream_batch_size",
    "ScoreStream transactions scored together: those waiting when the server came round to "
    "the stream (at most connections.stream_max_batch).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SIZE = Histogram(
    "fraud_batch_size",
    "ScoreBatch transactions per call (at most connections.batch_max_transactions; a call "
    "refused for its size is not observed).",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
SHED = Counter("fraud_shed", "Scoring RPCs refused at once because too many were in flight.")
FALLBACKS = Counter(
    "fraud_fallback", "Answers given by the fallback rules, by why the model did not.", ["reason"]
)
DECISIONS = Counter(
    "fraud_decisions",
    "Decisions made, by decision and by who decided (a repeat is not counted).",
    ["decision", "source"],
)
SCORES = Histogram("fraud_score", "Model scores returned.", buckets=SCORE_BUCKETS)
MODEL_INFO = Gauge(
    "fraud_model_info",
    "1 for the model version each alias serves (champion decides, challenger shadows).",
    ["alias", "version"],
)
MODEL_LOADED = Gauge(
    "fraud_model_loaded_timestamp_seconds",
    "When each alias's model was loaded, in Unix time.",
    ["alias"],
)
MODEL_LOADS = Counter("fraud_model_loads", "Models loaded and swapped in, by alias.", ["alias"])
REGISTRY_READABLE = Gauge(
    "fraud_model_registry_readable",
    "1 while the watcher's looks find the model registry's directory, 0 while it is gone (a "
    "mount lost, the directory moved): the models loaded keep serving, promotions are unseen.",
)
MODEL_LOAD_SECONDS = Histogram(
    "fraud_model_load_seconds",
    "Time to check, load and warm up a model before the swap, off the request path.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
MODEL_REFUSALS = Counter(
    "fraud_model_refusals",
    "Versions an alias pointed at that were refused (the old model kept serving), by reason.",
    ["alias", "reason"],
)
LIBRARY_DIFFERENCES = Gauge(
    "fraud_model_library_difference",
    "1 for each serving library whose version differs from the champion's training, by "
    "severity (major differences are refused unless allowed).",
    ["library", "severity"],
)
SHADOW_SCORES = Histogram(
    "fraud_shadow_score", "Challenger scores of the champion's transactions.", buckets=SCORE_BUCKETS
)
SHADOW_COMPARISONS = Counter(
    "fraud_shadow_comparisons",
    "Transactions scored by the challenger, by whether its decision agreed with the champion's.",
    ["agreement"],
)
SHADOW_SCORE_DIFFERENCE = Histogram(
    "fraud_shadow_score_difference",
    "Absolute difference between the challenger's and the champion's score.",
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SHADOW_SKIPPED = Counter(
    "fraud_shadow_skipped",
    "Transactions the challenger did not score, by why (backlog full, challenger error).",
    ["reason"],
)
OUTCOMES = Counter("fraud_outcomes", "Outcomes reported, by label.", ["is_fraud"])
OUTCOMES_OUTRANKED = Counter(
    "fraud_outcomes_outranked",
    "Outcomes of held transactions whose label an earlier report by a higher-ranked caller "
    "kept (logged, not counted in the features).",
)
OUTCOMES_QUARANTINED = Counter(
    "fraud_outcomes_quarantined",
    "Outcomes of transactions the feature state does not hold (unknown_transaction) or "
    "could not look up (state_unavailable), sent to the quarantine, not the outcome log.",
    ["reason"],
)
OUTCOMES_RATE_LIMITED = Counter(
    "fraud_outcomes_rate_limited",
    "ReportOutcome calls refused with RESOURCE_EXHAUSTED because their caller was over its "
    "rate, by configured caller.",
    ["caller"],
)
RECORD_LOG_DROPPED = Counter(
    "fraud_record_log_dropped",
    "Records the decision or outcome log did not write, by log and reason (queue full, "
    "log closed, write error).",
    ["log", "reason"],
)
RECORD_LOG_WRITTEN = Counter(
    "fraud_record_log_written", "Records written by the decision or outcome log.", ["log"]
)
AUTH_REFUSALS = Counter(
    "fraud_auth_refusals",
    "Calls refused for want of an identity (UNAUTHENTICATED) or of the method's role "
    "(PERMISSION_DENIED), by method and configured caller (empty: none identified).",
    ["rpc", "caller", "code"],
)
OPEN_STREAMS = Gauge(
    "fraud_streams_open", "ScoreStream calls open (what connections.max_open_streams limits)."
)
CALLS_ENDED_EARLY = Counter(
    "fraud_calls_ended_early",
    "Calls the server ended without their work, by why: the deadline had passed when the "
    "server picked the call up, the request did not arrive in time, the stream was idle, "
    "or open too long.",
    ["reason"],
)
FEATURE_STATE = Gauge(
    "fraud_feature_state_entities",
    "Records in the feature state's store (all workers sharing it), by kind.",
    ["kind"],
)

FEATURES_STAGE = STAGE_DURATION.labels("features")
INFERENCE_STAGE = STAGE_DURATION.labels("inference")
REASONS_STAGE = STAGE_DURATION.labels("reasons")
DECISION_COUNTERS = {
    (decision, source): DECISIONS.labels(decision.name.lower(), source.name.lower())
    for decision in Decision
    for source in DecisionSource
}
FALLBACK_COUNTERS = {reason: FALLBACKS.labels(reason.value) for reason in FallbackReason}
OUTCOME_COUNTERS = {is_fraud: OUTCOMES.labels(str(is_fraud).lower()) for is_fraud in (True, False)}
SHADOW_AGREEMENT_COUNTERS = {
    agreed: SHADOW_COMPARISONS.labels("agree" if agreed else "disagree") for agreed in (True, False)
}
# Why the server ended a call without doing its work (`CALLS_ENDED_EARLY`).
EarlyEnd = Literal["deadline_passed", "request_not_sent", "stream_idle", "stream_lifetime"]
EARLY_END_COUNTERS: dict[EarlyEnd, Counter] = {
    reason: CALLS_ENDED_EARLY.labels(reason) for reason in get_args(EarlyEnd)
}
# Why an outcome went to the quarantine instead of the outcome log.
QuarantineReason = Literal["unknown_transaction", "state_unavailable"]
QUARANTINE_COUNTERS: dict[QuarantineReason, Counter] = {
    reason: OUTCOMES_QUARANTINED.labels(reason) for reason in get_args(QuarantineReason)
}
# No unidentified call reaches a rate check, so this series stays at 0: it gives the family
# a series before any caller is configured, for the dashboard and alert rules.
OUTCOMES_RATE_LIMITED.labels("")
# Why the challenger did not score a transaction the champion decided.
ShadowSkipReason = Literal["backlog_full", "challenger_error"]
SHADOW_SKIP_COUNTERS: dict[ShadowSkipReason, Counter] = {
    reason: SHADOW_SKIPPED.labels(reason) for reason in get_args(ShadowSkipReason)
}


class SampledStageTimer:
    """Times the stages of the first scoring call, then of one in `every`
    (`service.core.ports.StageTimer`).

    Every n-th call rather than a random draw: a countdown costs less, and periodic traffic
    in step with it would only tilt latency percentiles, which no decision depends on.
    """

    __slots__ = ("_every", "_left")

    def __init__(self, every: int = STAGE_TIMING_EVERY) -> None:
        """Time one call in `every` (1: every call)."""
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self._every = every
        self._left = 1

    def due(self) -> bool:
        """Whether this call is timed."""
        self._left -= 1
        if self._left:
            return False
        self._left = self._every
        return True

    def features(self, seconds: float) -> None:
        """The feature state's update took `seconds`."""
        FEATURES_STAGE.observe(seconds)

    def inference(self, seconds: float) -> None:
        """The model's score and the decision took `seconds`."""
        INFERENCE_STAGE.observe(seconds)

    def reasons(self, seconds: float) -> None:
        """The reasons took `seconds`."""
        REASONS_STAGE.observe(seconds)


class DecisionMetrics:
    """Counts the scoring core's decisions, scores, fallbacks and applied outcomes.

    An answer listener and an outcome listener of the core (`service.core.ports`): a repeat
    answered from the idempotency cache is not a new decision and is not counted again.
    """

    __slots__ = ()

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: object | None,
    ) -> None:
        """Count the decision, and the score or why the fallback answered."""
        DECISION_COUNTERS[result.decision, result.source].inc()
        reason = result.fallback_reason
        if reason is None:
            SCORES.observe(result.score)
        else:
            FALLBACK_COUNTERS[reason].inc()

    def on_outcome(self, outcome: Outcome, fate: OutcomeFate, rank: int) -> None:
        """Count an outcome the feature state counted, by label; one an earlier report by a
        higher-ranked caller outranked; one sent to the quarantine, by why."""
        if fate is OutcomeFate.COUNTED:
            OUTCOME_COUNTERS[outcome.is_fraud].inc()
        elif fate is OutcomeFate.OUTRANKED:
            OUTCOMES_OUTRANKED.inc()
        elif fate is OutcomeFate.NOT_HELD:
            QUARANTINE_COUNTERS["unknown_transaction"].inc()
        elif fate is OutcomeFate.STATE_UNAVAILABLE:
            QUARANTINE_COUNTERS["state_unavailable"].inc()


class RpcMetrics:
    """The metric children of one RPC method, bound once."""

    __slots__ = ("duration", "requests")

    def __init__(self, rpc: str) -> None:
        """Children labelled `rpc`, with a request counter per gRPC status code."""
        self.duration = RPC_DURATION.labels(rpc)
        self.requests = {code: RPC_REQUESTS.labels(rpc, code.name) for code in grpc.StatusCode}


def rate_limited_counters(callers: Iterable[str]) -> dict[str, Counter]:
    """The rate-limit refusal counter of each caller, bound now: each series exists from
    the start at 0, and a refusal costs a dict lookup. Callers come from the settings."""
    return {caller: OUTCOMES_RATE_LIMITED.labels(caller) for caller in callers}


def auth_refusal_counters(
    rpcs: Iterable[str], callers: Iterable[str], codes: Iterable[grpc.StatusCode]
) -> dict[tuple[str, str, grpc.StatusCode], Counter]:
    """The refusal counter of each (method name, caller, status), bound now: each series
    exists from the start at 0 (an alert sees the first refusal as a rise), and a refusal
    costs a dict lookup. Callers come from the settings, never from a request, so the
    series are as many as methods x configured callers x statuses."""
    callers, codes = tuple(callers), tuple(codes)
    return {
        (rpc, caller, code): AUTH_REFUSALS.labels(rpc, caller, code.name)
        for rpc in rpcs
        for caller in callers
        for code in codes
    }


# The version each alias's MODEL_INFO child is labelled with, to remove it at the next swap.
_SERVED_VERSIONS: dict[str, str] = {}

_RPC_METRICS = {SCORING_SERVICE + rpc: RpcMetrics(rpc) for rpc in SCORING_RPCS}


def rpc_metrics(method: str) -> RpcMetrics:
    """The children for a full gRPC method path such as "/fraud.v1.FraudScoring/Score".

    Labelled with the method's name. Other services' methods (health, reflection) are bound
    on first use; their number is fixed by the services the server registers.
    """
    bound = _RPC_METRICS.get(method)
    if bound is None:
        bound = _RPC_METRICS[method] = RpcMetrics(method.rpartition("/")[2])
    return bound


def set_serving_model(alias: str, version: str | None, loaded_at: float) -> None:
    """Record that `alias` serves `version` (None: nothing), loaded at Unix time `loaded_at`."""
    previous = _SERVED_VERSIONS.pop(alias, None)
    if previous is not None:
        MODEL_INFO.remove(alias, previous)
        MODEL_LOADED.remove(alias)
    if version is not None:
        MODEL_INFO.labels(alias, version).set(1)
        MODEL_LOADED.labels(alias).set(loaded_at)
        _SERVED_VERSIONS[alias] = version


def start_refusal_counts(aliases: Iterable[str], reasons: Iterable[str]) -> None:
    """Make every (alias, reason) refusal series exist at 0, so alert rules see a rise."""
    reasons = tuple(reasons)
    for alias in aliases:
        for reason in reasons:
            MODEL_REFUSALS.labels(alias, reason)


def count_refusal(alias: str, reason: str) -> None:
    """Count a refused version (reloads are rare: the label lookup costs nothing here)."""
    MODEL_REFUSALS.labels(alias, reason).inc()


def set_library_differences(differences: Iterable[tuple[str, str]]) -> None:
    """Export the champion's (library, severity) differences from training, and no others."""
    LIBRARY_DIFFERENCES.clear()
    for library, severity in differences:
        LIBRARY_DIFFERENCES.labels(library, severity).set(1)


class StateStatistics(Protocol):
    """What `track_feature_state` reads from a feature state store."""

    @property
    def evictions(self) -> Evictions: ...

    def records(self, kind: EntityKind | None = None) -> int: ...


class _StateEvictions(Collector):
    """Records this process dropped from the store, read from it at each scrape."""

    def __init__(self, store: StateStatistics) -> None:
        self._store = store

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "fraud_feature_state_evictions",
            "Records dropped from the feature state: idle past the state horizon, or over "
            "the store's bound (capacity). Counted by this process (memory, LMDB), or by "
            "the server for every replica (Redis).",
            labels=["reason"],
        )
        family.add_metric(["idle"], self._store.evictions.idle)
        family.add_metric(["capacity"], self._store.evictions.capacity)
        yield family


_tracked_evictions: list[_StateEvictions] = []


def track_feature_state(store: StateStatistics) -> None:
    """Report `store`'s record counts and evictions, read at each scrape (no hot-path cost).

    The scrape runs in the metrics server's thread: the reads must be safe there (len() of
    dicts under the GIL in memory; a read transaction of its own in LMDB).
    """
    for kind, label in _KINDS:
        FEATURE_STATE.labels(label).set_function(functools.partial(store.records, kind))
    while _tracked_evictions:
        REGISTRY.unregister(_tracked_evictions.pop())
    collector = _StateEvictions(store)
    REGISTRY.register(collector)
    _tracked_evictions.append(collector)


_KINDS = (
    (EntityKind.CARD, "cards"),
    (EntityKind.TERMINAL, "terminals"),
    (EntityKind.MERCHANT, "merchants"),
    (None, "transactions"),
)


def start_metrics_server(host: str, port: int) -> tuple[WSGIServer, int]:
    """Serve `/metrics` on `host`:`port` from a daemon thread; returns the server and its port.

    Port 0 binds a free port, returned. Stop with `server.shutdown()` then `server_close()`.
    """
    server, _thread = start_http_server(port, addr=host)
    return server, server.server_port
