"""The server's own latency figures: Prometheus-style quantiles, scrapes, worker sums."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from benchmarks.measurements.server_latency import (
    Buckets,
    histogram_quantile,
    scrape_all,
    scrape_histogram,
    server_latency,
)

INF = float("inf")
BOUNDS = [0.001, 0.002, 0.004, INF]


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[str, Histogram]]:
    """A Prometheus endpoint on 127.0.0.1 with a `fraud_rpc_duration_seconds` histogram."""
    registry = CollectorRegistry()
    latency = Histogram(
        "fraud_rpc_duration_seconds", "test", ["rpc"], buckets=(0.001, 0.01), registry=registry
    )
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", latency
    finally:
        server.shutdown()
        server.server_close()


def test_quantile_interpolates_within_its_bucket():
    """As Prometheus: linear inside the bucket, from 0 below the first bound."""
    cumulative = np.array([50.0, 90.0, 100.0, 100.0])

    assert histogram_quantile(0.25, BOUNDS, cumulative) == pytest.approx(0.0005)
    assert histogram_quantile(0.7, BOUNDS, cumulative) == pytest.approx(0.0015)
    assert histogram_quantile(0.95, BOUNDS, cumulative) == pytest.approx(0.003)


def test_quantile_in_the_overflow_bucket_is_the_largest_finite_bound():
    """Observations above every bound cap the quantile at the last finite bound."""
    assert histogram_quantile(0.99, BOUNDS, np.array([1.0, 1.0, 1.0, 10.0])) == 0.004


def test_server_latency_counts_only_calls_between_scrapes():
    """Quantiles come from the bucket deltas, not from what the server saw before."""
    before = Buckets(BOUNDS, np.array([1000.0, 1000.0, 1000.0, 1000.0]))
    after = Buckets(BOUNDS, np.array([1000.0, 1100.0, 1100.0, 1100.0]))

    figures = server_latency(before, after)

    assert figures is not None
    assert figures.requests == 100
    assert figures.p50_ms == pytest.approx(1.5)
    assert figures.p99_ms == pytest.approx(1.99)


def test_server_latency_of_a_histogram_born_during_the_run_starts_from_zero():
    """A server exports an RPC's series from its first call: no series before means zeros."""
    figures = server_latency(Buckets([], np.array([])), Buckets(BOUNDS, np.array([10.0] * 4)))

    assert figures is not None
    assert figures.requests == 10


def test_server_latency_is_none_without_calls():
    """No call between the scrapes (or no series at all) gives no figures."""
    same = Buckets(BOUNDS, np.array([5.0] * 4))

    assert server_latency(same, same) is None
    assert server_latency(Buckets([], np.array([])), Buckets([], np.array([]))) is None


def test_scrape_reads_one_rpcs_buckets_from_a_metrics_endpoint(
    metrics_endpoint: tuple[str, Histogram],
):
    """The histogram of the asked RPC is read over HTTP, cumulative, bounds in order."""
    url, latency = metrics_endpoint
    latency.labels("Score").observe(0.0005)
    latency.labels("Score").observe(0.005)
    latency.labels("ReportOutcome").observe(0.5)

    buckets = scrape_histogram(url, "Score")

    assert buckets.upper_bounds == [0.001, 0.01, INF]
    assert buckets.cumulative.tolist() == [1.0, 2.0, 2.0]


def test_scrapes_of_several_workers_add_up(metrics_endpoint: tuple[str, Histogram]):
    """One endpoint per worker: their counts are summed bucket by bucket."""
    url, latency = metrics_endpoint
    latency.labels("Score").observe(0.005)

    buckets = scrape_all([url, url], "Score")

    assert buckets.cumulative.tolist() == [0.0, 2.0, 2.0]
