"""The server's own latency figures, from its Prometheus histogram, scraped around a run.

`fraud-serve` exports `fraud_rpc_duration_seconds{rpc=...}`, a cumulative histogram that
starts when its event loop picks a call up: time queued before that (in the kernel, in
gRPC's core, behind other callbacks) is only in the client's figure, so the gap between
the two is queueing in front of the server. Quantiles are interpolated linearly within the
bucket holding them, as Prometheus's `histogram_quantile` does: only as fine as the
buckets. With several workers each serves its own metrics port; their counts add up.
Only unary `Score` has a per-call figure: a stream's duration is the whole stream's.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

SERVER_HISTOGRAM = "fraud_rpc_duration_seconds"
_Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Buckets:
    """A cumulative histogram: upper bounds (the last is +Inf) and counts."""

    upper_bounds: list[float]
    cumulative: _Floats


@dataclass(frozen=True)
class ServerLatency:
    """The server's count and quantiles (ms) over the calls between two scrapes."""

    requests: int
    p50_ms: float
    p99_ms: float


def histogram_quantile(q: float, upper_bounds: Sequence[float], cumulative: _Floats) -> float:
    """Quantile `q` of a cumulative histogram, interpolated linearly inside its bucket.

    As Prometheus's `histogram_quantile`: the first bucket starts at 0, and a quantile in
    the +Inf bucket is the largest finite bound. NaN for an empty histogram.
    """
    total = float(cumulative[-1])
    if total == 0:
        return float("nan")
    rank = q * total
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index == len(upper_bounds) - 1:
        return upper_bounds[-2]
    lower = upper_bounds[index - 1] if index else 0.0
    below = float(cumulative[index - 1]) if index else 0.0
    inside = float(cumulative[index]) - below
    return lower + (upper_bounds[index] - lower) * (rank - below) / inside


def scrape_histogram(url: str, rpc: str) -> Buckets:
    """The server's latency histogram for `rpc`, read from its metrics endpoint at `url`."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    buckets = {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == SERVER_HISTOGRAM
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels.get("rpc") == rpc
    }
    bounds = sorted(buckets)
    return Buckets(bounds, np.array([buckets[bound] for bound in bounds], dtype=np.float64))


def scrape_all(urls: Sequence[str], rpc: str) -> Buckets:
    """The histograms of every worker's endpoint, added up."""
    parts = [scrape_histogram(url, rpc) for url in urls]
    if any(part.upper_bounds != parts[0].upper_bounds for part in parts):
        raise ValueError("the workers' histograms have different buckets")
    return Buckets(parts[0].upper_bounds, np.sum([part.cumulative for part in parts], axis=0))


def server_latency(before: Buckets, after: Buckets) -> ServerLatency | None:
    """The server's figures over the calls between two scrapes; None if it saw none.

    A server exports an RPC's histogram from its first call on: none before means zeros.
    """
    if not after.upper_bounds:
        return None
    previous = before.cumulative if before.upper_bounds else np.zeros_like(after.cumulative)
    if before.upper_bounds not in ([], after.upper_bounds):
        raise ValueError("the server's histogram buckets changed between scrapes")
    delta = after.cumulative - previous
    if delta[-1] == 0:
        return None
    bounds = after.upper_bounds
    return ServerLatency(
        requests=int(delta[-1]),
        p50_ms=round(histogram_quantile(0.5, bounds, delta) * 1e3, 3),
        p99_ms=round(histogram_quantile(0.99, bounds, delta) * 1e3, 3),
    )
