"""`sample_value` answers as `get_sample_value` does, for every kind of sample."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tests.process_metrics import sample_value


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("calls", "calls", ["rpc", "code"], registry=registry).labels("Score", "OK").inc(3)
    Gauge("open", "open", registry=registry).set(2)
    Histogram("size", "size", buckets=(1, 4), registry=registry).observe(3)
    return registry


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("calls_total", {"rpc": "Score", "code": "OK"}),
        ("calls_total", {"rpc": "Score", "code": "CANCELLED"}),
        ("calls_total", {"rpc": "Score"}),
        ("calls_total", None),
        ("open", None),
        ("open", {"rpc": "Score"}),
        ("size_count", None),
        ("size_sum", None),
        ("size_bucket", {"le": "4.0"}),
        ("size_bucket", {"le": "1.0"}),
        ("absent", None),
    ],
)
def test_each_sample_is_read_as_get_sample_value_reads_it(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None
):
    assert sample_value(name, labels, registry) == registry.get_sample_value(name, labels)


def test_the_values_are_the_ones_set(registry: CollectorRegistry):
    assert sample_value("calls_total", {"rpc": "Score", "code": "OK"}, registry) == 3.0
    assert sample_value("size_bucket", {"le": "1.0"}, registry) == 0.0
    assert sample_value("size_bucket", {"le": "4.0"}, registry) == 1.0
    assert sample_value("absent", None, registry) is None
