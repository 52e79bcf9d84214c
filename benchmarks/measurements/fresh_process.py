"""A measurement in a new Python process (one that has loaded nothing else), its record
handed back in a file of its own: the child's stdout also carries what the code it
measures logs (structlog's default output), e.g. `state_map_resized` as LMDB's map grows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RECORD_OPTION = "--record"


def run_fresh(module: str, arguments: Sequence[str], *, timeout: float, what: str) -> Any:
    """The JSON record `python -m module arguments --record FILE` writes; RuntimeError
    (with the end of its stderr) when it fails."""
    with tempfile.TemporaryDirectory(prefix="fraud-fresh-") as directory:
        record = Path(directory) / "record.json"
        argv = [sys.executable, "-m", module, *arguments, RECORD_OPTION, str(record)]
        finished = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if finished.returncode != 0:
            raise RuntimeError(f"{what} failed: {finished.stderr.strip()[-2000:]}")
        return json.loads(record.read_text())


def add_record_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        RECORD_OPTION, type=Path, help="write the JSON record to this file (stdout by default)"
    )


def write_record(figures: Any, path: Path | None) -> None:
    """`figures` (a dataclass) as one JSON line, to `path` or stdout."""
    line = json.dumps(dataclasses.asdict(figures))
    if path is None:
        print(line)
    else:
        path.write_text(line + "\n")
