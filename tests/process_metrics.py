"""This process's metrics, read one name at a time.

`REGISTRY.get_sample_value` collects every metric of the process for each value it returns.
A test session's in-process servers leave thousands of series behind, so a test reading a
few dozen counters spent most of its time collecting the others (test_auth's matrix: 97% of
each case). `sample_value` collects only the metric that has the sample's name.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import REGISTRY, CollectorRegistry


def sample_value(
    name: str, labels: Mapping[str, str] | None = None, registry: CollectorRegistry = REGISTRY
) -> float | None:
    """The value of sample `name` with exactly `labels` (none: no labels), or None: what
    `registry.get_sample_value` answers."""
    wanted = dict(labels or {})
    for metric in registry.restricted_registry([name]).collect():
        for sample in metric.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
    return None
