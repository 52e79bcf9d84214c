"""The row checks of a transaction history, and the conversion of its columns from text.

`training.data.loading` reads a file into text columns and hands them here; `convert` returns every
output column and every `Problem`, a column and reason with the rows it applies to. Problems
come in the order in which a row's first one is chosen, as `first_problems` picks it:

    transaction_id, card_id, terminal_id: empty, or a transaction_id repeating an earlier one
    timestamp: not ISO 8601 with an explicit zone (never assumed UTC), or missing
    amount: not a decimal number, not finite, or negative
    is_fraud: not 0 or 1
    mcc: not an integer in 0..9999
    entry_mode: not an `EntryMode` name (any case)
    currency, country: not 3 (or 2) uppercase letters
    card_present: not true, false, 1 or 0

The optional columns may be empty. Every problem here is a row's; a problem with the whole
file is the loader's to raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from service.core.domain import EntryMode

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

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Problem:
    """A reason a value in `column` cannot be trusted, and the rows where it applies."""

    column: str
    reason: str
    rows: Mask


def convert(text: dict[str, Any], utc_times: Any | None) -> tuple[dict[str, Any], list[Problem]]:
    """Every output column, and every problem in the order a row's first one is chosen.

    `text` holds every recognised column as text ("" where absent or null); `utc_times`, a
    Parquet timestamp column already in UTC nanoseconds, replaces the timestamp text if given.
    """
    timestamp_ns, time_problems = _parse_times(text["timestamp"], utc_times)
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


def first_problems(problems: list[Problem], rows: int) -> npt.NDArray[np.int16]:
    """Per row, the index in `problems` of its first problem, or -1 for a good row."""
    first = np.full(rows, -1, dtype=np.int16)
    for index in range(len(problems) - 1, -1, -1):
        first[problems[index].rows] = index
    return first


def _id_problems(text: dict[str, Any]) -> list[Problem]:
    def blank(column: str) -> Mask:
        return _mask(pc.equal(pc.utf8_trim_whitespace(text[column]), ""))

    duplicate = text["transaction_id"].to_pandas().duplicated(keep="first").to_numpy()
    return [
        Problem("transaction_id", "empty", blank("transaction_id")),
        Problem("transaction_id", "repeats an earlier row's transaction_id", duplicate),
        Problem("card_id", "empty", blank("card_id")),
        Problem("terminal_id", "empty", blank("terminal_id")),
    ]


def _parse_times(
    text: pa.ChunkedArray, utc_times: Any | None
) -> tuple[npt.NDArray[np.int64], list[Problem]]:
    """UTC epoch nanoseconds; text must be ISO 8601 with an explicit zone, never assumed UTC."""
    if utc_times is not None:
        nanoseconds = pc.cast(utc_times, pa.int64()).fill_null(0).to_numpy()
        return nanoseconds, [Problem("timestamp", "missing", _mask(utc_times.is_null()))]
    parsed = pd.to_datetime(text.to_pandas(), utc=True, format="ISO8601", errors="coerce")
    # pandas may parse at a coarser unit; times nanoseconds cannot hold are rejected too.
    in_range = parsed.between(
        pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    )
    parsed = parsed.where(in_range).dt.as_unit("ns")
    unparsed = parsed.isna().to_numpy()
    nanoseconds = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return nanoseconds, [
        Problem("timestamp", "not an ISO 8601 time between 1677 and 2262", unparsed),
        Problem("timestamp", "no time zone", ~_mask(pc.match_substring_regex(text, _ZONE))),
    ]


def _parse_amount(text: pa.ChunkedArray) -> tuple[npt.NDArray[np.float64], list[Problem]]:
    """Major units; pyarrow's cast is correctly rounded, like float() on the same text."""
    decimal = pc.match_substring_regex(text, _DECIMAL)
    numeric = pc.or_(decimal, pc.match_substring_regex(text, _NON_FINITE))
    amount = pc.cast(pc.if_else(numeric, text, "nan"), pa.float64()).to_numpy()
    return amount, [
        Problem("amount", "not a decimal number", ~_mask(numeric)),
        Problem("amount", "not finite", ~np.isfinite(amount)),
        Problem("amount", "negative", amount < 0),
    ]


def _parse_mcc(text: pa.ChunkedArray) -> tuple[npt.NDArray[np.int32], list[Problem]]:
    valid = pc.match_substring_regex(text, _MCC)
    mcc = pc.cast(pc.if_else(valid, text, "-1"), pa.int32()).to_numpy()
    invalid = ~_mask(pc.or_(valid, pc.equal(text, "")))
    return mcc, [Problem("mcc", "not an integer in 0..9999", invalid)]


def _lookup(
    column: str, key: pa.ChunkedArray, table: dict[str, int], reason: str
) -> tuple[npt.NDArray[np.int8], list[Problem]]:
    """`table[key]` per row as int8; a key not in `table` is a problem for that reason."""
    index = pc.index_in(key, value_set=pa.array(list(table), pa.string()))
    codes = np.array(list(table.values()), dtype=np.int8)
    values = codes[index.fill_null(0).to_numpy()]
    return values, [Problem(column, reason, ~_mask(index.is_valid()))]


def _code_problem(column: str, text: pa.ChunkedArray, letters: int) -> Problem:
    valid = pc.or_(pc.equal(text, ""), pc.match_substring_regex(text, f"^[A-Z]{{{letters}}}$"))
    return Problem(column, f"not {letters} uppercase letters", ~_mask(valid))


def _mask(booleans: pa.ChunkedArray) -> Mask:
    return np.asarray(booleans, dtype=np.bool_)
