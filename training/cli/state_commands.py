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


class StateUrl:
    """A Redis URL given as `--state`: shown with its password masked."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __str__(self) -> str:
        from service.config.settings import mask_url_password

        return mask_url_password(self.url)

    __repr__ = __str__


def handle_state_build(args: argparse.Namespace) -> int:
    """Seed a store from the history and publish it at `--state`; a summary on stderr."""
    from service.config.settings import load_settings as load_server_settings
    from service.model.registry import Registry, no_champion
    from service.state.redis_seeding import RedisTarget
    from training.data.dataset import load_history
    from training.data.state_publishing import (
        build_state_directory,
        build_state_redis,
        check_redis_target,
        check_target,
    )

    started = time.monotonic()
    root = registry_from(args, settings_from(args))
    champion = Registry(root).champion()
    if champion is None:
        raise no_champion(root)
    version, manifest = champion
    redis = RedisTarget(args.state.url) if isinstance(args.state, StateUrl) else None
    try:
        # Before the long part, not after.
        if redis is None:
            check_target(args.state, replace=args.replace)
        else:
            check_redis_target(redis, replace=args.replace)
        server = load_server_settings(args.server_config)
        tokenizer = server.card_tokenizer()
        frame = load_history(args.data, rejects_path=args.rejects).frame
        if redis is None:
            seeded = build_state_directory(
                frame,
                manifest.feature_config,
                args.state,
                server.state,
                replace=args.replace,
                tokenize_card=tokenizer.token,
                progress=show_progress(),
            )
        else:
            seeded = build_state_redis(
                frame,
                manifest.feature_config,
                redis,
                replace=args.replace,
                tokenize_card=tokenizer.token,
                progress=show_progress(),
            )
    finally:
        if redis is not None:
            redis.close()
    say(
        f"{args.state}: replayed {seeded.replayed:,} transactions with the features of "
        f"{version}; kept {seeded.cards:,} cards, {seeded.terminals:,} terminals, "
        f"{seeded.merchants:,} merchants, {seeded.transactions:,} transactions; "
        f"{time.monotonic() - started:.1f} s, {seeded.stored_bytes / _MIB:.1f} MiB"
        + (" in use by the Redis server" if redis is not None else "")
    )
    return 0
