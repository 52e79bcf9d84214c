"""`fraud-train registry list`, `promote`, `rollback` and `sign`, and `keys generate`: the
registry's versions, aliases and signatures.

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


def handle_sign(args: argparse.Namespace) -> int:
    """Sign a published version with the key given, or the signing_key setting."""
    from training.registry.publishing import sign
    from training.registry.signing import load_signing_key

    settings = settings_from(args)
    key_path = args.key if args.key is not None else settings.signing_key
    if key_path is None:
        raise RegistryError("no key to sign with: pass --key or set FRAUD_TRAIN_SIGNING_KEY")
    key = load_signing_key(key_path)
    sign(registry_from(args, settings), args.version, key)
    say(f"{args.version} signed by {key.key_id}")
    return 0


def handle_keys_generate(args: argparse.Namespace) -> int:
    """Write a new key pair; print its id and public key (stdout: the public key alone)."""
    from training.registry.signing import generate_key_pair

    key, private_path, public_path = generate_key_pair(args.out, args.name)
    say(
        f"key {key.key_id}: private key {private_path} (keep it offline, mode 0600), public "
        f"key {public_path}. Sign with FRAUD_TRAIN_SIGNING_KEY={private_path}; trust on the "
        f"servers with FRAUD_MODELS__TRUSTED_KEYS='[\"{key.public_text}\"]'"
    )
    print(key.public_text)
    return 0
