"""The feature state's bound holds: 62,500 requests whose card, terminal and merchant ids
are all new, through the scoring core in a fresh process per backend, both at once.

Bounds stated for 2,500 records of each kind: the memory backend's resident memory grows
by at most 32 MiB (measured 28.7 MiB twice, 2026-12-07), the LMDB file is at most 54 MiB
(measured 46.1 MiB twice, 8-10 MiB of it the blocks reserved ahead whatever the bound);
and neither grows from the half to the end (measured: at most 0.04 MiB).

An eighth of the 500,000 requests and 20,000 records it once took (223 MiB and 274 MiB
then): the half (31,250 requests) is still 12.5 times the bound, and the growth allowed
from the half to the end is an eighth too, so a leak per request fails the test from the
same size as it did (67 bytes a request in memory, 34 in the file).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.measurements.state_bound import BoundFigures, measure_in_fresh_process

REQUESTS = 62_500
BOUND = 2_500
MIB = 1 << 20
SWEEP_SLACK = 1_024  # records an LMDB sweep may leave above the bound until the next one


@pytest.fixture(scope="module")
def flooded() -> dict[str, BoundFigures]:
    """Both backends flooded side by side (two processes, one per core)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            backend: pool.submit(measure_in_fresh_process, backend, REQUESTS, BOUND, BOUND)
            for backend in ("memory", "lmdb")
        }
        return {backend: run.result() for backend, run in runs.items()}


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_fresh_ids_are_evicted_counted_and_never_fail_a_request(
    flooded: dict[str, BoundFigures], backend: str
) -> None:
    """Every request is answered (no store failure), each kind holds about the bound, and
    what was dropped to stay there is counted."""
    figures = flooded[backend]
    assert figures.answers == {"model_unavailable": REQUESTS}  # no model: the fallback
    for kind, held in figures.records_end.items():
        assert BOUND <= held <= BOUND + SWEEP_SLACK, kind
    assert figures.evictions_capacity >= 4 * (REQUESTS - BOUND - SWEEP_SLACK)


def test_the_memory_backend_stays_within_its_memory(flooded: dict[str, BoundFigures]) -> None:
    """Resident memory stops growing once the bound is reached."""
    figures = flooded["memory"]
    assert figures.rss_end_bytes - figures.rss_start_bytes <= 32 * MIB
    assert figures.rss_end_bytes - figures.rss_half_bytes <= 2 * MIB


def test_the_lmdb_file_stays_within_its_size(flooded: dict[str, BoundFigures]) -> None:
    """The file stops growing once the bound is reached: freed pages are reused."""
    figures = flooded["lmdb"]
    assert figures.file_end_bytes <= 54 * MIB
    assert figures.file_end_bytes - figures.file_half_bytes <= 1 * MIB
