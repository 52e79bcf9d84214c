"""What the registry holds and what this server process serves: the admin view of models.

Read from the registry's files on each call, so it is right for every worker process and
after any alias move; manifests are parsed, not verified (hashing every artifact on each
call would cost seconds: verification is what loading does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from service.model.artifact import ArtifactError, read_manifest
from service.model.registry import ALIASES, RegistryError
from service.model.store import ModelStore, Refusal


@dataclass(frozen=True, slots=True)
class PublishedVersion:
    """One version of the registry; `created_at` None when its manifest cannot be read."""

    version: str
    created_at: datetime | None
    aliases: tuple[str, ...]
    test_metrics: dict[str, float]
    parent_version: str | None


@dataclass(frozen=True, slots=True)
class ModelsOverview:
    """The registry's versions, and the champion and challenger this process serves."""

    serving_version: str | None
    challenger_version: str | None
    versions: tuple[PublishedVersion, ...]
    refusals: tuple[Refusal, ...]


def models_overview(store: ModelStore) -> ModelsOverview:
    """The overview now. Reads files: call it off the event loop."""
    registry = store.registry
    aliases_by_version: dict[str, list[str]] = {}
    for alias in ALIASES:
        try:
            version = registry.alias(alias)
        except RegistryError:
            continue  # a corrupt alias shows up among the refusals
        if version is not None:
            aliases_by_version.setdefault(version, []).append(alias)
    versions = tuple(
        _published(registry.versions_dir / version, version, aliases_by_version.get(version, []))
        for version in registry.versions()
    )
    champion, challenger = store.current, store.challenger
    return ModelsOverview(
        serving_version=None if champion is None else champion.version,
        challenger_version=None if challenger is None else challenger.version,
        versions=versions,
        refusals=store.refusals,
    )


def _published(artifact_dir: Path, version: str, aliases: list[str]) -> PublishedVersion:
    try:
        manifest = read_manifest(artifact_dir)
    except ArtifactError:
        return PublishedVersion(version, None, tuple(aliases), {}, None)
    return PublishedVersion(
        version,
        manifest.created_at,
        tuple(aliases),
        dict(manifest.metrics.get("test", {})),
        manifest.parent_version,
    )
