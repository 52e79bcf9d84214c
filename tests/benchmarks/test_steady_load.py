"""The steady-load benchmark's pure parts: requests from history rows, server quantiles."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from benchmarks.history_requests import amount_minor, request_from_row
from benchmarks.steady_load import (
    histogram_quantile,
    load_requests,
    main,
    scrape_histogram,
    server_cpu_seconds,
    server_figures,
)
from service._proto.fraud.v1 import scoring_pb2

HEADER = (
    "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud,merchant_id,mcc,"
    "entry_mode,card_present,currency,country,fraud_scenario\n"
)
ROW = "tx01,2018-04-01T00:00:35Z,card04,term05,61.28,0,merch02,5311,contactless,true,CHF,CH,0\n"
INF = float("inf")


def test_row_becomes_a_complete_score_request():
    """Every column of a simulated history row lands in its Transaction field."""
    values = dict(zip(HEADER.strip().split(","), ROW.strip().split(","), strict=True))

    request = request_from_row(values)

    assert request.transaction == scoring_pb2.Transaction(
        transaction_id="tx01",
        card_id="card04",
        terminal_id="term05",
        merchant_id="merch02",
        amount_minor=6128,
        currency="CHF",
        timestamp=Timestamp(seconds=1_522_540_835),
        mcc=5311,
        entry_mode=scoring_pb2.ENTRY_MODE_CONTACTLESS,
        card_present=True,
        country="CH",
    )


@pytest.mark.parametrize(
    ("text", "currency", "expected"),
    [("61.28", "EUR", 6128), ("8.7", "EUR", 870), ("1250", "JPY", 1250), ("1.005", "KWD", 1005)],
)
def test_amount_scales_by_the_currency_exponent(text: str, currency: str, expected: int):
    """Major-unit text becomes exact minor units for 0, 2 and 3 decimal currencies."""
    assert amount_minor(text, currency) == expected


@pytest.mark.parametrize(("text", "currency"), [("1.5", "JPY"), ("1.00", "XYZ")])
def test_amount_that_cannot_be_exact_is_refused(text: str, currency: str):
    """Too many decimals for the currency, or an unknown currency, raise ValueError."""
    with pytest.raises(ValueError, match=currency):
        amount_minor(text, currency)


def test_requests_come_from_the_first_rows_and_a_short_file_is_refused(tmp_path: Path):
    """Only the rows asked for are read; asking for more than the file holds fails."""
    history = tmp_path / "history.csv"
    history.write_text(HEADER + ROW + ROW.replace("tx01", "tx02") + ROW.replace("tx01", "tx03"))

    ids = [request.transaction.transaction_id for request in load_requests(history, 2)]

    assert ids == ["tx01", "tx02"]
    with pytest.raises(ValueError, match="3 rows"):
        load_requests(history, 4)


def test_quantile_interpolates_within_its_bucket():
    """As Prometheus: linear inside the bucket, from 0 below the first bound."""
    bounds = [0.001, 0.002, 0.004, INF]
    cumulative = np.array([50.0, 90.0, 100.0, 100.0])

    assert histogram_quantile(0.25, bounds, cumulative) == pytest.approx(0.0005)
    assert histogram_quantile(0.7, bounds, cumulative) == pytest.approx(0.0015)
    assert histogram_quantile(0.95, bounds, cumulative) == pytest.approx(0.003)


def test_quantile_in_the_overflow_bucket_is_the_largest_finite_bound():
    """Observations above every bound cap the quantile at the last finite bound."""
    cumulative = np.array([1.0, 1.0, 1.0, 10.0])

    assert histogram_quantile(0.99, [0.001, 0.002, 0.004, INF], cumulative) == 0.004


def test_server_figures_count_only_requests_between_scrapes():
    """Quantiles come from the bucket deltas, not from what the server saw before."""
    bounds = [0.001, 0.002, 0.004, INF]
    before = (bounds, np.array([1000.0, 1000.0, 1000.0, 1000.0]))
    after = (bounds, np.array([1000.0, 1100.0, 1100.0, 1100.0]))

    figures = server_figures(before, after)

    assert figures["server_requests"] == 100
    assert figures["server_p50_ms"] == pytest.approx(1.5)
    assert figures["server_p99_ms"] == pytest.approx(1.99)


def test_scrape_reads_one_rpcs_buckets_from_a_metrics_endpoint():
    """The histogram of the asked RPC is read over HTTP, cumulative, bounds in order."""
    registry = CollectorRegistry()
    latency = Histogram(
        "fraud_rpc_duration_seconds", "test", ["rpc"], buckets=(0.001, 0.01), registry=registry
    )
    latency.labels("Score").observe(0.0005)
    latency.labels("Score").observe(0.005)
    latency.labels("ReportOutcome").observe(0.5)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        bounds, counts = scrape_histogram(url, "Score")
    finally:
        server.shutdown()
        server.server_close()

    assert bounds == [0.001, 0.01, INF]
    assert counts.tolist() == [1.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("target", "metrics"),
    [("10.0.0.7:50051", "http://127.0.0.1:9464/metrics"), ("127.0.0.1:1", "http://example.com/")],
)
def test_targets_off_the_loopback_address_are_refused(target: str, metrics: str, tmp_path: Path):
    """The benchmark never sends load or scrapes anywhere but 127.0.0.1."""
    arguments = ["--target", target, "--metrics", metrics, "--data", str(tmp_path / "none.csv")]

    with pytest.raises(SystemExit, match=re.escape("must be on 127.0.0.1")):
        main([*arguments, "--rate", "10", "--seconds", "1"])


def test_process_cpu_time_is_read_from_the_right_proc_fields():
    """/proc's user plus system time of this process agrees with time.process_time()."""
    reported, expected = server_cpu_seconds(os.getpid()), time.process_time()

    assert reported == pytest.approx(expected, abs=0.1)
