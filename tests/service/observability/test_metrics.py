"""Metrics: the exposition scraped over real HTTP, pre-bound children, model and state gauges.

The metrics live on the process-wide default registry, so every check compares values
before and after an action rather than assuming counters start at zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest

from service.core.domain import (
    Decision,
    DecisionSource,
    FallbackReason,
    Outcome,
    OutcomeFate,
    ScoreResult,
    Transaction,
)
from service.features import FeatureConfig, FeatureEngine, MemoryStore
from service.observability.metrics import (
    DECISION_COUNTERS,
    LATENCY_BUCKETS,
    SCORES,
    STAGE_BUCKETS,
    DecisionMetrics,
    SampledStageTimer,
    rpc_metrics,
    set_serving_model,
    start_metrics_server,
    track_feature_state,
)
from tests.metrics_scrape import Samples, scrape, scrape_families, value

SCORE_METHOD = "/fraud.v1.FraudScoring/Score"
OUR_FAMILIES = {
    "fraud_rpc_duration_seconds",
    "fraud_rpc_requests",
    "fraud_rpc_in_flight",
    "fraud_shed",
    "fraud_fallback",
    "fraud_decisions",
    "fraud_score",
    "fraud_model_info",
    "fraud_model_loaded_timestamp_seconds",
    "fraud_outcomes",
    "fraud_feature_state_entities",
    "fraud_stage_duration_seconds",
}
STAGES = ("features", "inference", "reasons")


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    """A metrics server on a free loopback port, stopped after the module."""
    server, port = start_metrics_server("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()


def test_server_binds_a_free_port_and_exposes_every_metric(metrics_url: str) -> None:
    """Port 0 gives a real port, and the exposition declares all the server's metrics."""
    assert not metrics_url.endswith(":0/metrics")
    families = {family.name for family in scrape_families(metrics_url)}
    assert families >= OUR_FAMILIES


def _label_values(samples: Samples, name: str, *labels: str) -> set[tuple[str, ...]]:
    """The values of `labels` in each series of the sample `name`."""
    return {
        tuple(dict(label_set)[label] for label in labels)
        for sample, label_set in samples
        if sample == name
    }


def test_pre_bound_series_are_exposed_before_any_request(metrics_url: str) -> None:
    """Every decision pair, fallback reason, outcome label and Score status code has a
    series from the start, and no other series exists."""
    samples = scrape(metrics_url)
    assert _label_values(samples, "fraud_decisions_total", "decision", "source") == {
        (decision, source)
        for decision in ("approve", "review", "decline")
        for source in ("model", "fallback", "rule")
    }
    assert _label_values(samples, "fraud_fallback_total", "reason") == {
        ("deadline",),
        ("model_unavailable",),
        ("model_error",),
        ("state_unavailable",),
        ("clock_skew",),
    }
    assert _label_values(samples, "fraud_outcomes_total", "is_fraud") == {("true",), ("false",)}
    score_codes = {
        code
        for rpc, code in _label_values(samples, "fraud_rpc_requests_total", "rpc", "code")
        if rpc == "Score"
    }
    assert score_codes == {code.name for code in grpc.StatusCode}


def test_decision_counter_counts_its_own_series(metrics_url: str) -> None:
    """Incrementing one pre-bound decision child moves that series only."""
    before = scrape(metrics_url)
    DECISION_COUNTERS[Decision.REVIEW, DecisionSource.MODEL].inc()
    DECISION_COUNTERS[Decision.REVIEW, DecisionSource.MODEL].inc()
    after = scrape(metrics_url)
    review = {"decision": "review", "source": "model"}
    approve = {"decision": "approve", "source": "model"}
    for labels, expected in ((review, 2), (approve, 0)):
        moved = value(after, "fraud_decisions_total", **labels) - value(
            before, "fraud_decisions_total", **labels
        )
        assert moved == expected


def _moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_decision_metrics_count_what_the_core_decided(metrics_url: str) -> None:
    """A model answer counts its decision and score, a fallback answer its decision and
    reason; a counted outcome counts under its label, an outranked one as outranked, an
    unknown transaction's or one the state could not look up as quarantined, by why; one
    too late for the features in none of them."""
    metrics = DecisionMetrics()
    tx = Transaction("tx-1", 1.7e9, "card", "term", 10.0)
    model_answer = ScoreResult("tx-1", 0.5, Decision.REVIEW, (), "v1", DecisionSource.MODEL, None)
    fallback_answer = ScoreResult(
        "tx-1", 0.0, Decision.APPROVE, (), "", DecisionSource.FALLBACK, FallbackReason.DEADLINE
    )
    before = scrape(metrics_url)
    metrics.on_answer(tx, None, model_answer, None)
    metrics.on_answer(tx, None, fallback_answer, None)
    metrics.on_outcome(Outcome("tx-1", True, 1.7e9), OutcomeFate.COUNTED, 0)
    metrics.on_outcome(Outcome("tx-2", True, 1.7e9), OutcomeFate.NOT_HELD, 0)
    metrics.on_outcome(Outcome("tx-1", False, 1.7e9), OutcomeFate.OUTRANKED, 0)
    metrics.on_outcome(Outcome("tx-3", False, 1.7e9), OutcomeFate.STATE_UNAVAILABLE, 0)
    metrics.on_outcome(Outcome("tx-1", False, 1.8e9), OutcomeFate.TOO_LATE, 0)
    after = scrape(metrics_url)

    assert _moved(before, after, "fraud_decisions_total", decision="review", source="model") == 1
    assert (
        _moved(before, after, "fraud_decisions_total", decision="approve", source="fallback") == 1
    )
    assert _moved(before, after, "fraud_score_count") == 1
    assert _moved(before, after, "fraud_fallback_total", reason="deadline") == 1
    assert _moved(before, after, "fraud_fallback_total", reason="model_error") == 0
    assert _moved(before, after, "fraud_outcomes_total", is_fraud="true") == 1
    assert value(after, "fraud_outcomes_total", is_fraud="false") == value(
        before, "fraud_outcomes_total", is_fraud="false"
    )
    assert _moved(before, after, "fraud_outcomes_outranked_total") == 1
    for reason in ("unknown_transaction", "state_unavailable"):
        assert _moved(before, after, "fraud_outcomes_quarantined_total", reason=reason) == 1


def test_every_quarantine_reason_has_a_series_from_the_start(metrics_url: str) -> None:
    """Both reasons an outcome is quarantined have a series before any outcome, and no
    other reason does."""
    samples = scrape(metrics_url)
    assert _label_values(samples, "fraud_outcomes_quarantined_total", "reason") == {
        ("unknown_transaction",),
        ("state_unavailable",),
    }


def test_latency_histogram_has_the_fine_buckets(metrics_url: str) -> None:
    """The RPC latency histogram exposes the 0.1 ms to 2.5 s buckets, plus +Inf."""
    samples = scrape(metrics_url)
    bounds = {
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "fraud_rpc_duration_seconds_bucket" and ("rpc", "Score") in labels
    }
    assert bounds == {*LATENCY_BUCKETS, math.inf}


def test_rpc_latency_and_status_land_in_their_series(metrics_url: str) -> None:
    """A 0.3 ms Score call counts in the 0.5 ms bucket, not the 0.25 ms one, and by status."""
    rpc = rpc_metrics(SCORE_METHOD)
    before = scrape(metrics_url)
    rpc.duration.observe(0.0003)
    rpc.requests[grpc.StatusCode.INVALID_ARGUMENT].inc()
    after = scrape(metrics_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    bucket = "fraud_rpc_duration_seconds_bucket"
    assert moved(bucket, rpc="Score", le="0.0005") == 1
    assert moved(bucket, rpc="Score", le="0.00025") == 0
    assert moved("fraud_rpc_duration_seconds_count", rpc="Score") == 1
    assert moved("fraud_rpc_requests_total", rpc="Score", code="INVALID_ARGUMENT") == 1
    assert moved("fraud_rpc_requests_total", rpc="Score", code="OK") == 0


def test_other_services_methods_are_bound_once_by_name(metrics_url: str) -> None:
    """A health check's children are created on first use, cached, and labelled by name."""
    method = "/grpc.health.v1.Health/Check"
    assert rpc_metrics(method) is rpc_metrics(method)
    rpc_metrics(method).requests[grpc.StatusCode.OK].inc()
    assert value(scrape(metrics_url), "fraud_rpc_requests_total", rpc="Check", code="OK") >= 1


def test_score_histogram_buckets(metrics_url: str) -> None:
    """A score of 0.97 counts in the 0.99 bucket and not in the 0.95 one."""
    before = scrape(metrics_url)
    SCORES.observe(0.97)
    after = scrape(metrics_url)
    for le, expected in (("0.99", 1), ("0.95", 0)):
        key = ("fraud_score_bucket", frozenset({("le", le)}))
        assert after[key] - before[key] == expected


def _served_versions(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["alias"], dict(labels)["version"]): sample
        for (name, labels), sample in samples.items()
        if name == "fraud_model_info"
    }


def test_serving_model_replaces_the_previous_version(metrics_url: str) -> None:
    """After a reload only the new version is reported for the alias, with its load time."""
    set_serving_model("champion", "2024-01-01-aaaa", loaded_at=1_700_000_000.0)
    set_serving_model("challenger", "2024-01-15-cccc", loaded_at=1_700_000_300.0)
    set_serving_model("champion", "2024-02-01-bbbb", loaded_at=1_700_000_600.0)
    samples = scrape(metrics_url)
    assert _served_versions(samples) == {
        ("champion", "2024-02-01-bbbb"): 1.0,
        ("challenger", "2024-01-15-cccc"): 1.0,
    }
    loaded = ("fraud_model_loaded_timestamp_seconds", frozenset({("alias", "champion")}))
    assert samples[loaded] == 1_700_000_600.0
    set_serving_model("challenger", None, loaded_at=1_700_000_900.0)
    assert _served_versions(scrape(metrics_url)) == {("champion", "2024-02-01-bbbb"): 1.0}


def test_feature_state_is_read_at_each_scrape(metrics_url: str) -> None:
    """The record gauges and the eviction counters show the store's at scrape time."""
    store = MemoryStore(max_records=2)
    track_feature_state(store)
    first = scrape(metrics_url)
    engine = FeatureEngine(FeatureConfig(), store)
    for number in range(3):
        engine.observe(Transaction(f"tx{number}", 1e9 + number, f"card{number}", "term", 1.0))
    second = scrape(metrics_url)
    name = "fraud_feature_state_entities"
    assert (value(first, name, kind="cards"), value(first, name, kind="terminals")) == (0, 0)
    assert (value(second, name, kind="cards"), value(second, name, kind="terminals")) == (2, 1)
    assert value(second, name, kind="transactions") == 2
    evicted = "fraud_feature_state_evictions_total"
    assert value(second, evicted, reason="capacity") == 2  # a card and a transaction
    assert value(second, evicted, reason="idle") == 0


def test_stage_histograms_are_exposed_for_every_stage_before_any_call(metrics_url: str) -> None:
    """Each scoring stage has its histogram, with the fine stage buckets, from the start."""
    samples = scrape(metrics_url)
    for stage in STAGES:
        bounds = {
            float(dict(labels)["le"])
            for name, labels in samples
            if name == "fraud_stage_duration_seconds_bucket" and ("stage", stage) in labels
        }
        assert bounds == {*STAGE_BUCKETS, math.inf}


def test_stage_timer_picks_the_first_call_then_one_in_every() -> None:
    """Every 4: calls 1, 5 and 9 of 10 are timed; every 1: all of them."""
    every_four = SampledStageTimer(4)
    assert [every_four.due() for _ in range(10)] == [n % 4 == 0 for n in range(10)]
    every_call = SampledStageTimer(1)
    assert all(every_call.due() for _ in range(10))


def test_stage_timer_refuses_a_period_below_one() -> None:
    """Timing one call in 0 (or fewer) means nothing."""
    with pytest.raises(ValueError, match="at least 1"):
        SampledStageTimer(0)
