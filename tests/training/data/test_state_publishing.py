"""Tests for training.data.state_publishing: a store appears at its directory complete or
not at all, and only a store is ever replaced."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from service.config.settings import StateSettings
from service.features import FeatureConfig
from training.data.loading import load_transactions
from training.data.state_publishing import (
    StateTargetError,
    build_state_directory,
    check_target,
)

CONFIG = FeatureConfig()
SETTINGS = StateSettings(max_bytes=64 << 20)


class Interrupted(Exception):
    """Stands for a build that fails halfway."""


@pytest.fixture
def frame(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "history" / "tiny.csv"
    path.parent.mkdir()
    path.write_text(
        "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud\n"
        "a,2024-01-01T10:00:00Z,card1,t1,10.00,0\n"
        "b,2024-01-01T10:05:00Z,card2,t1,12.00,1\n"
        "c,2024-01-01T10:09:00Z,card1,t2,3.00,0\n"
    )
    return load_transactions(path).frame


def _fail_on_second_card() -> Callable[[str], str]:
    """A tokenizer that fails on the second transaction, once the store has records."""
    seen: list[str] = []

    def tokenize(card_id: str) -> str:
        seen.append(card_id)
        if len(seen) == 2:
            raise Interrupted
        return card_id

    return tokenize


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def test_a_build_publishes_a_complete_store_and_leaves_nothing_beside_it(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """The store is at the target with its counts; no building directory remains."""
    target = tmp_path / "deploy" / "state"

    seeded = build_state_directory(frame, CONFIG, target, SETTINGS)

    assert (seeded.replayed, seeded.cards, seeded.terminals, seeded.transactions) == (3, 2, 2, 3)
    assert seeded.merchants == 0
    assert {path.name for path in target.iterdir()} == {"data.mdb", "lock.mdb"}
    # The blocks the files take: with `writemap` the data file is as large as LMDB's map
    # (32 MiB at first), mostly a hole, for a few KiB of records.
    data_file = (target / "data.mdb").stat()
    assert 0 < seeded.stored_bytes <= data_file.st_blocks * 512 + 64 * 1024 < data_file.st_size
    assert [path.name for path in target.parent.iterdir()] == ["state"]


def test_a_failed_build_leaves_no_store_and_keeps_the_one_it_would_replace(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """Fails halfway: no target when there was none, the old store's bytes when replacing."""
    target = tmp_path / "state"
    with pytest.raises(Interrupted):
        build_state_directory(frame, CONFIG, target, SETTINGS, tokenize_card=_fail_on_second_card())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["history"]

    build_state_directory(frame, CONFIG, target, SETTINGS)
    before = _snapshot(target)
    with pytest.raises(Interrupted):
        build_state_directory(
            frame, CONFIG, target, SETTINGS, replace=True, tokenize_card=_fail_on_second_card()
        )
    assert _snapshot(target) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["history", "state"]


def test_a_store_is_replaced_only_when_asked(frame: pd.DataFrame, tmp_path: Path) -> None:
    """An empty directory takes a store; a store is refused, then replaced with `replace`."""
    target = tmp_path / "state"
    target.mkdir()
    build_state_directory(frame.iloc[:1], CONFIG, target, SETTINGS)
    with pytest.raises(StateTargetError, match="not empty"):
        build_state_directory(frame, CONFIG, target, SETTINGS)

    seeded = build_state_directory(frame, CONFIG, target, SETTINGS, replace=True)

    assert seeded.transactions == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["history", "state"]


def test_only_a_store_or_an_empty_directory_is_a_target(tmp_path: Path) -> None:
    """A file, or a directory of other files, is refused even with `replace`."""
    check_target(tmp_path / "absent", replace=False)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", replace=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateTargetError, match="not a directory"):
        check_target(tmp_path / "file", replace=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(StateTargetError, match=r"other than a feature state store \(notes.txt\)"):
        check_target(tmp_path / "home", replace=True)
