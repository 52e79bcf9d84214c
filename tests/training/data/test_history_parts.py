"""A history given as a directory or glob of files: each part checked on its own, bad rows
named by file and row, ids repeated across files found, the same rows as one file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data.dataset import load_history
from training.data.history_parts import history_parts, is_partitioned, load_parts
from training.data.loading import DataError, load_transactions


def part_rows(day: int, count: int, prefix: str = "t") -> list[dict[str, object]]:
    return [
        {
            "transaction_id": f"{prefix}{day}-{index}",
            "timestamp": pd.Timestamp(f"2018-04-{day:02d}T10:00:00Z") + pd.Timedelta(minutes=index),
            "card_id": f"card-{index % 3}",
            "terminal_id": f"T{index % 2}",
            "amount": 10.0 + index,
            "is_fraud": int(index == 1),
            "merchant_id": f"M{index % 2}",
        }
        for index in range(count)
    ]


def write_parts(directory: Path, days: dict[int, list[dict[str, object]]]) -> Path:
    directory.mkdir()
    for day, rows in days.items():
        pd.DataFrame(rows).to_parquet(directory / f"2018-04-{day:02d}.parquet", index=False)
    return directory


def test_a_directory_reads_as_its_parts_joined(tmp_path: Path):
    days = write_parts(tmp_path / "days", {2: part_rows(2, 4), 1: part_rows(1, 5)})
    (tmp_path / "days" / "notes.txt").write_text("not a part")
    whole = tmp_path / "whole.parquet"
    pd.DataFrame(part_rows(1, 5) + part_rows(2, 4)).to_parquet(whole, index=False)

    parts = load_history(days)
    single = load_transactions(whole)

    assert is_partitioned(days)
    assert not is_partitioned(whole)
    pd.testing.assert_frame_equal(parts.frame, single.frame)
    assert parts.source_name == "2018-04-01.parquet .. 2018-04-02.parquet (2 files)"
    assert parts.source_sha256 != single.source_sha256


def test_a_glob_names_its_files_in_name_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_parts(tmp_path / "days", {3: part_rows(3, 2), 1: part_rows(1, 2), 2: part_rows(2, 2)})
    monkeypatch.chdir(tmp_path)

    relative = [part.name for part in history_parts(Path("days/2018-04-0[12].parquet"))]
    absolute = history_parts(tmp_path / "days" / "*.parquet")

    assert relative == ["days/2018-04-01.parquet", "days/2018-04-02.parquet"]
    assert [part.path.name for part in absolute] == [f"2018-04-0{day}.parquet" for day in (1, 2, 3)]
    assert [part.index for part in absolute] == [0, 1, 2]


def test_no_part_is_a_data_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*\.parquet files"):
        load_parts(tmp_path / "empty")
    with pytest.raises(DataError, match="no file matches"):
        load_parts(tmp_path / "nothing-*.parquet")


def test_a_bad_row_is_named_by_its_file_and_row(tmp_path: Path):
    second = part_rows(2, 4)
    second[2]["amount"] = -3.0
    days = write_parts(tmp_path / "days", {1: part_rows(1, 3), 2: second})

    with pytest.raises(DataError) as raised:
        load_parts(days)

    assert str(raised.value).startswith(
        "2018-04-02.parquet: 0-based row index 2, column amount: negative"
    )


def test_rejects_of_every_part_go_to_one_file_with_the_file_named(tmp_path: Path):
    first, second = part_rows(1, 3), part_rows(2, 4)
    first[0]["card_id"] = ""
    second[3]["amount"] = -3.0
    second[1]["transaction_id"] = "t1-2"  # repeats the first file's last row
    days = write_parts(tmp_path / "days", {1: first, 2: second})
    rejects = tmp_path / "rejects.csv"

    loaded = load_parts(days, rejects_path=rejects)

    with rejects.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["file"], row["row"], row["column"]) for row in rows] == [
        ("2018-04-01.parquet", "0", "card_id"),
        ("2018-04-02.parquet", "3", "amount"),
        ("2018-04-02.parquet", "1", "transaction_id"),
    ]
    assert rows[2]["reason"] == "repeats an earlier row's transaction_id in an earlier file"
    assert next(iter(rows[0])) == "file"
    assert loaded.rejected_rows == 3
    assert len(loaded.frame) == 7 - 3
    assert loaded.frame["transaction_id"].is_unique
    assert "t1-2" in set(loaded.frame["transaction_id"])  # the earlier one is kept


def test_an_id_repeated_across_files_stops_the_run_without_rejects(tmp_path: Path):
    second = part_rows(2, 3)
    second[2]["transaction_id"] = "t1-0"
    days = write_parts(tmp_path / "days", {1: part_rows(1, 3), 2: second})

    with pytest.raises(DataError, match=r"2018-04-02.parquet: row 2, column transaction_id"):
        load_parts(days)


def test_parts_overlapping_in_time_are_sorted_as_one_file_would_be(tmp_path: Path):
    late = part_rows(1, 3, prefix="late")  # same day and minutes as the other file's rows
    days = write_parts(tmp_path / "days", {1: part_rows(1, 3), 2: late})

    frame = load_parts(days).frame

    order = np.lexsort((frame["transaction_id"].to_numpy(), frame["timestamp_ns"].to_numpy()))
    assert (order == np.arange(len(frame))).all()
    assert list(frame["transaction_id"][:2]) == ["late1-0", "t1-0"]
