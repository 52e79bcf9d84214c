"""Private copies of the session-trained registry, and the edits tests make to them: publish
a copy of the champion under another version, move or remove an alias, edit a manifest.

Alias files are written aside and renamed into place, as the registry's writers do, so a
server polling the registry meanwhile never reads half of one; unlike those writers,
nothing here checks that the version exists or verifies.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.model.artifact import MANIFEST_FILE, sha256_file
from service.model.registry import CHAMPION, AliasRecord, Registry
from tests.conftest import TrainedModel


def copy_registry(trained_model: TrainedModel, target: Path) -> Path:
    """A copy of the trained registry at `target`, its champion included."""
    return Path(shutil.copytree(trained_model.registry, target))


def edit_manifest(artifact_dir: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Apply `edit` to the manifest's JSON document (the model files keep their checksums)."""
    path = artifact_dir / MANIFEST_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")


def replace_file(artifact_dir: Path, name: str, content: bytes) -> None:
    """Replace a model file and re-hash it, so that only the content is wrong."""
    (artifact_dir / name).write_bytes(content)
    digest = sha256_file(artifact_dir / name)
    edit_manifest(artifact_dir, lambda manifest: manifest["files"].update({name: digest}))


def set_thresholds(artifact_dir: Path, *, review: float, decline: float) -> None:
    """Give the artifact other decision thresholds; the model itself is unchanged."""
    edit_manifest(
        artifact_dir, lambda manifest: manifest["thresholds"].update(review=review, decline=decline)
    )


def point_alias(registry_root: Path, alias: str, version: str) -> None:
    """Point `alias` at `version`, published or not."""
    record = AliasRecord(alias=alias, version=version, updated_at=datetime.now(UTC))
    path = Registry(registry_root).alias_path(alias)
    aside = path.with_suffix(".tmp")
    aside.write_text(record.model_dump_json(), encoding="utf-8")
    aside.replace(path)


def remove_alias(registry_root: Path, alias: str) -> None:
    """Delete the alias file, as if the alias had never been set."""
    Registry(registry_root).alias_path(alias).unlink()


def publish_copy(registry_root: Path, version: str, *, rename: bool = True) -> Path:
    """A copy of the champion published as `version` (manifest renamed unless told not to)."""
    registry = Registry(registry_root)
    source = registry.artifact_dir(registry.alias(CHAMPION) or "")
    target = Path(shutil.copytree(source, registry.versions_dir / version))
    if rename:
        edit_manifest(target, lambda manifest: manifest.update(version=version))
    return target
