"""Scrape a Prometheus /metrics page over real HTTP and read its samples."""

from __future__ import annotations

import urllib.request

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT = 10.0

# One scrape's sample values, by sample name and label set.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_families(url: str) -> list[Metric]:
    """The metric families served at `url`, which must answer 200."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    return list(text_string_to_metric_families(text))


def scrape(url: str) -> Samples:
    """Every sample served at `url`."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in scrape_families(url)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels`; fails naming it when the scrape lacks it."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name} {labels} is not in /metrics"
    return samples[key]
