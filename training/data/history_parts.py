"""A history given as several files (a directory of Parquet files, or a glob), each checked
on its own as `training.data.loading` checks one file.

`--data` names a file, a directory (its `*.parquet` files, in name order: one a day sorts
by time) or a glob (`'days/2018-*.parquet'`, quoted so that the shell leaves it alone; any
file type the loader reads). Each part's bad rows are named by their row within that part;
a transaction_id repeating one of an earlier part (name order, then row) is a bad row of
the later part, found only once every part is read. The rejects file of a partitioned
history leads with a `file` column.

`load_parts` reads the parts one after the other in this process; `training.data.cluster_history`
checks them on a Dask cluster with the same functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from service.model.artifact import sha256_file
from training.data.loading import DataError, LoadedTransactions, check_file, write_rejects

_GLOB_CHARACTERS = frozenset("*?[")
REPEAT_REASON = "repeats an earlier row's transaction_id"


@dataclass(frozen=True)
class PartFile:
    """One part of a history: where it is, how messages call it, its place in the order."""

    path: Path
    name: str
    index: int


@dataclass(frozen=True)
class CheckedPart:
    """A part's good rows (with `part` and `source_row`), its bad rows and its checksum."""

    name: str
    good: pd.DataFrame
    bad_rows: int
    first_bad_row: str | None
    rejects: pa.Table | None
    sha256: str


def is_partitioned(data: Path) -> bool:
    """Whether `data` names several files (a directory or a glob) rather than one."""
    return data.is_dir() or bool(_GLOB_CHARACTERS & set(str(data)))


def history_parts(data: Path) -> list[PartFile]:
    """The files of a directory or glob, in name order; DataError when there are none."""
    if data.is_dir():
        paths = sorted(data.glob("*.parquet"))
        names = [path.name for path in paths]
        where = f"{data}: no *.parquet files"
    else:
        paths = sorted(match for match in _matches(data) if match.is_file())
        names = [str(path) for path in paths]
        where = f"{data}: no file matches"
    if not paths:
        raise DataError(where)
    pairs = zip(paths, names, strict=True)
    return [PartFile(path, name, index) for index, (path, name) in enumerate(pairs)]


def check_part(part: PartFile, rejects: bool) -> CheckedPart:
    """Check one part (on a worker, or here); file-level problems raise DataError."""
    checked = check_file(part.path, name=part.name, rejects=rejects, row_numbers=True)
    good = checked.good
    good.insert(len(good.columns), "part", np.int32(part.index))
    table = checked.rejects
    if table is not None:
        table = table.add_column(0, "file", pa.array([part.name] * table.num_rows, pa.string()))
    return CheckedPart(
        part.name, good, checked.bad_rows, checked.first_bad_row, table, sha256_file(part.path)
    )


def first_bad_row(parts: list[CheckedPart]) -> str | None:
    """The message of the first part's first bad row, and how many more there are."""
    bad = [part for part in parts if part.first_bad_row is not None]
    if not bad:
        return None
    others = sum(part.bad_rows for part in bad[1:])
    more = f"; {others} more in {len(bad) - 1} later file(s)" if others else ""
    return f"{bad[0].first_bad_row}{more}"


def repeated_ids(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows (transaction_id, part, source_row) repeating an id of an earlier row, where
    earlier is the parts' order then the row's; within one part the check ran already."""
    ordered = rows.sort_values(["part", "source_row"], kind="stable")
    repeats: pd.DataFrame = ordered[ordered["transaction_id"].duplicated(keep="first")]
    return repeats


def repeat_message(repeats: pd.DataFrame, parts: list[PartFile]) -> str:
    first = repeats.sort_values(["part", "source_row"]).iloc[0]
    return (
        f"{parts[int(first['part'])].name}: row {int(first['source_row'])}, column "
        f"transaction_id: {REPEAT_REASON} in an earlier file (value "
        f"{first['transaction_id']!r}); {len(repeats)} such row(s) in all. Give a rejects "
        "path to load the good rows and write the bad ones there."
    )


def repeat_rejects(repeats: pd.DataFrame, parts: list[PartFile]) -> pa.Table:
    """Rejects rows for ids repeated across parts: only the id is shown, as normalised."""
    return pa.table(
        {
            "file": pa.array([parts[int(index)].name for index in repeats["part"]], pa.string()),
            "transaction_id": pa.array(repeats["transaction_id"].astype(str), pa.string()),
            "row": pa.array(repeats["source_row"].to_numpy(dtype=np.int64)),
            "column": pa.array(["transaction_id"] * len(repeats), pa.string()),
            "reason": pa.array([f"{REPEAT_REASON} in an earlier file"] * len(repeats)),
        }
    )


def write_part_rejects(path: Path, tables: list[pa.Table]) -> None:
    """One rejects CSV for every part: columns a part lacks are left empty."""
    schema_first = pa.schema([("file", pa.string())])
    joined = pa.concat_tables(
        [schema_first.empty_table(), *tables], promote_options="permissive"
    ).select(_rejects_column_order(tables))
    write_rejects(path, joined)


def combined_sha256(parts: list[CheckedPart]) -> str:
    """One checksum naming every part, by name and content, in order."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.name}\0{part.sha256}\n".encode())
    return digest.hexdigest()


def describe(parts: list[PartFile]) -> str:
    """How a lineage names a partitioned history: its first and last file and the count."""
    if len(parts) == 1:
        return parts[0].name
    return f"{parts[0].name} .. {parts[-1].name} ({len(parts)} files)"


def load_parts(data: Path, *, rejects_path: Path | None = None) -> LoadedTransactions:
    """Read and check every part in this process, as `load_transactions` does one file."""
    parts = history_parts(data)
    checked = [check_part(part, rejects_path is not None) for part in parts]
    message = first_bad_row(checked)
    if message is not None and rejects_path is None:
        raise DataError(message)
    frame = pd.concat([part.good for part in checked], ignore_index=True)
    repeats = repeated_ids(frame[["transaction_id", "part", "source_row"]])
    if len(repeats) and rejects_path is None:
        raise DataError(repeat_message(repeats, parts))
    frame = frame.drop(index=repeats.index)
    if rejects_path is not None:
        tables = [part.rejects for part in checked if part.rejects is not None]
        write_part_rejects(rejects_path, [*tables, repeat_rejects(repeats, parts)])
    if frame.empty:
        raise DataError(f"{data}: no transactions")
    ordered = frame.sort_values(["timestamp_ns", "transaction_id"], kind="stable")
    return LoadedTransactions(
        frame=ordered.drop(columns=["part", "source_row"]).reset_index(drop=True),
        rejected_rows=sum(part.bad_rows for part in checked) + len(repeats),
        source_sha256=combined_sha256(checked),
        source_name=describe(parts),
    )


def _matches(pattern: Path) -> list[Path]:
    """The paths a glob names, relative to the working directory unless absolute."""
    if pattern.is_absolute():
        return list(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))))
    return list(Path().glob(str(pattern)))


def _rejects_column_order(tables: list[pa.Table]) -> list[str]:
    ordered = ["file"]
    for table in tables:
        ordered += [name for name in table.column_names if name not in ordered]
    trailing = ["row", "column", "reason"]
    return [name for name in ordered if name not in trailing] + trailing
