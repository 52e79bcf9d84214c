"""A measurement in a fresh process hands back its record whatever else it prints."""

from __future__ import annotations

import pytest

from benchmarks.measurements.fresh_process import run_fresh

CHILD = "tests.benchmarks.measurements.noisy_child"


def test_the_record_comes_back_with_log_lines_before_and_after_it_on_stdout() -> None:
    record = run_fresh(CHILD, ["--answers", "7"], timeout=60, what="the noisy child")

    assert record == {"answers": 7, "name": "ünïcode"}


def test_a_failed_child_is_an_error_with_its_stderr() -> None:
    with pytest.raises(RuntimeError, match="the noisy child failed: the store is full"):
        run_fresh(CHILD, ["--answers", "7", "--fail"], timeout=60, what="the noisy child")
