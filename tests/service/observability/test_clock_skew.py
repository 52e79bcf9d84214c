"""Tests for service.observability.clock_skew: how far ahead of the server's clock request
times were, scraped over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.observability.clock_skew import CLOCK_SKEW_BUCKETS, ClockSkewMetrics
from service.observability.metrics import start_metrics_server
from tests.metrics_scrape import scrape, value


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    server, port = start_metrics_server("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()


def test_both_times_have_a_series_before_any_skew(metrics_url: str) -> None:
    """Event and report times each have a series from the start, so a rise from 0 shows."""
    samples = scrape(metrics_url)
    for time in ("event_time", "reported_at"):
        assert value(samples, "fraud_clock_skew_seconds_count", time=time) >= 0


def test_each_skew_lands_in_its_time_s_series_and_bucket(metrics_url: str) -> None:
    """Ten minutes ahead: one more in event_time's count, in the 600 s bucket and not the
    300 s one, 600 more in its sum; reported_at's series unmoved."""
    before = scrape(metrics_url)
    ClockSkewMetrics().on_clock_skew("event_time", 600.0)
    after = scrape(metrics_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("fraud_clock_skew_seconds_count", time="event_time") == 1
    assert moved("fraud_clock_skew_seconds_sum", time="event_time") == 600.0
    assert moved("fraud_clock_skew_seconds_bucket", time="event_time", le="600.0") == 1
    assert moved("fraud_clock_skew_seconds_bucket", time="event_time", le="300.0") == 0
    assert moved("fraud_clock_skew_seconds_count", time="reported_at") == 0


def test_buckets_reach_from_the_default_skew_to_a_year() -> None:
    """The first bucket is the default skew, the last a year: a wrong clock by minutes or by
    a reset date each shows where it belongs."""
    assert CLOCK_SKEW_BUCKETS[0] == 300.0
    assert CLOCK_SKEW_BUCKETS[-1] == 365 * 86_400.0
    assert list(CLOCK_SKEW_BUCKETS) == sorted(CLOCK_SKEW_BUCKETS)
