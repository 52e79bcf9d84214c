"""Write side of the rule and list artifacts: publish, move aliases, change lists, audit.

Both `fraud-train rules ...` and the admin service's list RPCs write through here (the
server may not import training, and a list change must be the same whoever makes it).
Every write is crash-safe in the registry's way: content and manifest written into
`<kind>/.staging/<uuid>`, fsynced, renamed to `versions/<version>`; an alias written aside
and renamed over the old one; each change appended to `history.jsonl` with who and why,
under an exclusive lock on `<kind>/.lock`, so two writers never read the same lists and
both publish their own change on top of it.

Nothing is published that does not compile with the server's own compiler
(`service.core.rule_compiler`): a broken set is refused here, and again at load.

`sign`, when given, signs a version's manifest in its staging directory before the rename
(`fraud-train` passes its `signing_key`): a signed version is never visible unsigned. The
server holds no private key, so where signatures are required it refuses to change lists
itself (`SignedListsError`): they change through `fraud-train rules list`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.card_data import holds_card_number
from service.core.rule_compiler import (
    RuleError,
    check_list_value,
    compile_lists,
    compile_rules,
)
from service.core.rules import LIST_KINDS, LIST_NAMES, ListKind, ListName
from service.model.registry import CHAMPION, RegistryError
from service.model.rule_registry import (
    CONTENT_FILE,
    MANIFEST_FILE,
    RuleAction,
    RuleAlias,
    RuleHistoryEntry,
    RuleKind,
    RuleManifest,
    RuleRegistry,
)

EMPTY_LISTS: dict[str, Any] = {"format": 1, "block": {}, "allow": {}}
# Signs the manifest in a version's (staging) directory.
Signer = Callable[[Path], None]


class SignedListsError(RegistryError):
    """A list change asked of a server that serves only signed lists and cannot sign."""


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a document is stored as: sorted keys, so equal content, equal checksum."""
    return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def check_document(
    kind: RuleKind, document: dict[str, Any], feature_names: tuple[str, ...]
) -> None:
    """RuleError unless `document` compiles as the server will compile it."""
    if kind == "rules":
        compile_rules(document, "", feature_names)
    else:
        compile_lists(document, "")


def publish(
    registry_root: Path,
    kind: RuleKind,
    document: dict[str, Any],
    *,
    feature_names: tuple[str, ...],
    by: str,
    reason: str,
    alias: str | None = CHAMPION,
    sign: Signer | None = None,
) -> str:
    """Publish `document` as a new version (checked first, signed by `sign` if given) and
    point `alias` at it (None: publish only); the version."""
    check_document(kind, document, feature_names)
    registry = RuleRegistry(registry_root, kind)
    with _locked(registry):
        version = _publish_locked(registry, document, by=by, reason=reason, sign=sign)
        if alias is not None:
            _move(registry, alias, version, action="promote", by=by, reason=reason)
    return version


def set_alias(
    registry_root: Path, kind: RuleKind, alias: str, version: str, *, by: str, reason: str
) -> None:
    """Point `alias` at a published `version` (a promotion), recorded."""
    registry = RuleRegistry(registry_root, kind)
    with _locked(registry):
        registry.version_dir(version)
        _move(registry, alias, version, action="promote", by=by, reason=reason)


def rollback(registry_root: Path, kind: RuleKind, *, by: str, reason: str) -> str:
    """Move the champion back to the version before it; that version."""
    registry = RuleRegistry(registry_root, kind)
    with _locked(registry):
        lineage = registry.lineage(CHAMPION)
        if len(lineage) < 2:
            raise RegistryError(f"no earlier {kind} version to roll back to")
        version = lineage[-2]
        _move(registry, CHAMPION, version, action="rollback", by=by, reason=reason)
    return version


def current_lists(registry_root: Path) -> dict[str, Any]:
    """The lists the champion alias names, as a document; empty lists before the first."""
    registry = RuleRegistry(registry_root, "lists")
    version = registry.alias(CHAMPION)
    if version is None:
        return json.loads(json.dumps(EMPTY_LISTS))  # type: ignore[no-any-return]
    _manifest, document = registry.read(version)
    return document


def change_list(
    registry_root: Path,
    *,
    name: ListName,
    kind: ListKind,
    value: str,
    add: bool,
    by: str,
    reason: str,
    card_token: Callable[[str], str],
    expires_at: float | None = None,
    now: float | None = None,
    sign: Signer | None = None,
) -> str:
    """Add `value` to (or remove it from) list `name` of `kind`, publishing a new lists
    version and making it the champion; the version. A card number given for a card is
    replaced by `card_token` (the server's tokenizer) before anything is written; one in
    any other kind is refused. RuleError for a bad name, kind or value; RegistryError to
    remove a value that is not listed."""
    if name not in LIST_NAMES:
        raise RuleError(f"list must be one of {', '.join(LIST_NAMES)}, not {name!r}")
    if kind not in LIST_KINDS:
        raise RuleError(f"kind must be one of {', '.join(LIST_KINDS)}, not {kind!r}")
    if kind == "card":
        value = card_token(value)
    elif holds_card_number(value):
        raise RuleError(f"value: a {kind} must not hold a card number")
    problem = check_list_value(kind, value)
    if problem is not None:
        raise RuleError(f"value: {problem}")
    if not reason.strip() or not by.strip():
        raise RuleError("a list change needs a reason and who made it")
    registry = RuleRegistry(registry_root, "lists")
    moment = datetime.now(UTC).timestamp() if now is None else now
    with _locked(registry):
        document = current_lists(registry_root)
        entries = document.setdefault(name, {}).setdefault(kind, {})
        if add:
            entries[value] = {
                "reason": reason,
                "added_by": by,
                "added_at": moment,
                "expires_at": expires_at,
            }
        elif entries.pop(value, None) is None:
            raise RegistryError(f"{value!r} is not on the {name} list ({kind})")
        compile_lists(document, "")
        what = f"{'add' if add else 'remove'} {name} {kind} {value}: {reason}"
        version = _publish_locked(registry, document, by=by, reason=what, sign=sign)
        _move(registry, CHAMPION, version, action="promote", by=by, reason=what)
    return version


def _publish_locked(
    registry: RuleRegistry,
    document: dict[str, Any],
    *,
    by: str,
    reason: str,
    sign: Signer | None = None,
) -> str:
    content = canonical(document)
    digest = hashlib.sha256(content).hexdigest()
    now = datetime.now(UTC)
    version = f"{now:%Y%m%dT%H%M%S%fZ}-{digest[:8]}"
    manifest = RuleManifest(
        kind=registry.kind,
        version=version,
        created_at=now,
        created_by=by,
        reason=reason,
        content_sha256=digest,
        parent=registry.alias(CHAMPION),
    )
    _make_dir(registry.staging_dir)
    staging = registry.staging_dir / uuid.uuid4().hex
    staging.mkdir()
    try:
        _write_synced(staging / CONTENT_FILE, content)
        _write_synced(staging / MANIFEST_FILE, manifest.model_dump_json(indent=1).encode())
        if sign is not None:
            sign(staging)
        _fsync(staging)
        _make_dir(registry.versions_dir)
        staging.rename(registry.versions_dir / version)
        _fsync(registry.versions_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _record(registry, "publish", None, version, None, by, reason)
    return version


def _move(
    registry: RuleRegistry,
    alias: str,
    version: str,
    *,
    action: RuleAction,
    by: str,
    reason: str,
) -> None:
    path = registry.alias_path(alias)
    previous = registry.alias(alias)
    record = RuleAlias(alias=alias, version=version, updated_at=datetime.now(UTC))
    _make_dir(registry.aliases_dir)
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_synced(aside, record.model_dump_json().encode())
        aside.replace(path)
    finally:
        aside.unlink(missing_ok=True)
    _fsync(registry.aliases_dir)
    _record(registry, action, alias, version, previous, by, reason)


def _record(
    registry: RuleRegistry,
    action: RuleAction,
    alias: str | None,
    version: str | None,
    previous: str | None,
    by: str,
    reason: str,
) -> None:
    entry = RuleHistoryEntry(
        at=datetime.now(UTC),
        action=action,
        alias=alias,
        version=version,
        previous=previous,
        by=by,
        reason=reason,
    )
    with registry.history_path.open("ab") as handle:
        handle.write(entry.model_dump_json().encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def record_refusal(registry_root: Path, kind: RuleKind, *, by: str, reason: str) -> None:
    """Record a publish refused (a broken set, a backtest over the limit) in the history."""
    registry = RuleRegistry(registry_root, kind)
    with _locked(registry):
        _record(registry, "refuse", None, None, None, by, reason)


@contextmanager
def _locked(registry: RuleRegistry) -> Iterator[None]:
    _make_dir(registry.root)
    with (registry.root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        _fsync(path.parent)


def _write_synced(path: Path, content: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
