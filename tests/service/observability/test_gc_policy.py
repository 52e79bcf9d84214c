"""Tests for service.observability.gc_policy: full collections off by default, young ones kept."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.observability.gc_policy import NO_FULL_COLLECTIONS, configure_garbage_collection


@pytest.fixture(autouse=True)
def restore_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_full_collections_are_left_out_and_young_ones_kept() -> None:
    """Generation 2 never comes due; generations 0 and 1 keep their thresholds."""
    young, middle, _full = gc.get_threshold()
    configure_garbage_collection(full_collections=False)
    assert gc.get_threshold() == (young, middle, NO_FULL_COLLECTIONS)


def test_young_cycles_are_still_collected() -> None:
    """A reference cycle dropped by the program is freed by the young collections alone."""
    configure_garbage_collection(full_collections=False)
    collected = []

    class Node:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            collected.append(True)

    Node()
    for _ in range(5):
        gc.collect(generation=1)
    assert collected == [True]


def test_full_collections_can_be_kept() -> None:
    """With full collections asked for, the thresholds are Python's own."""
    before = gc.get_threshold()
    configure_garbage_collection(full_collections=True)
    assert gc.get_threshold() == before
