"""`fraud-train state build`: the feature state a new deployment starts with, seeded from
history with the champion's feature settings, so that the server's first swipes see the
card, terminal and merchant histories the model was trained on.

Handlers import their pipeline when they run, so that `--help` and the light commands do
not load what only the heavy ones use.
"""

from __future__ import annotations

import argparse
import time

from training.cli.console import say, show_progress
from training.cli.options import registry_from, settings_from

_MIB = 1024 * 1024


def handle_state_build(args: argparse.Namespace) -> int:
    """Seed a store from the history and publish it at `--state`; a summary on stderr."""
    from service.config.settings import load_settings as load_server_settings
    from service.model.registry import Registry, no_champion
    from training.data.dataset import load_history
    from training.data.state_publishing import build_state_directory, check_target

    started = time.monotonic()
    root = registry_from(args, settings_from(args))
    champion = Registry(root).champion()
    if champion is None:
        raise no_champion(root)
    version, manifest = champion
    check_target(args.state, replace=args.replace)  # before the long part, not after
    server = load_server_settings(args.server_config)
    tokenizer = server.card_tokenizer()
    seeded = build_state_directory(
        load_history(args.data, rejects_path=args.rejects).frame,
        manifest.feature_config,
        args.state,
        server.state,
        replace=args.replace,
        tokenize_card=tokenizer.token,
        progress=show_progress(),
    )
    say(
        f"{args.state}: replayed {seeded.replayed:,} transactions with the features of "
        f"{version}; kept {seeded.cards:,} cards, {seeded.terminals:,} terminals, "
        f"{seeded.merchants:,} merchants, {seeded.transactions:,} transactions; "
        f"{time.monotonic() - started:.1f} s, {seeded.file_bytes / _MIB:.1f} MiB"
    )
    return 0
