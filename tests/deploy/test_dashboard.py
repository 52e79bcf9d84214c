"""deploy/grafana/fraud-scoring.json: valid JSON on Grafana's grid, every query naming only
metrics a real `fraud-serve` exports (its /metrics scraped under a little traffic, so the
histogram and counter suffixes are the real ones), every panel described in the docs, and
every metric the service exports in the docs' metrics table."""

from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import grpc
import pytest
from prometheus_client.metrics_core import Metric

from service.grpc_api._proto.fraud.v1 import scoring_pb2, scoring_pb2_grpc
from service.grpc_api.client import build_outcome_request
from tests.conftest import TrainedModel
from tests.deploy.grafana_dashboard import expressions, load_dashboard, metric_names, panels
from tests.load_driver import history_requests
from tests.metrics_scrape import scrape_families
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "observability.md"
CALL_TIMEOUT = 10.0
SWIPES = 40
GRID_WIDTH = 24
# Metrics some panel must query: together they chart latency, throughput and errors, load
# shedding, fallbacks, decisions, scores, the model version and drift.
REQUIRED_METRICS = {
    "fraud_rpc_duration_seconds_bucket",  # latency percentiles
    "fraud_rpc_requests_total",  # throughput and errors
    "fraud_shed_total",
    "fraud_fallback_total",
    "fraud_decisions_total",
    "fraud_score_bucket",  # score distribution
    "fraud_model_info",  # model version over time
    "fraud_drift_psi",  # drift per feature
    "fraud_stage_duration_seconds_bucket",
}
# Variables Grafana itself defines.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}


@pytest.fixture(scope="module")
def scraped(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> list[Metric]:
    """The metric families of a real server's /metrics after swipes, an outcome and a model
    info call, its drift window small enough to export PSI and decision rates."""
    environment = {
        "FRAUD_DRIFT__WINDOW": "100",
        "FRAUD_DRIFT__MIN_ROWS": "10",
        "FRAUD_LOGGING__SAMPLE_RATE": "0",
        "FRAUD_DECISION_LOG__DIRECTORY": str(tmp_path_factory.mktemp("decisions")),
        "FRAUD_STATE__PATH": str(tmp_path_factory.mktemp("state")),
        "FRAUD_OUTCOME_LOG__DIRECTORY": str(tmp_path_factory.mktemp("outcomes")),
    }
    server = ServerProcess(
        "--registry", str(trained_model.registry), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0", environment=environment,
    )  # fmt: skip
    try:
        serving = server.wait_for("serving")
        _send_traffic(trained_model.history, f"127.0.0.1:{serving['port']}")
        families = scrape_families(f"http://127.0.0.1:{serving['metrics_port']}/metrics")
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.kill()
    return families


@pytest.fixture(scope="module")
def exported(scraped: list[Metric]) -> set[str]:
    """Every family and sample name the server exports (counters' with `_total`)."""
    return {family.name for family in scraped} | {
        sample.name for family in scraped for sample in family.samples
    }


def _send_traffic(history: Path, target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = scoring_pb2_grpc.FraudScoringStub(channel)
        requests: Iterator[scoring_pb2.ScoreRequest] = history_requests(history, "dash-")
        first = None
        for request in itertools.islice(requests, SWIPES):
            stub.Score(request, timeout=CALL_TIMEOUT)
            first = first or request.transaction
        assert first is not None
        # Reported a day after the swipe: a label years later could change no feature.
        reported_at = first.timestamp.ToDatetime(tzinfo=UTC) + timedelta(days=1)
        outcome = build_outcome_request(first.transaction_id, False, reported_at)
        stub.ReportOutcome(outcome, timeout=CALL_TIMEOUT)
        stub.GetModelInfo(scoring_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT)


def test_the_dashboard_is_grafana_json_laid_out_on_the_grid() -> None:
    """Valid JSON; unique panel ids; every panel inside the 24-column grid with a query."""
    dashboard = load_dashboard()
    assert (dashboard["uid"], dashboard["title"]) == ("fraud-scoring", "Fraud scoring")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= GRID_WIDTH
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_the_metric_name_extraction_sees_through_promql() -> None:
    """Names are found past functions, grouping, matchers, ranges and binary operators."""
    expr = (
        'histogram_quantile(0.99, sum by (le, rpc) (rate(a_bucket{rpc="Score", x=~"$y"}'
        "[$__rate_interval]))) / on (job) group_left (b) sum(b_total) and c unless d_sum > 0.5"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d_sum"}


def test_every_query_names_only_metrics_the_service_exports(exported: set[str]) -> None:
    """Each metric in each panel's query is a real sample or family name of /metrics."""
    for expr in expressions():
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} not exported; in {expr}"


def test_the_dashboard_queries_latency_traffic_decision_model_and_drift_metrics() -> None:
    """Some panel queries each of: RPC latency, requests and errors, shed and fallback counts,
    decisions, the score distribution, the model version over time, per-feature drift and
    stage durations."""
    shown = set().union(*(metric_names(expr) for expr in expressions()))
    assert shown >= REQUIRED_METRICS


def test_every_variable_a_query_uses_is_defined() -> None:
    """Queries use only the dashboard's own variables and Grafana's built-in ones."""
    defined = {variable["name"] for variable in load_dashboard()["templating"]["list"]}
    for expr in expressions():
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined | BUILTIN_VARIABLES, expr


def test_every_panel_is_described_on_the_dashboard_and_in_the_docs() -> None:
    """Each panel has a description and a section of its own title in the docs."""
    sections = set(re.findall(r"^#### (.+)$", DOCS.read_text(encoding="utf-8"), re.MULTILINE))
    for panel in panels():
        assert panel["description"], panel["title"]
        assert panel["title"] in sections, f"{panel['title']!r} is not described in the docs"


def test_every_metric_of_the_service_is_in_the_docs_table(scraped: list[Metric]) -> None:
    """Each fraud_ family exported has a row in the docs' metrics table, as it is queried."""
    documented = set(re.findall(r"^\| `(fraud_\w+)`", DOCS.read_text(encoding="utf-8"), re.M))
    # The client's creation-time gauges (`<counter or histogram>_created`) go with their metric.
    ours = [
        family
        for family in scraped
        if family.name.startswith("fraud_") and not family.name.endswith("_created")
    ]
    assert len(ours) >= 25
    for family in ours:
        name = family.name + "_total" if family.type == "counter" else family.name
        assert name in documented, f"{name} is not in the metrics table"
