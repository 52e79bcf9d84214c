"""Load a user's transaction history (CSV or Parquet) into the frame that training replays.

Every column is first read as text, so nothing is coerced behind the user's back, then each
recognised column is validated and converted with vectorised pyarrow/pandas operations.

Bad rows
    A row is bad when one of its values cannot be trusted: `training.data.checks` lists the
    checks, in the order in which a row's first problem is chosen. By default the first bad
    row raises `DataError`; with `rejects_path` every bad row is written there and left out,
    and the count is returned. Nothing is dropped silently. A later row repeating an earlier
    `transaction_id` is bad (outcomes reference ids); the earlier one is kept.

Row numbers, as a person finds the row
    CSV: the line on which the record starts (header = line 1), counting line breaks inside
    quoted values. Blank lines are records too (bad ones), so numbers match an editor's.
    Parquet: the 0-based row index.

File-level problems raise `DataError` even with `rejects_path`: unreadable file, missing
required column, a record with the wrong number of fields, a Parquet `timestamp` column of
naive times, and a file with no good row ("no transactions").

Card ids never appear in a message (they may be raw card numbers); the rejects file keeps
only their last 4 characters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from service.model.artifact import sha256_file
from training.data.checks import Mask, Problem, convert, first_problems

REQUIRED_COLUMNS = ("transaction_id", "timestamp", "card_id", "terminal_id", "amount", "is_fraud")
OPTIONAL_COLUMNS = ("merchant_id", "mcc", "entry_mode", "currency", "country", "card_present")
_RECOGNISED = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
_OUTPUT_COLUMNS = tuple("timestamp_ns" if c == "timestamp" else c for c in _RECOGNISED)
_SHOWN_CHARS = 40


class DataError(Exception):
    """The transaction history cannot be used as it is; the message says where and why."""


@dataclass(frozen=True)
class LoadedTransactions:
    """A validated history, sorted by (timestamp_ns, transaction_id), and where it came from."""

    frame: pd.DataFrame
    rejected_rows: int
    source_sha256: str
    source_name: str


@dataclass(frozen=True)
class _Source:
    """A file's recognised columns as text ("" where absent or null), before validation."""

    name: str
    present: tuple[str, ...]
    text: dict[str, Any]
    utc_times: Any | None  # a zoned Parquet timestamp column in UTC, used instead of text
    row_numbers: Callable[[], npt.NDArray[np.int64]]
    row_word: str


@dataclass(frozen=True)
class CheckedFile:
    """One file's rows checked: the good ones normalised and time-sorted, and what is wrong
    with the others. Nothing is raised for a bad row: the caller decides (stop, or reject)."""

    good: pd.DataFrame
    bad_rows: int
    first_bad_row: str | None
    """The message naming the first bad row, its column and reason; None when none is bad."""
    rejects: pa.Table | None
    """The bad rows as the rejects file holds them, when asked for."""


def load_transactions(path: Path, *, rejects_path: Path | None = None) -> LoadedTransactions:
    """Read, validate and normalise the history at `path` (.csv, .csv.gz or .parquet).

    Raises DataError at the first bad row, unless `rejects_path` is given: then bad rows are
    written there (card ids masked) and counted in `rejected_rows`.
    """
    checked = check_file(path, rejects=rejects_path is not None)
    if rejects_path is None and checked.first_bad_row is not None:
        raise DataError(checked.first_bad_row)
    if rejects_path is not None and checked.rejects is not None:
        write_rejects(rejects_path, checked.rejects)
    if checked.good.empty:
        rejected = f"; all {checked.bad_rows} rows were rejected" if checked.bad_rows else ""
        raise DataError(f"{path.name}: no transactions{rejected}")
    return LoadedTransactions(
        frame=checked.good,
        rejected_rows=checked.bad_rows,
        source_sha256=sha256_file(path),
        source_name=path.name,
    )


def check_file(
    path: Path, *, name: str | None = None, rejects: bool = False, row_numbers: bool = False
) -> CheckedFile:
    """Every row of `path` checked; file-level problems raise DataError.

    `name` is how messages call the file (its name by default); `rejects` asks for the bad
    rows' table; `row_numbers` adds the `source_row` column, each good row's number as
    messages give it, to name it later (a repeat of an id in another file).
    """
    source = _read(path, name or path.name)
    values, problems = convert(source.text, source.utc_times)
    first_problem = first_problems(problems, len(values["timestamp_ns"]))
    bad = first_problem >= 0
    if row_numbers:
        values = values | {"source_row": source.row_numbers()}
    return CheckedFile(
        good=_frame(values, ~bad),
        bad_rows=int(bad.sum()),
        first_bad_row=_bad_row_message(source, problems, first_problem) if bad.any() else None,
        rejects=_rejects_table(source, problems, first_problem) if rejects else None,
    )


def _read(path: Path, name: str) -> _Source:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lowered = path.name.lower()
    if lowered.endswith((".csv", ".csv.gz")):
        return _read_csv(path, name)
    if lowered.endswith(".parquet"):
        return _read_parquet(path, name)
    raise DataError(f"{name}: unsupported file type; expected .csv, .csv.gz or .parquet")


def _read_csv(path: Path, name: str) -> _Source:
    field_counts: list[tuple[int, int]] = []

    def refuse(row: Any) -> str:
        field_counts.append((row.actual_columns, row.expected_columns))
        return "error"

    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=refuse
            ),
            convert_options=pa_csv.ConvertOptions(default_column_type=pa.string()),
        )
    except (pa.ArrowInvalid, OSError) as error:
        if field_counts:
            actual, expected = field_counts[0]
            # `from None`: pyarrow's message quotes the record, which may hold a card number.
            raise DataError(
                f"{name}: a record has {actual} fields where the header has {expected}"
            ) from None
        raise DataError(f"{name}: not a readable CSV file ({error})") from error
    present = _recognised(name, table.column_names)
    text = {column: table[column] for column in present}
    return _Source(
        name=name,
        present=present,
        text=_fill_absent(text, table.num_rows),
        utc_times=None,
        row_numbers=lambda: _csv_line_numbers(table),
        row_word="line",
    )


def _read_parquet(path: Path, name: str) -> _Source:
    try:
        present = _recognised(name, pq.read_schema(path).names)
        table = pq.read_table(path, columns=list(present))
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{name}: not a readable Parquet file ({error})") from error
    zoned_times = _zoned_times(name, table["timestamp"])
    text = {column: _as_text(name, column, table[column]) for column in present}
    return _Source(
        name=name,
        present=present,
        text=_fill_absent(text, table.num_rows),
        utc_times=None if zoned_times is None else _in_utc(name, zoned_times),
        row_numbers=lambda: np.arange(table.num_rows, dtype=np.int64),
        row_word="0-based row index",
    )


def _recognised(file_name: str, columns: list[str]) -> tuple[str, ...]:
    """The recognised columns in file order, once the required ones are known to be there."""
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise DataError(f"{file_name}: missing required column(s): {', '.join(missing)}")
    present = tuple(column for column in columns if column in _RECOGNISED)
    repeated = sorted({column for column in present if present.count(column) > 1})
    if repeated:
        raise DataError(f"{file_name}: column(s) appear more than once: {', '.join(repeated)}")
    return present


def _fill_absent(text: dict[str, Any], rows: int) -> dict[str, Any]:
    empty = pa.chunked_array([pa.repeat(pa.scalar("", pa.string()), rows)])
    return {column: text.get(column, empty) for column in _RECOGNISED}


def _csv_line_numbers(table: pa.Table) -> npt.NDArray[np.int64]:
    """The line on which each record starts: header is line 1; quoted values may span lines."""
    breaks = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        breaks += pc.count_substring(column, "\n").to_numpy()
    earlier_breaks = np.concatenate(([0], np.cumsum(breaks)[:-1]))
    return np.arange(2, table.num_rows + 2, dtype=np.int64) + earlier_breaks


def _zoned_times(file_name: str, column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A tz-aware Parquet timestamp column; None for text, which is parsed as in a CSV."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return None
    if not pa.types.is_timestamp(kind):
        raise DataError(f"{file_name}: column timestamp has type {kind}; expected times or text")
    if kind.tz is None:
        raise DataError(f"{file_name}: column timestamp holds times without a time zone")
    return column


def _in_utc(file_name: str, times: pa.ChunkedArray) -> pa.ChunkedArray:
    """Zoned times as UTC nanoseconds; a time nanoseconds cannot hold fails the file."""
    try:
        return pc.cast(times, pa.timestamp("ns", "UTC"))
    except pa.ArrowInvalid as error:
        raise DataError(f"{file_name}: column timestamp: {error}") from error


def _as_text(file_name: str, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.int8())  # so that a boolean is_fraud reads as 0/1
    try:
        return pc.cast(column, pa.string()).fill_null("")
    except pa.ArrowNotImplementedError as error:
        raise DataError(f"{file_name}: column {name} of type {column.type} is not text") from error


def _bad_row_message(
    source: _Source, problems: list[Problem], first_problem: npt.NDArray[np.int16]
) -> str:
    bad_rows = np.flatnonzero(first_problem >= 0)
    row = int(bad_rows[0])
    problem = problems[first_problem[row]]
    number = source.row_numbers()[row]
    return (
        f"{source.name}: {source.row_word} {number}, column {problem.column}: {problem.reason} "
        f"(value {_shown(problem.column, source.text[problem.column][row].as_py())}); "
        f"{bad_rows.size} bad row(s) in all. Give a rejects path to load the good rows and "
        "write the bad ones there."
    )


def _shown(column: str, value: str) -> str:
    if column == "card_id":
        return "<card_id redacted>"
    if len(value) > _SHOWN_CHARS:
        value = value[:_SHOWN_CHARS] + "…"
    return repr(value)


def _rejects_table(
    source: _Source, problems: list[Problem], first_problem: npt.NDArray[np.int16]
) -> pa.Table:
    """Each bad row's recognised columns (card_id masked), its row number, column and reason."""
    bad = first_problem >= 0
    keep = pa.array(bad)
    columns = {column: source.text[column].filter(keep) for column in source.present}
    last_four = pc.utf8_slice_codeunits(columns["card_id"], start=-4)
    columns["card_id"] = pc.binary_join_element_wise("****", last_four, "")
    which = first_problem[bad]
    columns |= {
        "row": pa.array(source.row_numbers()[bad]),
        "column": pc.take(pa.array([problem.column for problem in problems], pa.string()), which),
        "reason": pc.take(pa.array([problem.reason for problem in problems], pa.string()), which),
    }
    return pa.table(columns)


def write_rejects(path: Path, rejects: pa.Table) -> None:
    """Write the rejects table (`CheckedFile.rejects`, or several joined) as CSV."""
    try:
        pa_csv.write_csv(rejects, path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: cannot write rejects file ({error})") from error


def _frame(values: dict[str, Any], good: Mask) -> pd.DataFrame:
    """The good rows in (timestamp_ns, transaction_id) order; ids compare as text."""
    columns = (*_OUTPUT_COLUMNS, "source_row") if "source_row" in values else _OUTPUT_COLUMNS
    table = pa.table({column: values[column] for column in columns}).filter(good)
    ordered = table.sort_by([("timestamp_ns", "ascending"), ("transaction_id", "ascending")])
    frame: pd.DataFrame = ordered.to_pandas()
    return frame
