"""Read side of the rule and list artifacts, kept in the model registry beside the models.

    <registry>/rules/versions/<version>/content.json   a rule set (docs/rules.md)
    <registry>/rules/versions/<version>/manifest.json  `RuleManifest`: who, when, why, checksum
    <registry>/rules/versions/<version>/signature.json the manifest's Ed25519 signature, as
                                                       for models (`service.model.signatures`)
    <registry>/rules/aliases/champion.json             the rule set deciding
    <registry>/rules/aliases/challenger.json           the rule set in the champion's shadow
    <registry>/rules/history.jsonl                     every publish, promote, rollback,
                                                       refusal, with who and why: the audit
    <registry>/lists/...                               the same for allow and block lists
                                                       (champion only)

Versions are immutable and named `YYYYMMDDTHHMMSSffffffZ-<first 8 hex digits of the
content's SHA-256>`: microseconds, because an analyst may change a list several times a
second. Writers (`training.registry.rule_publishing`) rename complete files into place, so
a reader sees an alias before or after a move, and a version whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from service.core.rule_compiler import RuleError, compile_lists, compile_rules
from service.core.rules import Lists, RuleSet
from service.model.registry import CHALLENGER, CHAMPION, RegistryError
from service.model.signatures import SIGNATURE_FILE, UNCHECKED, SignatureError, SignaturePolicy

RuleKind = Literal["rules", "lists"]
RULE_KINDS: tuple[RuleKind, ...] = get_args(RuleKind)
CONTENT_FILE = "content.json"
MANIFEST_FILE = "manifest.json"
VERSION_PATTERN = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")
RuleAction = Literal["publish", "promote", "rollback", "refuse"]


def aliases_of(kind: RuleKind) -> tuple[str, ...]:
    """Rule sets have a champion and a challenger (shadow); lists only a champion."""
    return (CHAMPION, CHALLENGER) if kind == "rules" else (CHAMPION,)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleManifest(_Frozen):
    """Contents of a version's `manifest.json`."""

    kind: RuleKind
    version: str
    created_at: datetime
    created_by: str
    reason: str
    content_sha256: str
    parent: str | None = None


class RuleAlias(_Frozen):
    """Contents of `aliases/<alias>.json`."""

    alias: str
    version: str
    updated_at: datetime


class RuleHistoryEntry(_Frozen):
    """One line of `history.jsonl`: what changed, when, by whom and why."""

    at: datetime
    action: RuleAction
    alias: str | None
    version: str | None
    previous: str | None
    by: str
    reason: str


class RuleArtifactError(Exception):
    """A rule or list version that must not be served; `reason` is a metric label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RuleRegistry:
    """One kind's area of the registry, read without locks."""

    def __init__(self, registry_root: Path, kind: RuleKind) -> None:
        self.kind = kind
        self.root = registry_root / kind
        self.versions_dir = self.root / "versions"
        self.aliases_dir = self.root / "aliases"
        self.history_path = self.root / "history.jsonl"
        self.staging_dir = self.root / ".staging"

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            path.name
            for path in self.versions_dir.iterdir()
            if VERSION_PATTERN.fullmatch(path.name) and (path / MANIFEST_FILE).is_file()
        )

    def alias_path(self, alias: str) -> Path:
        if alias not in aliases_of(self.kind):
            raise RegistryError(
                f"{self.kind} have no alias {alias!r}: use {', '.join(aliases_of(self.kind))}"
            )
        return self.aliases_dir / f"{alias}.json"

    def alias(self, alias: str) -> str | None:
        """The version `alias` names, None if never set; RegistryError if corrupt."""
        path = self.alias_path(alias)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            record = RuleAlias.model_validate_json(text)
        except ValidationError as error:
            raise RegistryError(f"{path} is corrupt ({error.error_count()} errors)") from error
        return record.version

    def version_dir(self, version: str) -> Path:
        if not VERSION_PATTERN.fullmatch(version):
            raise RegistryError(f"{version!r} is not a {self.kind} version name")
        path = self.versions_dir / version
        if not (path / MANIFEST_FILE).is_file():
            raise RegistryError(f"no {self.kind} version {version} in {self.versions_dir}")
        return path

    def read(
        self, version: str, signatures: SignaturePolicy = UNCHECKED
    ) -> tuple[RuleManifest, dict[str, object]]:
        """The verified manifest and content of `version`; RuleArtifactError if they do not
        verify (missing, corrupt, checksum or name mismatch, or a signature `signatures`
        refuses: the manifest holds the content's checksum, so signing it signs both)."""
        path = self.versions_dir / version
        try:
            manifest_bytes = (path / MANIFEST_FILE).read_bytes()
            _check_signature(path, manifest_bytes, signatures)
            manifest = RuleManifest.model_validate_json(manifest_bytes)
            content = (path / CONTENT_FILE).read_bytes()
        except FileNotFoundError as error:
            raise RuleArtifactError(
                f"{path}: {error.filename} missing", reason="missing_file"
            ) from error
        except ValidationError as error:
            raise RuleArtifactError(
                f"{path}/{MANIFEST_FILE} is corrupt ({error.error_count()} errors)",
                reason="corrupt_manifest",
            ) from error
        digest = hashlib.sha256(content).hexdigest()
        if digest != manifest.content_sha256 or manifest.kind != self.kind:
            raise RuleArtifactError(
                f"{path}: content does not match its manifest", reason="checksum"
            )
        if manifest.version != version or not version.endswith(digest[:8]):
            raise RuleArtifactError(f"{path}: manifest names {manifest.version}", reason="checksum")
        try:
            document = json.loads(content)
        except ValueError as error:
            raise RuleArtifactError(f"{path}: not JSON: {error}", reason="invalid") from error
        if not isinstance(document, dict):
            raise RuleArtifactError(f"{path}: not a JSON object", reason="invalid")
        return manifest, document

    def history(self) -> list[RuleHistoryEntry]:
        """Every change of this kind, oldest first (a last line without its newline is an
        append in progress)."""
        try:
            text = self.history_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text[: text.rfind("\n") + 1].splitlines()
        try:
            return [RuleHistoryEntry.model_validate_json(line) for line in lines if line]
        except ValidationError as error:
            raise RegistryError(f"{self.history_path} is corrupt: {error}") from error

    def lineage(self, alias: str) -> list[str]:
        """The versions `alias` went through, rolled-back ones undone (as for models)."""
        lineage: list[str] = []
        for entry in self.history():
            if entry.alias != alias or entry.version is None:
                continue
            if entry.action == "rollback" and lineage:
                lineage.pop()
            if entry.action in ("promote", "rollback") and lineage[-1:] != [entry.version]:
                lineage.append(entry.version)
        return lineage


def _check_signature(path: Path, manifest: bytes, signatures: SignaturePolicy) -> None:
    try:
        signature: bytes | None = (path / SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        signature = None
    try:
        signatures.check(manifest, signature)
    except SignatureError as error:
        raise RuleArtifactError(f"{path}: {error}", reason=error.reason) from error


def load_rule_set(
    registry: RuleRegistry,
    version: str,
    feature_names: tuple[str, ...],
    signatures: SignaturePolicy = UNCHECKED,
) -> RuleSet:
    """The compiled rule set `version`; RuleArtifactError naming the rule and problem."""
    _manifest, document = registry.read(version, signatures)
    try:
        return compile_rules(document, version, feature_names)
    except RuleError as error:
        raise RuleArtifactError(str(error), reason="invalid_rule") from error


def load_lists(
    registry: RuleRegistry, version: str, signatures: SignaturePolicy = UNCHECKED
) -> Lists:
    """The lists `version`; RuleArtifactError naming the entry and problem."""
    _manifest, document = registry.read(version, signatures)
    try:
        return compile_lists(document, version)
    except RuleError as error:
        raise RuleArtifactError(str(error), reason="invalid_list") from error
