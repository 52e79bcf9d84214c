"""Load a user's transaction history (CSV or Parquet) into the frame that training replays.

Every column is first read as text, so nothing is coerced behind the user's back, then each
recognised column is validated and converted with vectorised pyarrow/pandas operations.

Bad rows
    A row is bad when one of its values cannot be trusted: see `_convert` for the list, in
    the order in which a row's first problem is chosen. By default the first bad row raises
    `DataError`; with `rejects_path` every bad row is written there and left out, and the
    count is returned. Nothing is dropped silently. A later row repeating an earlier
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

from service.artifact import sha256_file
from service.domain import EntryMode

REQUIRED_COLUMNS = ("transaction_id", "timestamp", "card_id", "terminal_id", "amount", "is_fraud")
OPTIONAL_COLUMNS = ("merchant_id", "mcc", "entry_mode", "currency", "country", "card_present")
_RECOGNISED = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
_OUTPUT_COLUMNS = tuple("timestamp_ns" if c == "timestamp" else c for c in _RECOGNISED)
_TEXT_OUTPUTS = ("transaction_id", "card_id", "terminal_id", "merchant_id", "currency", "country")

_DECIMAL = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_NON_FINITE = r"(?i)^[+-]?(?:inf|infinity|nan)$"
# A zone right after the time of day; a date alone ("2018-04-01") must not pass for "-01".
_ZONE = r":\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_MCC = r"^0*\d{1,4}$"
_ENTRY_MODES = {"": EntryMode.UNKNOWN.value} | {mode.name: mode.value for mode in EntryMode}
_CARD_PRESENT = {"": -1, "false": 0, "0": 0, "true": 1, "1": 1}
_IS_FRAUD = {"0": 0, "1": 1}
_MODE_REASON = f"not one of {', '.join(mode.name for mode in EntryMode)} (any case) or empty"
_SHOWN_CHARS = 40

_Mask = npt.NDArray[np.bool_]


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
    zoned_times: Any | None  # a Parquet timestamp column with a zone, used instead of text
    row_numbers: Callable[[], npt.NDArray[np.int64]]
    row_word: str


@dataclass(frozen=True)
class _Problem:
    column: str
    reason: str
    rows: _Mask


def load_transactions(path: Path, *, rejects_path: Path | None = None) -> LoadedTransactions:
    """Read, validate and normalise the history at `path` (.csv, .csv.gz or .parquet).

    Raises DataError at the first bad row, unless `rejects_path` is given: then bad rows are
    written there (card ids masked) and counted in `rejected_rows`.
    """
    source = _read(path)
    values, problems = _convert(source)
    first_problem = _first_problem(problems, len(values["timestamp_ns"]))
    bad = first_problem >= 0
    if rejects_path is None and bad.any():
        raise DataError(_bad_row_message(source, problems, first_problem))
    if rejects_path is not None:
        _write_rejects(rejects_path, source, problems, first_problem)
    if bad.all():
        rejected = f"; all {bad.size} rows were rejected" if bad.size else ""
        raise DataError(f"{source.name}: no transactions{rejected}")
    return LoadedTransactions(
        frame=_frame(values, ~bad),
        rejected_rows=int(bad.sum()),
        source_sha256=sha256_file(path),
        source_name=path.name,
    )


def _read(path: Path) -> _Source:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _read_csv(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    raise DataError(f"{path.name}: unsupported file type; expected .csv, .csv.gz or .parquet")


def _read_csv(path: Path) -> _Source:
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
                f"{path.name}: a record has {actual} fields where the header has {expected}"
            ) from None
        raise DataError(f"{path.name}: not a readable CSV file ({error})") from error
    present = _recognised(path.name, table.column_names)
    text = {column: table[column] for column in present}
    return _Source(
        name=path.name,
        present=present,
        text=_fill_absent(text, table.num_rows),
        zoned_times=None,
        row_numbers=lambda: _csv_line_numbers(table),
        row_word="line",
    )


def _read_parquet(path: Path) -> _Source:
    try:
        present = _recognised(path.name, pq.read_schema(path).names)
        table = pq.read_table(path, columns=list(present))
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path.name}: not a readable Parquet file ({error})") from error
    zoned_times = _zoned_times(path.name, table["timestamp"])
    text = {column: _as_text(path.name, column, table[column]) for column in present}
    return _Source(
        name=path.name,
        present=present,
        text=_fill_absent(text, table.num_rows),
        zoned_times=zoned_times,
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


def _as_text(file_name: str, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.int8())  # so that a boolean is_fraud reads as 0/1
    try:
        return pc.cast(column, pa.string()).fill_null("")
    except pa.ArrowNotImplementedError as error:
        raise DataError(f"{file_name}: column {name} of type {column.type} is not text") from error


def _convert(source: _Source) -> tuple[dict[str, Any], list[_Problem]]:
    """Every output column, and every problem in the order a row's first one is chosen."""
    text = source.text
    timestamp_ns, time_problems = _parse_times(source)
    amount, amount_problems = _parse_amount(text["amount"])
    is_fraud, fraud_problems = _lookup("is_fraud", text["is_fraud"], _IS_FRAUD, "not 0 or 1")
    mcc, mcc_problems = _parse_mcc(text["mcc"])
    entry_mode_key = pc.utf8_upper(pc.utf8_trim_whitespace(text["entry_mode"]))
    entry_mode, mode_problems = _lookup("entry_mode", entry_mode_key, _ENTRY_MODES, _MODE_REASON)
    present_key = pc.utf8_lower(text["card_present"])
    card_present, present_problems = _lookup(
        "card_present", present_key, _CARD_PRESENT, "not true, false, 1, 0 or empty"
    )
    problems = [
        *_id_problems(text),
        *time_problems,
        *amount_problems,
        *fraud_problems,
        *mcc_problems,
        *mode_problems,
        _code_problem("currency", text["currency"], 3),
        _code_problem("country", text["country"], 2),
        *present_problems,
    ]
    values = {column: text[column] for column in _TEXT_OUTPUTS} | {
        "timestamp_ns": timestamp_ns,
        "amount": amount,
        "is_fraud": is_fraud,
        "mcc": mcc,
        "entry_mode": entry_mode,
        "card_present": card_present,
    }
    return values, problems


def _id_problems(text: dict[str, Any]) -> list[_Problem]:
    def blank(column: str) -> _Mask:
        return _mask(pc.equal(pc.utf8_trim_whitespace(text[column]), ""))

    duplicate = text["transaction_id"].to_pandas().duplicated(keep="first").to_numpy()
    return [
        _Problem("transaction_id", "empty", blank("transaction_id")),
        _Problem("transaction_id", "repeats an earlier row's transaction_id", duplicate),
        _Problem("card_id", "empty", blank("card_id")),
        _Problem("terminal_id", "empty", blank("terminal_id")),
    ]


def _parse_times(source: _Source) -> tuple[npt.NDArray[np.int64], list[_Problem]]:
    """UTC epoch nanoseconds; text must be ISO 8601 with an explicit zone, never assumed UTC."""
    if source.zoned_times is not None:
        return _typed_times(source.name, source.zoned_times)
    text = source.text["timestamp"]
    parsed = pd.to_datetime(text.to_pandas(), utc=True, format="ISO8601", errors="coerce")
    # pandas may parse at a coarser unit; times nanoseconds cannot hold are rejected too.
    in_range = parsed.between(
        pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    )
    parsed = parsed.where(in_range).dt.as_unit("ns")
    unparsed = parsed.isna().to_numpy()
    nanoseconds = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return nanoseconds, [
        _Problem("timestamp", "not an ISO 8601 time between 1677 and 2262", unparsed),
        _Problem("timestamp", "no time zone", ~_mask(pc.match_substring_regex(text, _ZONE))),
    ]


def _typed_times(
    file_name: str, times: pa.ChunkedArray
) -> tuple[npt.NDArray[np.int64], list[_Problem]]:
    try:
        utc = pc.cast(times, pa.timestamp("ns", "UTC"))
    except pa.ArrowInvalid as error:
        raise DataError(f"{file_name}: column timestamp: {error}") from error
    nanoseconds = pc.cast(utc, pa.int64()).fill_null(0).to_numpy()
    return nanoseconds, [_Problem("timestamp", "missing", _mask(utc.is_null()))]


def _parse_amount(text: pa.ChunkedArray) -> tuple[npt.NDArray[np.float64], list[_Problem]]:
    """Major units; pyarrow's cast is correctly rounded, like float() on the same text."""
    decimal = pc.match_substring_regex(text, _DECIMAL)
    numeric = pc.or_(decimal, pc.match_substring_regex(text, _NON_FINITE))
    amount = pc.cast(pc.if_else(numeric, text, "nan"), pa.float64()).to_numpy()
    return amount, [
        _Problem("amount", "not a decimal number", ~_mask(numeric)),
        _Problem("amount", "not finite", ~np.isfinite(amount)),
        _Problem("amount", "negative", amount < 0),
    ]


def _parse_mcc(text: pa.ChunkedArray) -> tuple[npt.NDArray[np.int32], list[_Problem]]:
    valid = pc.match_substring_regex(text, _MCC)
    mcc = pc.cast(pc.if_else(valid, text, "-1"), pa.int32()).to_numpy()
    invalid = ~_mask(pc.or_(valid, pc.equal(text, "")))
    return mcc, [_Problem("mcc", "not an integer in 0..9999", invalid)]


def _lookup(
    column: str, key: pa.ChunkedArray, table: dict[str, int], reason: str
) -> tuple[npt.NDArray[np.int8], list[_Problem]]:
    """`table[key]` per row as int8; a key not in `table` is a problem for that reason."""
    index = pc.index_in(key, value_set=pa.array(list(table), pa.string()))
    codes = np.array(list(table.values()), dtype=np.int8)
    values = codes[index.fill_null(0).to_numpy()]
    return values, [_Problem(column, reason, ~_mask(index.is_valid()))]


def _code_problem(column: str, text: pa.ChunkedArray, letters: int) -> _Problem:
    valid = pc.or_(pc.equal(text, ""), pc.match_substring_regex(text, f"^[A-Z]{{{letters}}}$"))
    return _Problem(column, f"not {letters} uppercase letters", ~_mask(valid))


def _mask(booleans: pa.ChunkedArray) -> _Mask:
    return np.asarray(booleans, dtype=np.bool_)


def _first_problem(problems: list[_Problem], rows: int) -> npt.NDArray[np.int16]:
    """Per row, the index in `problems` of its first problem, or -1 for a good row."""
    first = np.full(rows, -1, dtype=np.int16)
    for index in range(len(problems) - 1, -1, -1):
        first[problems[index].rows] = index
    return first


def _bad_row_message(
    source: _Source, problems: list[_Problem], first_problem: npt.NDArray[np.int16]
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


def _write_rejects(
    path: Path, source: _Source, problems: list[_Problem], first_problem: npt.NDArray[np.int16]
) -> None:
    """Each bad row's recognised columns (card_id masked), its row number, column and reason."""
    bad = first_problem >= 0
    keep = pa.array(bad)
    columns = {column: source.text[column].filter(keep) for column in source.present}
    last_four = pc.utf8_slice_codeunits(columns["card_id"], start=-4)
    columns["card_id"] = pc.binary_join_element_wise("****", last_four, "")
    which = first_problem[bad]
    columns |= {
        "row": pa.array(source.row_numbers()[bad]),
        "column": pc.take(pa.array([problem.column for problem in problems]), which),
        "reason": pc.take(pa.array([problem.reason for problem in problems]), which),
    }
    try:
        pa_csv.write_csv(pa.table(columns), path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: cannot write rejects file ({error})") from error


def _frame(values: dict[str, Any], good: _Mask) -> pd.DataFrame:
    """The good rows in (timestamp_ns, transaction_id) order; ids compare as text."""
    table = pa.table({column: values[column] for column in _OUTPUT_COLUMNS}).filter(good)
    ordered = table.sort_by([("timestamp_ns", "ascending"), ("transaction_id", "ascending")])
    frame: pd.DataFrame = ordered.to_pandas()
    return frame
