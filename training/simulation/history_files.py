"""Write a simulated transaction history (`training.simulation.simulate`) to a CSV or Parquet
file."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv


def write_transactions(frame: pd.DataFrame, path: Path) -> None:
    """Write a simulated frame to `path`: Parquet if its suffix is ".parquet", else CSV.

    CSV timestamps are ISO 8601 in UTC ("2018-04-01T00:07:56Z") and amounts have two
    decimals; Parquet keeps the column types. The file is written under a temporary name in
    the same directory and renamed when complete, so `path` never holds a partial file.
    """
    write = _write_parquet if path.suffix == ".parquet" else _write_csv
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(frame, temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    timestamps = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    table = pa.Table.from_pandas(frame.drop(columns=["timestamp", "amount"]), preserve_index=False)
    iso_times = np.datetime_as_string(timestamps, unit="s", timezone="UTC")
    # A decimal column prints its two decimals, where a float prints its shortest form.
    cents = pa.array(frame["amount"].to_numpy()).cast(pa.decimal128(18, 2))
    table = table.append_column("timestamp", pa.array(iso_times)).append_column("amount", cents)
    table = table.select(list(frame.columns))
    with path.open("wb") as sink:
        sink.write((",".join(table.column_names) + "\n").encode())
        options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
        pa_csv.write_csv(table, sink, options)


def write_daily_transactions(frame: pd.DataFrame, directory: Path) -> int:
    """Write a simulated frame as one Parquet file per UTC day into `directory`
    (`YYYY-MM-DD.parquet`, so names sort by time), each as `write_transactions` writes one;
    the number of files."""
    directory.mkdir(parents=True, exist_ok=True)
    days = frame["timestamp"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d")
    for day, rows in frame.groupby(days, sort=True):
        write_transactions(rows.reset_index(drop=True), directory / f"{day}.parquet")
    return int(days.nunique())
