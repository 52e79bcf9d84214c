"""HDR latency recording: quantiles on known data, merging across processes, per second."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from benchmarks.load.histograms import (
    HIGHEST_US,
    EncodedLatency,
    LatencyRecorder,
    Second,
    new_histogram,
    percentile_spectrum,
    record_seconds,
    summarise,
    timeline,
)

# HdrHistogram with 3 significant digits: any value read back is within 0.1%.
HDR_PRECISION = 1e-3


def _record_every(start: int, stride: int) -> EncodedLatency:
    """Latencies of start, start + stride, ... up to 100,000 µs, answered at µs / 20,000 s."""
    recorder = LatencyRecorder()
    for micros in range(start, 100_001, stride):
        recorder.record(micros / 1e6, at=micros / 20_000)
    return recorder.encode()


def test_quantiles_of_known_data_are_within_hdr_precision():
    """1 to 100,000 µs evenly: p50 50 ms, p90 90 ms, p99 99 ms, p99.9 99.9 ms, max 100 ms."""
    recorder = LatencyRecorder.merged([_record_every(1, 1)])

    summary = summarise(recorder.overall)

    assert summary.count == 100_000
    assert summary.p50_ms == pytest.approx(50.0, rel=HDR_PRECISION)
    assert summary.p90_ms == pytest.approx(90.0, rel=HDR_PRECISION)
    assert summary.p99_ms == pytest.approx(99.0, rel=HDR_PRECISION)
    assert summary.p99_9_ms == pytest.approx(99.9, rel=HDR_PRECISION)
    assert summary.max_ms == pytest.approx(100.0, rel=HDR_PRECISION)
    assert summary.mean_ms == pytest.approx(50.0, rel=HDR_PRECISION)


def test_histograms_recorded_in_other_processes_merge_exactly():
    """Halves recorded in two spawned processes add up to what one process records."""
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        halves = list(pool.map(_record_every, [1, 2], [2, 2]))

    merged = LatencyRecorder.merged(halves)
    alone = LatencyRecorder.merged([_record_every(1, 1)])

    assert summarise(merged.overall) == summarise(alone.overall)
    assert timeline(merged) == timeline(alone)


def test_timeline_has_every_second_up_to_the_last_answer_quiet_ones_included():
    """A second without answers is in the timeline, with no latency figures."""
    recorder = LatencyRecorder()
    recorder.record(0.002, at=0.5)
    recorder.record(0.004, at=0.7)
    recorder.record(0.010, at=2.1)

    seconds = timeline(recorder)

    assert [(s.second, s.answers) for s in seconds] == [(0, 2), (1, 0), (2, 1)]
    assert seconds[1] == Second(1, 0, None, None, None)
    assert seconds[0].max_ms == pytest.approx(4.0, rel=HDR_PRECISION)


def test_spectrum_climbs_to_the_maximum_at_100_percent():
    """Percentile steps rise towards 100%, latencies never fall, the last is the maximum."""
    recorder = LatencyRecorder.merged([_record_every(1, 7)])

    points = percentile_spectrum(recorder.overall)

    percentiles = [p for p, _ in points]
    latencies = [ms for _, ms in points]
    assert percentiles == sorted(percentiles)
    assert latencies == sorted(latencies)
    assert points[-1] == (100.0, summarise(recorder.overall).max_ms)
    assert any(99.9 < p < 100.0 for p in percentiles)


def test_an_empty_histogram_summarises_to_zeros_and_no_spectrum():
    """No answers: count 0, every figure 0, no spectrum points."""
    empty = new_histogram()

    assert summarise(empty).count == 0
    assert summarise(empty).p99_ms == 0.0
    assert percentile_spectrum(empty) == []


def test_values_outside_the_range_are_clamped_not_dropped():
    """A zero latency counts as 1 µs and an absurd one as the highest trackable value."""
    histogram = new_histogram()

    record_seconds(histogram, 0.0)
    record_seconds(histogram, 10_000.0)

    assert histogram.get_total_count() == 2
    assert histogram.get_min_value() == 1
    assert histogram.get_max_value() == pytest.approx(HIGHEST_US, rel=HDR_PRECISION)
