"""Read side of the model registry: published versions, the aliases that point at them, and
the history of every alias change. The server reads it; `training.registry.publishing` writes it.

The registry is a directory:

    versions/<version>/     immutable artifact directories (see `service.model.artifact`)
    aliases/<alias>.json    which version an alias points at (`AliasRecord`)
    history.jsonl           one `HistoryEntry` per line, oldest first
    .staging/               artifacts being written; never read here

Writers only ever rename complete files and directories into place, so a reader sees the
old state or the new one, never a partial one.

Errors:

    RegistryError           unknown version or alias, corrupt alias or history file
    ArtifactError           (service.model.artifact) a version that must not be served
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from service.model.artifact import MANIFEST_FILE, ArtifactError, Manifest, verify_artifact

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
# The refusal reason of an alias that names no loadable version (see `ModelStore`).
RegistryErrorReason = Literal["registry_error"]
REGISTRY_ERROR: RegistryErrorReason = "registry_error"

VERSIONS_DIR = "versions"
ALIASES_DIR = "aliases"
HISTORY_FILE = "history.jsonl"
STAGING_DIR = ".staging"

# Creation time (UTC) then the first 8 hex digits of the ONNX model's SHA-256: names sort by
# time and differ by content.
VERSION_PATTERN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")

# "decline": a retrain that judged its candidate not worth publishing, or had nothing new
# to learn from; the reason says why, with the numbers. "sign": a published version's
# manifest signed (again) by the key the reason names.
Action = Literal["promote", "rollback", "publish", "refuse", "decline", "sign"]


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says what to do instead."""


def no_champion(root: Path) -> RegistryError:
    """The error of a registry that has no champion to serve."""
    return RegistryError(f"{root} has no champion: train and promote a model first")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AliasRecord(_Frozen):
    """Contents of `aliases/<alias>.json`."""

    alias: str
    version: str
    updated_at: datetime


class HistoryEntry(_Frozen):
    """One line of `history.jsonl`: an alias change, a publication, a refusal or a decline.

    `alias` is None for a publication and a decline; `version` is None for a refused
    artifact that had no ONNX model to name it by, and for a retrain that declined before
    training a candidate.
    """

    at: datetime
    action: Action
    alias: str | None
    version: str | None
    previous: str | None
    reason: str


def check_alias_name(name: str) -> None:
    """RegistryError unless `name` is one of `ALIASES`."""
    if name not in ALIASES:
        raise RegistryError(f"unknown alias {name!r}: use one of {', '.join(ALIASES)}")


class Registry:
    """A registry directory, read without locks: safe while a writer publishes or promotes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions_dir = root / VERSIONS_DIR
        self.aliases_dir = root / ALIASES_DIR
        self.history_path = root / HISTORY_FILE
        self.staging_dir = root / STAGING_DIR

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            path.name
            for path in self.versions_dir.iterdir()
            if VERSION_PATTERN.fullmatch(path.name) and (path / MANIFEST_FILE).is_file()
        )

    def alias_path(self, name: str) -> Path:
        """The file alias `name` is stored in; RegistryError for an unknown alias."""
        check_alias_name(name)
        return self.aliases_dir / f"{name}.json"

    def alias(self, name: str) -> str | None:
        """The version alias `name` points at, or None if it was never set."""
        path = self.alias_path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            record = AliasRecord.model_validate_json(text)
        except ValidationError as error:
            raise RegistryError(
                f"{path} is corrupt ({error.error_count()} errors): promote a version again "
                "to rewrite it"
            ) from error
        if record.alias != name:
            raise RegistryError(
                f"{path} names alias {record.alias!r}: promote a version again to rewrite it"
            )
        return record.version

    def artifact_dir(self, version: str) -> Path:
        """The directory of a published version; RegistryError if there is none."""
        if not VERSION_PATTERN.fullmatch(version):
            raise RegistryError(
                f"{version!r} is not a version name (expected YYYYMMDDTHHMMSSZ-<8 hex digits>)"
            )
        path = self.versions_dir / version
        if not (path / MANIFEST_FILE).is_file():
            latest = self.versions()[-3:]
            raise RegistryError(
                f"no version {version} in {self.versions_dir} "
                f"(latest: {', '.join(latest) or 'none published'})"
            )
        return path

    def load(self, version: str) -> Manifest:
        """The verified manifest of `version`; ArtifactError if its files do not verify."""
        path = self.artifact_dir(version)
        manifest = verify_artifact(path)
        if manifest.version != version:
            raise ArtifactError(
                f"{path}: manifest says version {manifest.version}", reason="version_mismatch"
            )
        return manifest

    def champion(self) -> tuple[str, Manifest] | None:
        """The champion's version and verified manifest, or None before the first promotion."""
        version = self.alias(CHAMPION)
        if version is None:
            return None
        return version, self.load(version)

    def history(self) -> list[HistoryEntry]:
        """Every alias change, publication, refusal and decline, oldest first."""
        try:
            text = self.history_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        # A line counts once its newline is written: a tail without one is an append still
        # in progress in another process.
        lines = text[: text.rfind("\n") + 1].splitlines()
        return [self._history_entry(number, line) for number, line in enumerate(lines, 1) if line]

    def lineage(self, alias: str) -> list[str]:
        """The versions `alias` went through, oldest first, with rolled-back promotions
        undone: the path consecutive `fraud-train registry rollback`s walk back.

        RegistryError if the history is corrupt.
        """
        lineage: list[str] = []
        for entry in self.history():
            if entry.alias != alias or entry.version is None:
                continue
            if entry.action not in ("promote", "rollback"):
                continue
            if entry.action == "rollback" and lineage:
                lineage.pop()
            # A rollback normally lands on the version now on top; a promotion, or a rollback
            # made by hand to another version, puts its version there.
            if lineage[-1:] != [entry.version]:
                lineage.append(entry.version)
        return lineage

    def _history_entry(self, number: int, line: str) -> HistoryEntry:
        try:
            return HistoryEntry.model_validate_json(line)
        except ValidationError as error:
            raise RegistryError(
                f"{self.history_path} line {number} is corrupt ({error.error_count()} errors): "
                "fix or delete that line"
            ) from error
