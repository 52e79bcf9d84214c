"""`fraud-train rules ...`: lists and analyst rules beside the model (docs/rules.md).

    rules validate FILE            compile a rule file as the server will; name each problem
    rules publish FILE             publish it as the rules champion (or --shadow: challenger),
                                   after a backtest under the decline-rate limit (or --force)
    rules promote                  the shadow (challenger) rule set becomes the champion
    rules rollback                 the rules (or --lists) champion back one version
    rules show                     aliases, versions and the audit trail
    rules backtest                 replay a history through the rules (and the champion model),
                                   or the server's decision log (--decisions, --outcomes)
    rules list add|remove|show     allow and block lists

Rule files are TOML (`.toml`) or JSON; they are stored in the registry as canonical JSON.
Every change records who (`--by`, default the login name) and why (`--reason`). With a
`signing_key` setting, every version published (rule sets and lists) is signed with it,
as models are: servers with `models.trusted_keys` serve nothing else.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.rule_compiler import RuleError, compile_rules, parse_document
from service.features.engine import FEATURE_NAMES
from service.model.registry import CHALLENGER, CHAMPION, RegistryError
from service.model.rule_registry import RULE_KINDS, RuleKind, RuleRegistry
from training.cli.console import say
from training.cli.options import registry_from, settings_from
from training.config import TrainSettings


def read_rule_file(path: Path) -> dict[str, Any]:
    """The rule document in `path`, parsed (TOML or JSON) and compiled to check it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RuleError(f"{path}: cannot read: {error}") from None
    document = parse_document(text, toml=path.suffix.lower() == ".toml", what=str(path))
    compile_rules(document, "", FEATURE_NAMES)
    return document


def handle_validate(args: argparse.Namespace) -> int:
    """Compile the file; print its rules."""
    document = read_rule_file(args.file)
    rules = document.get("rules", [])
    say(f"{args.file}: {len(rules)} rules compile")
    for rule in rules:
        print(f"{rule['id']}\t{rule['action']}\t{rule['reason_code']}")
    return 0


def handle_publish(args: argparse.Namespace) -> int:
    """Publish the rule file, backtested first unless --force."""
    from service.model.rule_writer import publish, record_refusal

    settings = settings_from(args)
    root = registry_from(args, settings)
    document = read_rule_file(args.file)
    by = args.by or getpass.getuser()
    if not args.force:
        if args.data is None:
            raise RuleError("publish needs --data HISTORY to backtest the set first, or --force")
        from training.model_build.rule_backtest import backtest_rules

        report, _rows = backtest_rules(args.data, document, settings, root)
        rate = report["whole_set"]["rule_decline_rate"]
        if rate > settings.rules_max_decline_rate:
            why = (
                f"backtest decline rate {rate:.4%} is above rules_max_decline_rate "
                f"{settings.rules_max_decline_rate:.4%}"
            )
            record_refusal(root, "rules", by=by, reason=f"publish refused: {why}")
            raise RuleError(f"{why}: refused; publish with --force to override")
    alias = CHALLENGER if args.shadow else CHAMPION
    version = publish(
        root,
        "rules",
        document,
        feature_names=FEATURE_NAMES,
        by=by,
        reason=args.reason,
        alias=alias,
        sign=signer(settings),
    )
    say(f"rules {alias} is now {version}")
    print(version)
    return 0


def handle_promote(args: argparse.Namespace) -> int:
    """Make the shadow rule set the champion."""
    from service.model.rule_writer import set_alias

    root = registry_from(args, settings_from(args))
    version = RuleRegistry(root, "rules").alias(CHALLENGER)
    if version is None:
        raise RegistryError("no shadow rule set to promote: publish one with --shadow first")
    set_alias(root, "rules", CHAMPION, version, by=args.by or getpass.getuser(), reason=args.reason)
    say(f"rules champion is now {version}")
    print(version)
    return 0


def handle_rollback(args: argparse.Namespace) -> int:
    """Move the rules (or lists) champion back one version."""
    from service.model.rule_writer import rollback

    root = registry_from(args, settings_from(args))
    kind: RuleKind = "lists" if args.lists else "rules"
    version = rollback(root, kind, by=args.by or getpass.getuser(), reason=args.reason)
    say(f"{kind} champion rolled back to {version}")
    print(version)
    return 0


def handle_show(args: argparse.Namespace) -> int:
    """Aliases, versions and the last changes of rules and lists."""
    root = registry_from(args, settings_from(args))
    for kind in RULE_KINDS:
        registry = RuleRegistry(root, kind)
        aliases = {alias: registry.alias(alias) for alias in ("champion", "challenger")
                   if kind == "rules" or alias == "champion"}  # fmt: skip
        print(f"{kind}: {json.dumps(aliases)}; {len(registry.versions())} versions")
        for entry in registry.history()[-args.last :]:
            print(
                f"  {entry.at:%Y-%m-%d %H:%M:%S} {entry.action:8} {entry.alias or '-':10} "
                f"{entry.version or '-':32} by {entry.by}: {entry.reason}"
            )
    return 0


def handle_backtest(args: argparse.Namespace) -> int:
    """Replay a history (or the server's decision log) through the rule file; print the
    report."""
    from training.model_build.rule_backtest import backtest_rules, format_report
    from training.retraining.logged_backtest import backtest_logged

    settings = settings_from(args)
    document = read_rule_file(args.rules)
    root = registry_from(args, settings)
    if args.data is not None:
        report, _rows = backtest_rules(args.data, document, settings, root)
    elif args.outcomes is None:
        raise RuleError("--decisions needs --outcomes: the outcome log labels the decisions")
    else:
        report, _rows = backtest_logged(args.decisions, args.outcomes, document, settings, root)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    return 0


def handle_list_change(args: argparse.Namespace) -> int:
    """Add a value to, or remove it from, a list."""
    from service.config.settings import ServeSettings
    from service.model.rule_writer import change_list

    settings = settings_from(args)
    root = registry_from(args, settings)
    expires_at = None if args.expires is None else _moment(args.expires)
    version = change_list(
        root,
        name=args.list,
        kind=args.kind,
        value=args.value,
        add=args.action == "add",
        by=args.by or getpass.getuser(),
        reason=args.reason,
        card_token=ServeSettings().card_tokenizer().token,
        expires_at=expires_at,
        sign=signer(settings),
    )
    say(f"lists champion is now {version}")
    print(version)
    return 0


def handle_list_show(args: argparse.Namespace) -> int:
    """Print the lists deciding now (champion)."""
    from service.model.rule_writer import current_lists

    print(json.dumps(current_lists(registry_from(args, settings_from(args))), indent=1))
    return 0


def signer(settings: TrainSettings) -> Callable[[Path], None] | None:
    """What signs a version's manifest with the `signing_key` setting; None without one."""
    if settings.signing_key is None:
        return None
    from training.registry.signing import load_signing_key, write_signature

    key = load_signing_key(settings.signing_key)
    return lambda directory: write_signature(directory, key)


def _moment(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RuleError(f"--expires: {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
