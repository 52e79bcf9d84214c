"""`fraud-train registry list`, `promote` and `rollback`: the registry's versions and aliases.

Every alias move is recorded in the registry's history, with its reason. Handlers import
their pipeline when they run, so that `--help` and the light commands do not load what only
the heavy ones use.
"""

from __future__ import annotations

import argparse

from service.model.registry import CHALLENGER, CHAMPION, RegistryError
from training.cli.console import say
from training.cli.options import registry_from, settings_from


def handle_list(args: argparse.Namespace) -> int:
    """Print the versions, with their test metrics and aliases."""
    from training.registry.publishing import format_versions, list_versions

    print(format_versions(list_versions(registry_from(args, settings_from(args)))))
    return 0


def handle_promote(args: argparse.Namespace) -> int:
    """Point the alias at a version, or the champion at the challenger's version."""
    from training.registry.publishing import promote, promote_challenger

    root = registry_from(args, settings_from(args))
    if args.version == CHALLENGER:
        if args.alias != CHAMPION:
            raise RegistryError("only the champion can take the challenger's version")
        version = promote_challenger(root, reason=args.reason)
    else:
        version = args.version
        promote(root, version, alias=args.alias, reason=args.reason)
    say(f"{args.alias} is now {version}")
    return 0


def handle_rollback(args: argparse.Namespace) -> int:
    """Move the champion back to its previous version; print that version."""
    from training.registry.publishing import rollback

    version = rollback(registry_from(args, settings_from(args)), reason=args.reason)
    say(f"champion rolled back to {version}")
    print(version)
    return 0
