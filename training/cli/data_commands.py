"""`fraud-train simulate` and `fraud-train config`: a history to train on, and the settings
training would use.

Handlers import their pipeline when they run, so that `--help` and the light commands do
not load what only the heavy ones use.
"""

from __future__ import annotations

import argparse

from training.cli.console import say
from training.cli.options import settings_from


def handle_simulate(args: argparse.Namespace) -> int:
    """Write the simulated history the arguments describe."""
    from training.simulation.history_files import write_daily_transactions, write_transactions
    from training.simulation.params import SimulationParams
    from training.simulation.simulate import simulate

    params = SimulationParams(
        customers=args.customers,
        terminals=args.terminals,
        days=args.days,
        start_date=args.start,
        seed=args.seed,
        profile=args.profile,
    )
    frame = simulate(params)
    frauds = int(frame["is_fraud"].sum())
    if args.daily:
        files = write_daily_transactions(frame, args.out)
        say(f"wrote {len(frame)} transactions ({frauds} frauds) to {files} files in {args.out}")
        return 0
    write_transactions(frame, args.out)
    say(f"wrote {len(frame)} transactions ({frauds} frauds) to {args.out}")
    return 0


def handle_config(args: argparse.Namespace) -> int:
    """Print the effective settings as JSON."""
    print(settings_from(args).model_dump_json(indent=2))
    return 0
