"""What `fraud-train` prints, and the exit codes a command ends with.

Results (a version, metrics as JSON) go to stdout, for scripts to read; progress, messages
and errors go to stderr.
"""

from __future__ import annotations

import json
import math
import sys

# 0 is success. 1, an unexpected error, is what Python exits with on an exception that
# `main` does not catch.
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_DECLINED = 4


def show_progress() -> bool:
    """Whether to draw progress bars: only for a person watching stderr."""
    return sys.stderr.isatty()


def say(message: str) -> None:
    """A message for the person running the command, on stderr."""
    print(message, file=sys.stderr, flush=True)


def error(message: str) -> None:
    """An error, on stderr, named as `fraud-train`'s."""
    print(f"fraud-train: error: {message}", file=sys.stderr, flush=True)


def to_json(value: object) -> str:
    """Strict JSON: an undefined metric (NaN, e.g. one class only) is written as null."""

    def strict(item: object) -> object:
        if isinstance(item, float) and math.isnan(item):
            return None
        if isinstance(item, dict):
            return {key: strict(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [strict(inner) for inner in item]
        return item

    return json.dumps(strict(value), indent=2, allow_nan=False)
