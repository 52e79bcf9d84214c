"""Tests for training.data.loading: loading, validating and normalising a transaction history."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.core.domain import EntryMode
from service.model.artifact import sha256_file
from training.data.loading import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    DataError,
    load_transactions,
)

CARD = "4111111111111111"
ALL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

# Already in (time, id) order; t2 is given at +02:00, t2 and t3 have fractions of a second.
GOOD_ROWS = [
    {
        "transaction_id": "t1",
        "timestamp": "2018-04-01T00:07:56Z",
        "card_id": CARD,
        "terminal_id": "T1",
        "amount": "12.50",
        "is_fraud": "0",
        "merchant_id": "M1",
        "mcc": "5411",
        "entry_mode": "chip",
        "currency": "EUR",
        "country": "FR",
        "card_present": "TRUE",
    },
    {
        "transaction_id": "t2",
        "timestamp": "2018-04-01T02:07:57.123456789+02:00",
        "card_id": "c2",
        "terminal_id": "T2",
        "amount": "0.1",
        "is_fraud": "1",
        "merchant_id": "",
        "mcc": "",
        "entry_mode": "Contactless",
        "currency": "",
        "country": "",
        "card_present": "0",
    },
    {
        "transaction_id": "t3",
        "timestamp": "2018-04-01T00:08:00.5Z",
        "card_id": "c3",
        "terminal_id": "T1",
        "amount": "2.675",
        "is_fraud": "0",
        "merchant_id": "M2",
        "mcc": "0042",
        "entry_mode": "",
        "currency": "USD",
        "country": "US",
        "card_present": "",
    },
]


def _utc_ns(text: str, nanoseconds: int = 0) -> int:
    """Epoch nanoseconds of a whole-second ISO time, computed without pandas."""
    return int(datetime.fromisoformat(text).timestamp()) * 1_000_000_000 + nanoseconds


def _strings(*values: str) -> pd.Series:
    return pd.Series(values, dtype="str")


EXPECTED = pd.DataFrame(
    {
        "transaction_id": _strings("t1", "t2", "t3"),
        "timestamp_ns": np.array(
            [
                _utc_ns("2018-04-01T00:07:56+00:00"),
                _utc_ns("2018-04-01T00:07:57+00:00", 123_456_789),
                _utc_ns("2018-04-01T00:08:00+00:00", 500_000_000),
            ],
            dtype=np.int64,
        ),
        "card_id": _strings(CARD, "c2", "c3"),
        "terminal_id": _strings("T1", "T2", "T1"),
        "amount": np.array([12.5, 0.1, 2.675], dtype=np.float64),
        "is_fraud": np.array([0, 1, 0], dtype=np.int8),
        "merchant_id": _strings("M1", "", "M2"),
        "mcc": np.array([5411, -1, 42], dtype=np.int32),
        "entry_mode": np.array(
            [EntryMode.CHIP, EntryMode.CONTACTLESS, EntryMode.UNKNOWN], dtype=np.int8
        ),
        "currency": _strings("EUR", "", "USD"),
        "country": _strings("FR", "", "US"),
        "card_present": np.array([1, 0, -1], dtype=np.int8),
    }
)


def _write_csv(path: Path, rows: list[dict[str, str]], *, columns: tuple[str, ...] = ()) -> Path:
    columns = columns or tuple(rows[0])
    lines = [",".join(columns)] + [",".join(row[column] for column in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _with(row_index: int, **changes: str) -> list[dict[str, str]]:
    """GOOD_ROWS with some values of one row replaced."""
    rows = [dict(row) for row in GOOD_ROWS]
    rows[row_index].update(changes)
    return rows


def _csv_file(tmp_path: Path) -> Path:
    return _write_csv(tmp_path / "history.csv", GOOD_ROWS)


def _csv_gz_file(tmp_path: Path) -> Path:
    path = tmp_path / "history.csv.gz"
    path.write_bytes(gzip.compress(_csv_file(tmp_path).read_bytes()))
    return path


def _text_parquet_file(tmp_path: Path) -> Path:
    path = tmp_path / "history.parquet"
    columns = {column: [row[column] for row in GOOD_ROWS] for column in ALL_COLUMNS}
    pq.write_table(pa.table(columns), path)
    return path


def _typed_parquet_file(tmp_path: Path) -> Path:
    """The same history as Parquet users would write it: times with a zone, numbers, booleans."""
    path = tmp_path / "history.parquet"
    table = pa.table(
        {
            "transaction_id": ["t1", "t2", "t3"],
            "timestamp": pa.array(EXPECTED["timestamp_ns"], pa.timestamp("ns", tz="+02:00")),
            "card_id": [CARD, "c2", "c3"],
            "terminal_id": ["T1", "T2", "T1"],
            "amount": pa.array([12.5, 0.1, 2.675], pa.float64()),
            "is_fraud": pa.array([False, True, False]),
            "merchant_id": ["M1", None, "M2"],
            "mcc": pa.array([5411, None, 42], pa.int64()),
            "entry_mode": ["CHIP", "contactless", None],
            "currency": ["EUR", "", "USD"],
            "country": ["FR", "", "US"],
            "card_present": pa.array([True, False, None]),
        }
    )
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    "write", [_csv_file, _csv_gz_file, _text_parquet_file, _typed_parquet_file]
)
def test_good_file_loads_to_the_exact_frame(tmp_path: Path, write: Callable[[Path], Path]):
    """CSV, gzipped CSV and Parquet (text or typed) give the same frame, dtypes and values."""
    path = write(tmp_path)
    loaded = load_transactions(path)
    pd.testing.assert_frame_equal(loaded.frame, EXPECTED)
    assert loaded.rejected_rows == 0
    assert loaded.source_sha256 == sha256_file(path)
    assert loaded.source_name == path.name


def test_amounts_are_parsed_like_float(tmp_path: Path):
    """Amounts are the correctly rounded doubles that float() gives for the same text."""
    texts = ["0.1", "2.675", "1e2", "9007199254740993", "0.30000000000000004", ".5", "7."]
    rows = [
        dict(GOOD_ROWS[0], transaction_id=f"a{index}", amount=text)
        for index, text in enumerate(texts)
    ]
    frame = load_transactions(_write_csv(tmp_path / "a.csv", rows)).frame
    assert frame["amount"].tolist() == [float(text) for text in texts]


def test_absent_optional_columns_give_defaults(tmp_path: Path):
    """Without the optional columns the frame has them, filled with their 'unknown' values."""
    path = _write_csv(tmp_path / "h.csv", GOOD_ROWS, columns=REQUIRED_COLUMNS)
    frame = load_transactions(path).frame
    assert list(frame.columns) == list(EXPECTED.columns)
    assert frame["merchant_id"].tolist() == ["", "", ""]
    assert frame["mcc"].tolist() == [-1, -1, -1]
    assert frame["entry_mode"].tolist() == [EntryMode.UNKNOWN] * 3
    assert frame["currency"].tolist() == frame["country"].tolist() == ["", "", ""]
    assert frame["card_present"].tolist() == [-1, -1, -1]
    assert frame.dtypes.equals(EXPECTED.dtypes)


def test_extra_columns_are_ignored(tmp_path: Path):
    """Unknown columns, whatever they hold, neither fail the load nor reach the frame."""
    rows = [
        dict(row, notes=note, score="x")
        for row, note in zip(GOOD_ROWS, ["1", "2", "n/a"], strict=True)
    ]
    frame = load_transactions(_write_csv(tmp_path / "h.csv", rows)).frame
    pd.testing.assert_frame_equal(frame, EXPECTED)


def test_rows_are_sorted_by_time_then_id_as_text(tmp_path: Path):
    """Rows come out by timestamp; equal timestamps are ordered by transaction_id as text."""
    early, late = "2018-04-01T00:00:00Z", "2018-04-01T02:00:00+01:00"
    order = [("b", late), ("a9", late), ("z", early), ("a10", late)]
    rows = [dict(GOOD_ROWS[0], transaction_id=i, timestamp=t) for i, t in order]
    frame = load_transactions(_write_csv(tmp_path / "h.csv", rows)).frame
    assert frame["transaction_id"].tolist() == ["z", "a10", "a9", "b"]
    assert frame.index.tolist() == [0, 1, 2, 3]


BAD_VALUES = [
    ("timestamp", "yesterday", "not an ISO 8601 time"),
    ("timestamp", "2018-02-30T00:00:00Z", "not an ISO 8601 time"),
    ("timestamp", "2018-04-01T00:07:56", "no time zone"),
    ("timestamp", "2018-04-01", "no time zone"),
    ("timestamp", "", "not an ISO 8601 time"),
    ("timestamp", "2300-01-01T00:00:00Z", "not an ISO 8601 time between 1677 and 2262"),
    ("amount", "-0.01", "negative"),
    ("amount", "inf", "not finite"),
    ("amount", "NaN", "not finite"),
    ("amount", "1e400", "not finite"),
    ("amount", "1.2.3", "not a decimal number"),
    ("amount", "12 EUR", "not a decimal number"),
    ("amount", "", "not a decimal number"),
    ("transaction_id", "", "empty"),
    ("transaction_id", "t1", "repeats an earlier row"),
    ("terminal_id", "  ", "empty"),
    ("is_fraud", "2", "not 0 or 1"),
    ("is_fraud", "", "not 0 or 1"),
    ("mcc", "10000", "not an integer in 0..9999"),
    ("mcc", "-1", "not an integer in 0..9999"),
    ("mcc", "54a1", "not an integer in 0..9999"),
    ("entry_mode", "swipe", "not one of UNKNOWN, CHIP, CONTACTLESS, MAGSTRIPE"),
    ("card_present", "maybe", "not true, false, 1, 0 or empty"),
    ("currency", "eur", "not 3 uppercase letters"),
    ("currency", "EURO", "not 3 uppercase letters"),
    ("country", "FRA", "not 2 uppercase letters"),
    ("country", "fr", "not 2 uppercase letters"),
]


@pytest.mark.parametrize(("column", "value", "reason"), BAD_VALUES)
def test_bad_value_raises_naming_line_column_value_and_reason(
    tmp_path: Path, column: str, value: str, reason: str
):
    """A bad value fails the load with its file, CSV line, column, value and reason."""
    path = _write_csv(tmp_path / "h.csv", _with(2, **{column: value}))
    with pytest.raises(DataError) as raised:
        load_transactions(path)
    message = str(raised.value)
    assert message.startswith("h.csv: line 4, column ")
    assert f"column {column}: {reason}" in message
    assert f"(value {value!r})" in message
    assert "1 bad row(s)" in message


def test_first_bad_row_is_reported_with_the_total(tmp_path: Path):
    """With several bad rows, the message names the first and counts them all."""
    rows = _with(1, amount="-1")
    rows[2]["is_fraud"] = "yes"
    with pytest.raises(DataError, match=r"line 3, column amount: .* 2 bad row\(s\)"):
        load_transactions(_write_csv(tmp_path / "h.csv", rows))


def test_long_values_are_truncated_in_messages(tmp_path: Path):
    """An offending value is shown cut to 40 characters."""
    path = _write_csv(tmp_path / "h.csv", _with(0, currency="X" * 100))
    with pytest.raises(DataError) as raised:
        load_transactions(path)
    assert f"'{'X' * 40}…'" in str(raised.value)


def test_card_id_value_is_redacted(tmp_path: Path):
    """A bad card_id is reported without its value."""
    path = _write_csv(tmp_path / "h.csv", _with(0, card_id=" "))
    with pytest.raises(DataError, match=r"column card_id: empty \(value <card_id redacted>\)"):
        load_transactions(path)


def test_malformed_record_hides_its_text(tmp_path: Path):
    """A record with the wrong field count fails without quoting it, even in the cause chain."""
    path = _csv_file(tmp_path)
    path.write_text(path.read_text() + f"t9,2018-04-01T00:00:00Z,{CARD},T1,1.0\n")
    with pytest.raises(DataError, match="a record has 5 fields where the header has 12") as raised:
        load_transactions(path)
    assert CARD not in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_line_numbers_count_quoted_line_breaks_and_blank_lines(tmp_path: Path):
    """A CSV line number is where the record starts in the file, as an editor shows it."""
    path = _csv_file(tmp_path)
    spanning = path.read_text().replace(",M1,", ',"M\n1",', 1)
    bad_record = "t9,2018-04-01T00:00:00Z,c9,T9,-5,0,,,,,,\n"
    path.write_text(spanning + bad_record)
    with pytest.raises(DataError, match=r"line 6, column amount: negative"):
        load_transactions(path)
    path.write_text(spanning + "\n" + bad_record)
    with pytest.raises(DataError, match=r"line 6, column transaction_id: empty .* 2 bad"):
        load_transactions(path)


def test_parquet_bad_row_is_named_by_row_index(tmp_path: Path):
    """In Parquet the bad row is named by its 0-based row index."""
    path = tmp_path / "h.parquet"
    rows = _with(1, is_fraud="7")
    pq.write_table(pa.table({c: [row[c] for row in rows] for c in REQUIRED_COLUMNS}), path)
    with pytest.raises(DataError, match=r"h\.parquet: 0-based row index 1, column is_fraud"):
        load_transactions(path)


def test_parquet_naive_times_are_refused(tmp_path: Path):
    """Parquet times without a zone are not assumed to be UTC."""
    path = tmp_path / "h.parquet"
    columns = {c: [row[c] for row in GOOD_ROWS] for c in REQUIRED_COLUMNS}
    columns["timestamp"] = pa.array(EXPECTED["timestamp_ns"], pa.timestamp("ns"))
    pq.write_table(pa.table(columns), path)
    with pytest.raises(DataError, match="timestamp holds times without a time zone"):
        load_transactions(path)


def test_parquet_missing_time_is_a_bad_row(tmp_path: Path):
    """A null in a zoned Parquet timestamp column is a bad row, named by its row index."""
    path = tmp_path / "h.parquet"
    columns = {c: [row[c] for row in GOOD_ROWS] for c in REQUIRED_COLUMNS}
    columns["timestamp"] = pa.array([0, None, 0], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table(columns), path)
    with pytest.raises(DataError, match="0-based row index 1, column timestamp: missing"):
        load_transactions(path)


def test_parquet_times_of_another_type_are_refused(tmp_path: Path):
    """A Parquet timestamp column that is neither times nor text fails with its type."""
    path = tmp_path / "h.parquet"
    columns = {c: [row[c] for row in GOOD_ROWS] for c in REQUIRED_COLUMNS}
    columns["timestamp"] = pa.array([1, 2, 3], pa.int64())
    pq.write_table(pa.table(columns), path)
    with pytest.raises(DataError, match="column timestamp has type int64"):
        load_transactions(path)


def test_rejects_file_takes_the_bad_rows(tmp_path: Path):
    """With rejects_path the good rows load and each bad one is written with row, column, reason."""
    rows = [*GOOD_ROWS, dict(GOOD_ROWS[0], transaction_id="t4", amount="-3")]
    rows.insert(1, dict(GOOD_ROWS[0], transaction_id="t0", mcc="99999"))
    rejects = tmp_path / "rejects.csv"
    loaded = load_transactions(_write_csv(tmp_path / "h.csv", rows), rejects_path=rejects)
    pd.testing.assert_frame_equal(loaded.frame, EXPECTED)
    assert loaded.rejected_rows == 2
    with rejects.open(newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert [(r["row"], r["column"], r["reason"]) for r in written] == [
        ("3", "mcc", "not an integer in 0..9999"),
        ("6", "amount", "negative"),
    ]
    assert [r["transaction_id"] for r in written] == ["t0", "t4"]
    assert [r["card_id"] for r in written] == ["****1111", "****1111"]
    assert CARD not in rejects.read_text()


def test_rejects_file_is_written_even_when_no_row_is_bad(tmp_path: Path):
    """A clean load with rejects_path leaves a header-only rejects file, not a stale one."""
    rejects = tmp_path / "rejects.csv"
    rejects.write_text("stale\n")
    loaded = load_transactions(_csv_file(tmp_path), rejects_path=rejects)
    assert loaded.rejected_rows == 0
    assert rejects.read_text().splitlines() == [
        ",".join(f'"{name}"' for name in (*ALL_COLUMNS, "row", "column", "reason"))
    ]


def test_all_rows_rejected_is_an_error(tmp_path: Path):
    """When every row is bad there is nothing to train on: DataError, rejects still written."""
    rejects = tmp_path / "rejects.csv"
    path = _write_csv(tmp_path / "h.csv", [dict(row, is_fraud="x") for row in GOOD_ROWS])
    with pytest.raises(DataError, match="no transactions; all 3 rows were rejected"):
        load_transactions(path, rejects_path=rejects)
    assert len(rejects.read_text().splitlines()) == 4


def test_missing_required_column_is_named(tmp_path: Path):
    """A file without a required column fails, naming the column."""
    columns = tuple(c for c in ALL_COLUMNS if c != "terminal_id")
    path = _write_csv(tmp_path / "h.csv", GOOD_ROWS, columns=columns)
    with pytest.raises(DataError, match=r"h\.csv: missing required column.*: terminal_id$"):
        load_transactions(path)


def test_header_only_file_has_no_transactions(tmp_path: Path):
    """A header without rows is an error rather than an empty frame."""
    path = tmp_path / "h.csv"
    path.write_text(",".join(REQUIRED_COLUMNS) + "\n")
    with pytest.raises(DataError, match=r"h\.csv: no transactions$"):
        load_transactions(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent.csv", None, "no such file"),
        ("empty.csv", b"", "not a readable CSV file"),
        ("h.csv.gz", b"not gzip", "not a readable CSV file"),
        ("h.parquet", b"not parquet", "not a readable Parquet file"),
        ("h.json", b"{}", "unsupported file type"),
    ],
)
def test_unreadable_file_is_a_data_error(
    tmp_path: Path, name: str, content: bytes | None, message: str
):
    """Missing, empty, corrupt or unsupported files fail with DataError."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_transactions(path)
