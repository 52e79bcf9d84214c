"""Latencies in HDR histograms (`hdrh`), whole-run and per second, merged across processes.

Values are recorded in whole microseconds from 1 µs to 10 minutes with 3 significant
digits: every quantile read back is within 0.1% of a recorded value, whatever the
spread, at a fixed memory cost. Each client process records its own histograms and ships
them encoded (HdrHistogram's compressed base64 form); the parent adds them up, which is
exact (counts add), unlike averaging per-process percentiles.

`LatencyRecorder` keeps one histogram for the whole run and one per second of the run
(by the second the answer arrived in), for the latency-over-time and throughput charts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000
SIGNIFICANT_FIGURES = 3
# Percentiles (0-100) every summary reports, by name.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def new_histogram() -> HdrHistogram:
    """An empty histogram of microseconds, 1 µs to 10 min, 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    """Record a duration given in seconds (clamped to the histogram's range)."""
    histogram.record_value(min(max(round(seconds * 1e6), LOWEST_US), HIGHEST_US))


@dataclass(frozen=True)
class EncodedLatency:
    """A `LatencyRecorder` in a form that pickles small: HdrHistogram's encoded strings."""

    overall: str
    by_second: dict[int, str]


class LatencyRecorder:
    """Latencies of one run: all of them, and per second of the run."""

    def __init__(self) -> None:
        self.overall = new_histogram()
        self.by_second: dict[int, HdrHistogram] = {}

    def record(self, latency: float, at: float) -> None:
        """Record `latency` seconds for an answer that came `at` seconds into the run."""
        record_seconds(self.overall, latency)
        second = int(at)
        histogram = self.by_second.get(second)
        if histogram is None:
            histogram = self.by_second[second] = new_histogram()
        record_seconds(histogram, latency)

    def encode(self) -> EncodedLatency:
        """This recorder's histograms, encoded for another process."""
        by_second = {second: h.encode() for second, h in self.by_second.items()}
        return EncodedLatency(self.overall.encode(), by_second)

    @classmethod
    def merged(cls, parts: Iterable[EncodedLatency]) -> LatencyRecorder:
        """One recorder holding every latency of `parts` (exact: counts add up)."""
        merged = cls()
        for part in parts:
            merged.overall.decode_and_add(part.overall)
            for second, encoded in part.by_second.items():
                histogram = merged.by_second.setdefault(second, new_histogram())
                histogram.decode_and_add(encoded)
        return merged


@dataclass(frozen=True)
class LatencySummary:
    """Count, mean and quantiles of a histogram, in milliseconds (all 0 when empty)."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p99_9_ms: float
    max_ms: float


def summarise(histogram: HdrHistogram) -> LatencySummary:
    """The run's latency figures, in milliseconds."""
    # Empty, the dict is empty too.
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES.values()))
    p50, p90, p99, p99_9 = (_ms(values.get(percentile, 0)) for percentile in PERCENTILES.values())
    return LatencySummary(
        count=histogram.get_total_count(),
        mean_ms=_ms(histogram.get_mean_value()),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        p99_9_ms=p99_9,
        max_ms=_ms(histogram.get_max_value()),
    )


def percentile_spectrum(
    histogram: HdrHistogram, ticks_per_half_distance: int = 5
) -> list[tuple[float, float]]:
    """(percentile, latency ms) points of HdrHistogram's percentile distribution.

    The steps halve their distance to 100% every `ticks_per_half_distance` points, so the
    tail is as finely drawn as the body on a 1 / (1 - p) axis.
    """
    if histogram.get_total_count() == 0:
        return []
    return [
        (round(item.percentile_level_iterated_to, 6), _ms(item.value_iterated_to))
        for item in histogram.get_percentile_iterator(ticks_per_half_distance)
    ]


@dataclass(frozen=True)
class Second:
    """One second of a run: answers that arrived in it and their latency (None if none)."""

    second: int
    answers: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def timeline(recorder: LatencyRecorder) -> list[Second]:
    """Every second from the run's start to its last answer, quiet seconds included."""
    last = max(recorder.by_second, default=-1)
    return [_second(second, recorder.by_second.get(second)) for second in range(last + 1)]


def _second(second: int, histogram: HdrHistogram | None) -> Second:
    if histogram is None:
        return Second(second, 0, None, None, None)
    values = histogram.get_percentile_to_value_dict([50.0, 99.0])
    return Second(
        second,
        histogram.get_total_count(),
        _ms(values[50.0]),
        _ms(values[99.0]),
        _ms(histogram.get_max_value()),
    )


def _ms(microseconds: float) -> float:
    return round(microseconds / 1000, 3)
