"""Write side of the model registry: publish artifacts, move aliases, record the history.

The training pipeline publishes a model like this:

    with stage(root) as staging:
        ...  # write model.onnx, model.lgb.txt and the reports into `staging`
        version_dir = finalise(root, staging, manifest)
    promote(root, version_dir.name, alias=CHALLENGER, reason="nightly retrain")

Every write is crash-safe: files are written aside, fsynced, then renamed into place, so a
reader (the server, `service.model.registry`) sees the old state or the new one. A killed publish
leaves only a staging directory, which the next publish removes once it is an hour old.
Writers also hold an exclusive lock on `<root>/.lock`, so that two processes cannot both
read the history and then move the same alias.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from service.model.artifact import (
    MANIFEST_FILE,
    ONNX_MODEL_FILE,
    ArtifactError,
    Manifest,
    check_artifact,
    read_manifest,
    sha256_file,
    verify_artifact,
)
from service.model.registry import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    Action,
    AliasRecord,
    HistoryEntry,
    Registry,
    RegistryError,
    check_alias_name,
)
from training.durable_files import (
    append_durably,
    exclusive_lock,
    fsync_path,
    make_dir,
    replace_atomically,
)
from training.registry.signing import SigningKey, write_signature

__all__ = [
    "RegistryError",
    "VersionRow",
    "decline",
    "finalise",
    "format_versions",
    "list_versions",
    "promote",
    "refuse",
    "rollback",
    "set_alias",
    "sign",
    "stage",
    "version_name",
]

# A staging directory untouched for this long belongs to a publish that died.
STALE_STAGING_SECONDS = 3_600
_LOCK_FILE = ".lock"


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One published version as `list_versions` shows it."""

    version: str
    created_at: datetime | None
    test_metrics: dict[str, float]
    aliases: tuple[str, ...]
    problem: str | None = None
    """Why the manifest could not be read, if it could not."""


def version_name(created_at: datetime, onnx_model: bytes) -> str:
    """`YYYYMMDDTHHMMSSZ-<first 8 hex digits of the model's SHA-256>`, the time in UTC."""
    if created_at.utcoffset() is None:
        raise RegistryError("manifest.created_at has no time zone: build it with datetime.now(UTC)")
    digest = hashlib.sha256(onnx_model).hexdigest()
    return f"{created_at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{digest[:8]}"


@contextmanager
def stage(root: Path) -> Iterator[Path]:
    """A new empty directory under `<root>/.staging` to write an artifact into.

    Call `finalise` inside the block to publish it; the directory is removed when the block
    ends, whether it raised or not. Enter it once training is done: a staging directory left
    untouched for an hour counts as abandoned and the next publish deletes it.
    """
    staging_root = Registry(root).staging_dir
    staging_root.mkdir(parents=True, exist_ok=True)
    _remove_stale(staging_root.iterdir())
    staging = staging_root / uuid.uuid4().hex
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def finalise(
    root: Path, staging: Path, manifest: Manifest, *, signing_key: SigningKey | None = None
) -> Path:
    """Publish the artifact written into `staging` as a new immutable version; its directory.

    The manifest's `files` are computed here. Its `version` may be left empty to be filled
    in, or set with `version_name`, which must then agree with the staged model. With a
    `signing_key`, the manifest is signed before the version appears. An artifact that does
    not verify is refused, and the refusal recorded.
    """
    registry = Registry(root)
    if not staging.is_dir() or staging.resolve().parent != registry.staging_dir.resolve():
        raise RegistryError(f"{staging} was not made by stage({root}): stage the artifact first")
    with _exclusive(root):
        try:
            sealed = _seal(staging, manifest, signing_key)
        except (ArtifactError, RegistryError) as error:
            _record(registry, "refuse", reason=f"publish refused: {error}")
            raise RegistryError(f"refused to publish: {error}") from error
        target = registry.versions_dir / sealed.version
        if target.exists():
            raise RegistryError(
                f"{target} already exists and versions are immutable: promote it, or retrain "
                "(a new created_at makes a new version)"
            )
        make_dir(registry.versions_dir)
        staging.rename(target)
        fsync_path(registry.versions_dir)
        _record(registry, "publish", version=sealed.version, reason="verified and published")
    return target


def sign(root: Path, version: str, key: SigningKey) -> HistoryEntry:
    """Sign a published version's manifest with `key` (replacing any earlier signature, as a
    key rotation does) once its files verify, and record it in the history.

    The version's files do not change: the signature sits beside the manifest it signs.
    """
    registry = Registry(root)
    with _exclusive(root):
        try:
            registry.load(version)
        except ArtifactError as error:
            raise RegistryError(f"refused to sign {version}: {error}") from error
        write_signature(registry.artifact_dir(version), key)
        return _record(registry, "sign", version=version, reason=f"signed by {key.key_id}")


def set_alias(
    root: Path,
    alias: str,
    version: str,
    *,
    action: Literal["promote", "rollback"],
    reason: str,
) -> HistoryEntry:
    """Point `alias` at `version`, which must verify, and record the change.

    `promote` and `rollback` are the usual ways in; moving the alias is the last step of a
    publish, once the version is complete and verified.
    """
    with _exclusive(root):
        return _move_alias(Registry(root), alias, version, action=action, reason=reason)


def promote(root: Path, version: str, *, alias: str = CHAMPION, reason: str) -> HistoryEntry:
    """Point `alias` at `version` and record why."""
    return set_alias(root, alias, version, action="promote", reason=reason)


def promote_challenger(root: Path, *, reason: str) -> str:
    """Make the challenger's version the champion; that version.

    The challenger alias stays where it is: naming the champion's version, it shadows
    nothing until it is pointed at a new candidate.
    """
    with _exclusive(root):
        registry = Registry(root)
        version = registry.alias(CHALLENGER)
        if version is None:
            raise RegistryError(f"{root} has no challenger to promote")
        _move_alias(registry, CHAMPION, version, action="promote", reason=reason)
    return version


def rollback(root: Path, *, alias: str = CHAMPION, reason: str) -> str:
    """Point `alias` back at the version it had before the current one; that version.

    Consecutive rollbacks walk further back through the promotions in the history.
    """
    registry = Registry(root)
    with _exclusive(root):
        target = _rollback_target(registry, alias)
        _move_alias(registry, alias, target, action="rollback", reason=reason)
    return target


def refuse(root: Path, version: str, *, alias: str = CHAMPION, reason: str) -> HistoryEntry:
    """Record that `version` was not given `alias`, e.g. because a quality gate failed."""
    check_alias_name(alias)
    registry = Registry(root)
    with _exclusive(root):
        return _record(registry, "refuse", alias=alias, version=version, reason=reason)


def decline(root: Path, *, reason: str, version: str | None = None) -> HistoryEntry:
    """Record that a retrain published nothing, and why; `version` is the candidate's
    would-be name when one was trained. Moves no alias."""
    if not reason.strip():
        raise RegistryError("give a reason: a declined retrain is audited like a promotion")
    with _exclusive(root):
        return _record(Registry(root), "decline", version=version, reason=reason)


def list_versions(root: Path) -> list[VersionRow]:
    """Every published version, oldest first, from its manifest (files are not re-hashed)."""
    registry = Registry(root)
    aliases = {name: _alias_if_readable(registry, name) for name in ALIASES}
    return [
        _version_row(registry, version, tuple(a for a, v in aliases.items() if v == version))
        for version in registry.versions()
    ]


def format_versions(rows: Sequence[VersionRow]) -> str:
    """A text table of `list_versions`: version and aliases, then the test metrics."""
    if not rows:
        return "no published versions"
    # Imported here, the one use: the metrics bring pandas, and promoting, publishing and
    # rolling back (fraud-bench's reloads and chaos among the callers) need no table.
    from training.evaluation.metrics import format_metrics_table

    table = format_metrics_table({_row_label(row): row.test_metrics for row in rows})
    problems = [f"{row.version}: {row.problem}" for row in rows if row.problem]
    return "\n".join([table, *problems])


def _row_label(row: VersionRow) -> str:
    return f"{row.version} ({', '.join(row.aliases)})" if row.aliases else row.version


def _version_row(registry: Registry, version: str, aliases: tuple[str, ...]) -> VersionRow:
    try:
        manifest = read_manifest(registry.versions_dir / version)
    except ArtifactError as error:
        return VersionRow(version, None, {}, aliases, problem=str(error))
    return VersionRow(version, manifest.created_at, manifest.metrics.get("test", {}), aliases)


def _seal(staging: Path, manifest: Manifest, signing_key: SigningKey | None) -> Manifest:
    """Name and hash the staged files, write the manifest durably, sign it if a key is
    given, verify; the manifest."""
    files = _hash_files(staging)
    if ONNX_MODEL_FILE not in files:
        raise RegistryError(f"{staging} has no {ONNX_MODEL_FILE}: write the model first")
    version = version_name(manifest.created_at, (staging / ONNX_MODEL_FILE).read_bytes())
    if manifest.version not in ("", version):
        raise RegistryError(
            f"manifest.version {manifest.version} does not match the staged model, which makes "
            f"{version}: name it with version_name(created_at, <the bytes written>)"
        )
    sealed = manifest.model_copy(update={"version": version, "files": files})
    (staging / MANIFEST_FILE).write_text(sealed.model_dump_json(indent=2), encoding="utf-8")
    for path in staging.iterdir():
        fsync_path(path)
    fsync_path(staging)
    if signing_key is None:
        verify_artifact(staging)
    else:
        write_signature(staging, signing_key)
        check_artifact(staging, signatures=signing_key.policy)
    return sealed


def _hash_files(staging: Path) -> dict[str, str]:
    files = {}
    for path in sorted(staging.iterdir()):
        if path.name == MANIFEST_FILE:
            continue
        if path.is_symlink() or not path.is_file():
            raise RegistryError(f"{path} is not a regular file: an artifact is flat files only")
        files[path.name] = sha256_file(path)
    return files


def _move_alias(
    registry: Registry, alias: str, version: str, *, action: Action, reason: str
) -> HistoryEntry:
    check_alias_name(alias)
    if not reason.strip():
        raise RegistryError("give a reason: it is the audit trail of what serves")
    previous = _alias_if_readable(registry, alias)
    try:
        registry.load(version)
    except ArtifactError as error:
        _record(
            registry, "refuse", alias=alias, version=version, previous=previous, reason=str(error)
        )
        raise RegistryError(
            f"refused to point {alias} at {version}: {error}; choose another version"
        ) from error
    record = AliasRecord(alias=alias, version=version, updated_at=datetime.now(UTC))
    make_dir(registry.aliases_dir)
    replace_atomically(registry.alias_path(alias), record.model_dump_json())
    return _record(registry, action, alias=alias, version=version, previous=previous, reason=reason)


def _rollback_target(registry: Registry, alias: str) -> str:
    current = registry.alias(alias)
    if current is None:
        raise RegistryError(f"{alias} was never set: there is nothing to roll back")
    lineage = registry.lineage(alias)
    if not lineage or lineage[-1] != current:
        raise RegistryError(
            f"{alias} points at {current} but {registry.history_path} does not end there: "
            "promote the version you want explicitly"
        )
    if len(lineage) < 2:
        raise RegistryError(
            f"{alias} has no earlier version than {current} to roll back to: promote one explicitly"
        )
    return lineage[-2]


def _alias_if_readable(registry: Registry, alias: str) -> str | None:
    # A corrupt alias file is what the next promotion repairs, so it must not block one.
    try:
        return registry.alias(alias)
    except RegistryError:
        return None


def _record(
    registry: Registry,
    action: Action,
    *,
    reason: str,
    alias: str | None = None,
    version: str | None = None,
    previous: str | None = None,
) -> HistoryEntry:
    entry = HistoryEntry(
        at=datetime.now(UTC),
        action=action,
        alias=alias,
        version=version,
        previous=previous,
        reason=reason,
    )
    append_durably(registry.history_path, entry.model_dump_json() + "\n")
    return entry


@contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold the registry's writer lock; readers never take it."""
    if not root.is_dir():
        raise RegistryError(f"no registry at {root}: publish a model there first")
    with exclusive_lock(root / _LOCK_FILE):
        yield


def _remove_stale(staging_dirs: Iterable[Path]) -> None:
    cutoff = time.time() - STALE_STAGING_SECONDS
    for path in staging_dirs:
        # Another publish may be removing the same directory.
        with suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
