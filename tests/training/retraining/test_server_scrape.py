"""Tests for training.retraining.server_scrape: reading drift and shadow figures from servers'
/metrics."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from service.core.domain import Decision
from service.features.engine import FEATURE_NAMES
from service.model.artifact import Thresholds
from service.observability.drift import DriftCollector
from service.observability.metrics import MODEL_INFO, SHADOW_AGREEMENT_COUNTERS, SHADOW_COMPARISONS
from training.model_build.drift_reference import build_drift_reference
from training.retraining import server_scrape
from training.retraining.server_scrape import (
    SCORE_SUBJECT,
    ServerMetricsError,
    ShadowCounts,
    fetch_metrics,
    parse_metrics,
    read_servers,
)

URL = "http://127.0.0.1:9464/metrics"
SHADOWING_SERVER = """\
# TYPE fraud_shadow_comparisons_total counter
fraud_shadow_comparisons_total{agreement="agree"} 90.0
fraud_shadow_comparisons_total{agreement="disagree"} 10.0
# TYPE fraud_model_info gauge
fraud_model_info{alias="champion",version="20260901T000000Z-aaaaaaaa"} 1.0
fraud_model_info{alias="challenger",version="20260902T000000Z-bbbbbbbb"} 1.0
# TYPE fraud_drift_psi gauge
fraud_drift_psi{feature="amount"} 0.12
fraud_drift_psi{feature="mcc"} 0.31
# TYPE fraud_drift_score_psi gauge
fraud_drift_score_psi 0.05
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7e+09
"""
DRIFTING_SCORE_SERVER = """\
# TYPE fraud_shadow_comparisons_total counter
fraud_shadow_comparisons_total{agreement="agree"} 5.0
# TYPE fraud_drift_score_psi gauge
fraud_drift_score_psi 0.4
"""


class MetricsEndpoint:
    """A real HTTP server on 127.0.0.1 answering GET with a status and a body set by the test."""

    def __init__(self) -> None:
        self.status = 200
        self.body = ""
        self.on_request: Callable[[], object] = lambda: None
        """Called at each request before it is answered, while the client waits."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.on_request()
                payload = endpoint.body.encode()
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test output is not the place for access logs."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def endpoints() -> Iterator[list[MetricsEndpoint]]:
    """Two metrics endpoints, stopped after the test."""
    started = [MetricsEndpoint(), MetricsEndpoint()]
    yield started
    for endpoint in started:
        endpoint.close()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL on which nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def test_a_server_text_gives_psi_shadow_counts_aliases_and_start_time():
    """Every figure the loop needs is read from one server's exposition."""
    metrics = parse_metrics(URL, SHADOWING_SERVER)

    assert metrics.feature_psi == {"amount": 0.12, "mcc": 0.31}
    assert metrics.score_psi == 0.05
    assert metrics.shadow == ShadowCounts(agree=90, disagree=10)
    assert metrics.aliases["challenger"] == "20260902T000000Z-bbbbbbbb"
    assert metrics.started_at == 1.7e9


def test_a_server_without_drift_or_shadow_series_reads_as_empty():
    """A young drift window and no challenger export nothing: no PSI, no comparisons."""
    metrics = parse_metrics(URL, "# TYPE fraud_rpc_in_flight gauge\nfraud_rpc_in_flight 0.0\n")

    assert metrics.psi() == {}
    assert metrics.shadow.agreement is None
    assert metrics.started_at is None


def test_the_names_read_are_the_servers_metric_names():
    """The shadow counter and model-info gauge are read under the names the server exports."""
    [shadow_family] = SHADOW_COMPARISONS.describe()
    [model_info_family] = MODEL_INFO.describe()

    assert shadow_family.name + "_total" == server_scrape.SHADOW_COMPARISONS
    assert model_info_family.name == server_scrape.MODEL_INFO


def test_the_servers_own_shadow_counters_are_read():
    """Comparisons counted by the server's agreement counters show up, agree and disagree."""
    before = parse_metrics(URL, generate_latest(REGISTRY).decode())
    SHADOW_AGREEMENT_COUNTERS[True].inc(3)
    SHADOW_AGREEMENT_COUNTERS[False].inc()

    after = parse_metrics(URL, generate_latest(REGISTRY).decode())

    assert after.shadow - before.shadow == ShadowCounts(agree=3, disagree=1)
    assert after.started_at is not None


def test_the_servers_drift_collector_output_is_read():
    """Every feature's PSI and the score's come from a real drift collector's exposition."""
    rng = np.random.default_rng(3)
    reference_rows = rng.lognormal(2, 1, size=(2_000, len(FEATURE_NAMES))).astype(np.float32)
    amount = FEATURE_NAMES.index("amount")
    scores = reference_rows[:, amount] / (reference_rows[:, amount] + 300.0)
    thresholds = Thresholds(review=0.2, decline=0.6, policy="fixed for tests")
    reference = build_drift_reference(
        reference_rows, scores, thresholds, feature_names=FEATURE_NAMES, period="test"
    )
    collector = DriftCollector(window=500, min_rows=500)
    registry = CollectorRegistry()
    registry.register(collector)
    for row in reference_rows[:500].tolist():
        row[amount] *= 50
        collector.record(reference, row, 0.1, Decision.APPROVE)

    metrics = parse_metrics(URL, generate_latest(registry).decode())

    assert set(metrics.feature_psi) == set(FEATURE_NAMES)
    assert metrics.score_psi is not None
    assert max(metrics.feature_psi, key=metrics.feature_psi.__getitem__) == "amount"


def test_servers_are_read_over_http_and_their_shadow_counts_summed(endpoints):
    """Two servers: comparisons add up; the highest PSI names its subject and server."""
    first, second = endpoints
    first.body, second.body = SHADOWING_SERVER, DRIFTING_SCORE_SERVER

    look = read_servers([first.url, second.url])

    assert look.unreachable == {}
    assert look.shadow == ShadowCounts(agree=95, disagree=10)
    highest = look.highest_psi()
    assert highest is not None
    assert (highest.subject, highest.value, highest.url) == (SCORE_SUBJECT, 0.4, second.url)


def test_the_highest_psi_only_weighs_what_the_caller_judges(endpoints):
    """A filter that drops the score leaves the highest feature PSI."""
    first, second = endpoints
    first.body, second.body = SHADOWING_SERVER, DRIFTING_SCORE_SERVER
    look = read_servers([first.url, second.url])

    highest = look.highest_psi(lambda server: server.feature_psi)

    assert highest is not None
    assert (highest.subject, highest.value) == ("mcc", 0.31)


def test_a_server_that_does_not_answer_is_reported_not_raised(endpoints, closed_port_url):
    """A closed port is listed as unreachable; the other server's figures are still read."""
    endpoints[0].body = SHADOWING_SERVER

    look = read_servers([endpoints[0].url, closed_port_url])

    assert [server.url for server in look.servers] == [endpoints[0].url]
    assert set(look.unreachable) == {closed_port_url}


def test_an_http_error_is_reported_with_its_status(endpoints):
    """A 503 from the endpoint is a server that gave no metrics, with the status said."""
    endpoints[0].status = 503

    look = read_servers([endpoints[0].url])

    assert look.servers == ()
    assert "HTTP 503" in look.unreachable[endpoints[0].url]


def test_text_that_is_not_prometheus_is_reported(endpoints):
    """An endpoint answering something else (an HTML page) is reported, not parsed."""
    endpoints[0].body = "<html><body>login</body></html>\n"

    look = read_servers([endpoints[0].url])

    assert "not Prometheus text" in look.unreachable[endpoints[0].url]


def test_a_server_that_never_answers_times_out():
    """A server that accepts the connection but never replies is given up after the timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"

        look = read_servers([url], timeout=0.2)

    assert url in look.unreachable


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/metrics", "127.0.0.1:9464"])
def test_only_http_urls_are_read(url):
    """Other schemes are refused before any request is made."""
    with pytest.raises(ServerMetricsError, match="only http and https"):
        fetch_metrics(url)
