"""Tests for the read side of the model registry, on registries laid out by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.model.artifact import ONNX_MODEL_FILE, ArtifactError
from service.model.registry import (
    CHALLENGER,
    CHAMPION,
    AliasRecord,
    HistoryEntry,
    Registry,
    RegistryError,
)
from tests.factories import flip_first_byte, write_artifact, write_model_files

OLD = "20240101T000000Z-0000000a"
NEW = "20240302T123005Z-0000000b"


def add_version(root: Path, version: str) -> Path:
    """A complete artifact directory for `version` under `root/versions`."""
    directory = root / "versions" / version
    write_artifact(directory, content=version, version=version)
    return directory


def set_alias_file(root: Path, alias: str, text: str) -> None:
    aliases = root / "aliases"
    aliases.mkdir(parents=True, exist_ok=True)
    (aliases / f"{alias}.json").write_text(text, encoding="utf-8")


def alias_json(alias: str, version: str) -> str:
    return AliasRecord(alias=alias, version=version, updated_at=datetime.now(UTC)).model_dump_json()


def test_empty_registry(tmp_path: Path) -> None:
    """A registry directory that does not exist yet has no versions, aliases or history."""
    registry = Registry(tmp_path / "models")
    assert registry.versions() == []
    assert registry.alias(CHAMPION) is None
    assert registry.champion() is None
    assert registry.history() == []


def test_versions_sorted_oldest_first(tmp_path: Path) -> None:
    """versions() sorts by name, which is by creation time."""
    add_version(tmp_path, NEW)
    add_version(tmp_path, OLD)
    assert Registry(tmp_path).versions() == [OLD, NEW]


def test_versions_skip_staging_and_incomplete_directories(tmp_path: Path) -> None:
    """Staging work, stray names and directories without a manifest are never listed."""
    add_version(tmp_path, OLD)
    write_artifact(tmp_path / ".staging" / "f00d", version=NEW)
    write_model_files(tmp_path / "versions" / NEW)
    write_artifact(tmp_path / "versions" / "not-a-version")
    assert Registry(tmp_path).versions() == [OLD]


def test_load_returns_the_verified_manifest(tmp_path: Path) -> None:
    """load() verifies the version's files and returns its manifest."""
    add_version(tmp_path, OLD)
    assert Registry(tmp_path).load(OLD).version == OLD


def test_load_names_a_tampered_file(tmp_path: Path) -> None:
    """One changed byte in the ONNX model makes load() raise ArtifactError naming it."""
    flip_first_byte(add_version(tmp_path, OLD) / ONNX_MODEL_FILE)
    with pytest.raises(ArtifactError, match=rf"{ONNX_MODEL_FILE}: SHA-256"):
        Registry(tmp_path).load(OLD)


def test_load_refuses_a_manifest_of_another_version(tmp_path: Path) -> None:
    """A manifest copied from another version does not pass for this one."""
    write_artifact(tmp_path / "versions" / OLD, version=NEW)
    with pytest.raises(ArtifactError, match=f"manifest says version {NEW}"):
        Registry(tmp_path).load(OLD)


def test_unknown_version(tmp_path: Path) -> None:
    """An unknown version raises RegistryError listing the latest published ones."""
    add_version(tmp_path, OLD)
    with pytest.raises(RegistryError, match=f"no version {NEW} .*latest: {OLD}"):
        Registry(tmp_path).artifact_dir(NEW)


@pytest.mark.parametrize("version", ["../aliases", "20240101T000000Z-0000000A", ".staging"])
def test_malformed_version_name(tmp_path: Path, version: str) -> None:
    """A name not in the version format is refused before touching the file system."""
    with pytest.raises(RegistryError, match="is not a version name"):
        Registry(tmp_path).artifact_dir(version)


def test_alias_and_champion(tmp_path: Path) -> None:
    """An alias file names a version; champion() loads the champion's verified manifest."""
    add_version(tmp_path, OLD)
    set_alias_file(tmp_path, CHAMPION, alias_json(CHAMPION, OLD))
    registry = Registry(tmp_path)
    assert registry.alias(CHAMPION) == OLD
    assert registry.alias(CHALLENGER) is None
    champion = registry.champion()
    assert champion is not None
    assert champion[0] == OLD
    assert champion[1].version == OLD


@pytest.mark.parametrize(
    "text",
    ["", '{"alias": "champion", "version": ', json.dumps({"alias": "champion"})],
)
def test_corrupt_alias_file(tmp_path: Path, text: str) -> None:
    """An empty, truncated or incomplete alias file raises RegistryError saying how to fix it."""
    set_alias_file(tmp_path, CHAMPION, text)
    with pytest.raises(RegistryError, match=r"champion\.json is corrupt.*promote"):
        Registry(tmp_path).alias(CHAMPION)


def test_alias_file_for_another_alias(tmp_path: Path) -> None:
    """An alias file whose content names another alias is refused."""
    set_alias_file(tmp_path, CHAMPION, alias_json(CHALLENGER, OLD))
    with pytest.raises(RegistryError, match="names alias 'challenger'"):
        Registry(tmp_path).alias(CHAMPION)


def test_unknown_alias_name(tmp_path: Path) -> None:
    """Only the known aliases can be read."""
    with pytest.raises(RegistryError, match="unknown alias 'production'"):
        Registry(tmp_path).alias("production")


def test_history_in_order(tmp_path: Path) -> None:
    """history() parses every line of history.jsonl, oldest first, skipping blank lines."""
    entries = [
        HistoryEntry(
            at=datetime(2024, 1, day, tzinfo=UTC),
            action="promote",
            alias=CHAMPION,
            version=version,
            previous=None,
            reason=f"day {day}",
        )
        for day, version in ((1, OLD), (2, NEW))
    ]
    lines = [entry.model_dump_json() for entry in entries]
    (tmp_path / "history.jsonl").write_text("\n".join([*lines, ""]), encoding="utf-8")
    assert Registry(tmp_path).history() == entries


def test_corrupt_history_line_is_located(tmp_path: Path) -> None:
    """A truncated history line raises RegistryError with its line number."""
    (tmp_path / "history.jsonl").write_text('\n{"at": "2024-01-01T00:00:00Z", "act\n', "utf-8")
    with pytest.raises(RegistryError, match="line 2 is corrupt"):
        Registry(tmp_path).history()


def test_history_ignores_an_append_in_progress(tmp_path: Path) -> None:
    """A last line without its newline yet is not read."""
    entry = HistoryEntry(
        at=datetime(2024, 1, 1, tzinfo=UTC),
        action="publish",
        alias=None,
        version=OLD,
        previous=None,
        reason="published",
    )
    text = entry.model_dump_json() + "\n" + entry.model_dump_json()[:20]
    (tmp_path / "history.jsonl").write_text(text, encoding="utf-8")
    assert Registry(tmp_path).history() == [entry]


def test_artifact_dir_is_under_versions(tmp_path: Path) -> None:
    """artifact_dir() points at the version's directory holding its manifest."""
    directory = add_version(tmp_path, OLD)
    assert Registry(tmp_path).artifact_dir(OLD) == directory
