"""A measurement child for test_fresh_process: logs on stdout around its record, as the
state store does, and exits 3 with a message on stderr when told to fail."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from benchmarks.measurements.fresh_process import add_record_option, write_record


@dataclass(frozen=True)
class Figures:
    answers: int
    name: str


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, required=True)
    parser.add_argument("--fail", action="store_true")
    add_record_option(parser)
    args = parser.parse_args()
    print('{"event": "state_map_resized"}')
    if args.fail:
        print("the store is full", file=sys.stderr)
        sys.exit(3)
    write_record(Figures(args.answers, "ünïcode"), args.record)
    print('{"event": "state_closed"}')


if __name__ == "__main__":
    main()
