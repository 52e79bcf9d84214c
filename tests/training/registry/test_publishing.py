"""Tests for the write side of the model registry, through real files in tmp_path."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from service.model.artifact import MANIFEST_FILE, NATIVE_MODEL_FILE, ONNX_MODEL_FILE, sha256_file
from service.model.registry import CHALLENGER, CHAMPION, VERSION_PATTERN, Registry
from tests.factories import flip_first_byte, make_manifest, write_model_files
from training.registry.publishing import (
    STALE_STAGING_SECONDS,
    RegistryError,
    decline,
    finalise,
    format_versions,
    list_versions,
    promote,
    promote_challenger,
    refuse,
    rollback,
    set_alias,
    stage,
    version_name,
)

START = datetime(2024, 3, 2, 12, 30, 5, tzinfo=UTC)


def publish(root: Path, content: str = "a", hours: int = 0) -> str:
    """Publish a fake artifact created `hours` after START; its version."""
    with stage(root) as staging:
        write_model_files(staging, content)
        manifest = make_manifest(created_at=START + timedelta(hours=hours))
        return finalise(root, staging, manifest).name


def publish_without(root: Path, missing: str) -> None:
    """Stage the fake artifact minus the file `missing`, then try to publish it."""
    with stage(root) as staging:
        write_model_files(staging)
        (staging / missing).unlink()
        finalise(root, staging, make_manifest())


def fail_while_staging(root: Path) -> None:
    with stage(root) as staging:
        write_model_files(staging)
        raise RuntimeError("training crashed")


def publish_three(root: Path) -> list[str]:
    return [publish(root, content, hours) for hours, content in enumerate("abc")]


def staged(root: Path) -> list[Path]:
    return list((root / ".staging").iterdir())


def test_version_name_format() -> None:
    """A version is the UTC creation time then the ONNX hash prefix."""
    created = datetime(2024, 3, 2, 13, 30, 5, tzinfo=timezone(timedelta(hours=1)))
    digest = hashlib.sha256(b"onnx").hexdigest()
    assert version_name(created, b"onnx") == f"20240302T123005Z-{digest[:8]}"


def test_version_name_needs_a_time_zone() -> None:
    """A naive creation time is refused: its UTC instant is unknown."""
    with pytest.raises(RegistryError, match="no time zone"):
        version_name(datetime(2024, 3, 2), b"onnx")


def test_publish_makes_a_verified_version(tmp_path: Path) -> None:
    """finalise names the version, lists every file's hash and leaves a verifying artifact."""
    version = publish(tmp_path)
    directory = tmp_path / "versions" / version
    assert VERSION_PATTERN.fullmatch(version)
    assert version == f"20240302T123005Z-{sha256_file(directory / ONNX_MODEL_FILE)[:8]}"
    manifest = Registry(tmp_path).load(version)
    assert manifest.version == version
    assert set(manifest.files) == {ONNX_MODEL_FILE, NATIVE_MODEL_FILE, "report.json"}
    assert staged(tmp_path) == []


def test_publish_is_recorded(tmp_path: Path) -> None:
    """A publication appends a 'publish' entry to the history."""
    version = publish(tmp_path)
    [entry] = Registry(tmp_path).history()
    assert (entry.action, entry.version, entry.alias) == ("publish", version, None)


def test_finalise_keeps_a_matching_version(tmp_path: Path) -> None:
    """A manifest already named with version_name is published under that name."""
    with stage(tmp_path) as staging:
        write_model_files(staging)
        version = version_name(START, (staging / ONNX_MODEL_FILE).read_bytes())
        published = finalise(tmp_path, staging, make_manifest(created_at=START, version=version))
    assert published.name == version


def test_finalise_refuses_a_mismatched_version(tmp_path: Path) -> None:
    """A manifest named for other bytes than the staged model is refused."""
    with stage(tmp_path) as staging:
        write_model_files(staging)
        manifest = make_manifest(version=version_name(START, b"other model"))
        with pytest.raises(RegistryError, match="does not match the staged model"):
            finalise(tmp_path, staging, manifest)
    assert Registry(tmp_path).versions() == []


def test_published_versions_are_immutable(tmp_path: Path) -> None:
    """Publishing the same content at the same time again fails and leaves the first intact."""
    version = publish(tmp_path)
    with pytest.raises(RegistryError, match="already exists and versions are immutable"):
        publish(tmp_path)
    assert Registry(tmp_path).load(version).version == version
    assert staged(tmp_path) == []


def test_failure_inside_stage_removes_staging(tmp_path: Path) -> None:
    """An exception while writing the artifact removes the staging directory."""
    with pytest.raises(RuntimeError, match="training crashed"):
        fail_while_staging(tmp_path)
    assert staged(tmp_path) == []
    assert Registry(tmp_path).versions() == []


def test_incomplete_artifact_is_refused(tmp_path: Path) -> None:
    """An artifact without the native model is refused, recorded, and its staging removed."""
    with pytest.raises(RegistryError, match=f"refused to publish.*{NATIVE_MODEL_FILE}"):
        publish_without(tmp_path, NATIVE_MODEL_FILE)
    assert staged(tmp_path) == []
    assert Registry(tmp_path).versions() == []
    assert [entry.action for entry in Registry(tmp_path).history()] == ["refuse"]


def test_artifact_without_onnx_is_refused(tmp_path: Path) -> None:
    """An artifact without the ONNX model cannot even be named, and is refused."""
    with pytest.raises(RegistryError, match=f"has no {ONNX_MODEL_FILE}"):
        publish_without(tmp_path, ONNX_MODEL_FILE)
    assert staged(tmp_path) == []


def test_artifact_with_a_subdirectory_is_refused(tmp_path: Path) -> None:
    """Artifacts are flat: a subdirectory in staging is refused."""
    with stage(tmp_path) as staging:
        write_model_files(staging)
        (staging / "plots").mkdir()
        with pytest.raises(RegistryError, match="plots is not a regular file"):
            finalise(tmp_path, staging, make_manifest())


def test_finalise_only_takes_staging_directories(tmp_path: Path) -> None:
    """A directory not made by stage() cannot be published."""
    elsewhere = tmp_path / "elsewhere"
    write_model_files(elsewhere)
    (tmp_path / "models").mkdir()
    with pytest.raises(RegistryError, match="was not made by stage"):
        finalise(tmp_path / "models", elsewhere, make_manifest())


def test_half_written_staging_is_never_listed(tmp_path: Path) -> None:
    """While an artifact is being staged, even with a manifest, no version is listed."""
    with stage(tmp_path) as staging:
        write_model_files(staging)
        (staging / MANIFEST_FILE).write_text(make_manifest().model_dump_json(), "utf-8")
        assert Registry(tmp_path).versions() == []
        assert list_versions(tmp_path) == []


def test_stale_staging_is_removed_on_publish(tmp_path: Path) -> None:
    """A publish deletes staging directories over an hour old and keeps recent ones."""
    stale, recent = tmp_path / ".staging" / "stale", tmp_path / ".staging" / "recent"
    write_model_files(stale)
    write_model_files(recent)
    old = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(stale, (old, old))
    publish(tmp_path)
    assert staged(tmp_path) == [recent]


def test_promote_points_the_alias(tmp_path: Path) -> None:
    """promote() moves the alias and records who it replaced and why."""
    first, second, _ = publish_three(tmp_path)
    promote(tmp_path, first, reason="first model")
    entry = promote(tmp_path, second, reason="better recall")
    assert Registry(tmp_path).alias(CHAMPION) == second
    assert (entry.action, entry.previous, entry.reason) == ("promote", first, "better recall")


def test_promote_challenger_makes_it_the_champion(tmp_path: Path) -> None:
    """The challenger's version becomes the champion in one call; the history says so."""
    first, second, _ = publish_three(tmp_path)
    promote(tmp_path, first, reason="first model")
    promote(tmp_path, second, alias=CHALLENGER, reason="nightly retrain")
    assert promote_challenger(tmp_path, reason="won the shadow comparison") == second
    registry = Registry(tmp_path)
    assert registry.alias(CHAMPION) == second
    last = registry.history()[-1]
    assert (last.alias, last.version, last.previous) == (CHAMPION, second, first)


def test_promote_challenger_without_one_fails(tmp_path: Path) -> None:
    """With no challenger there is nothing to promote, and the champion stays."""
    first = publish(tmp_path)
    promote(tmp_path, first, reason="first model")
    with pytest.raises(RegistryError, match="no challenger"):
        promote_challenger(tmp_path, reason="x")
    assert Registry(tmp_path).alias(CHAMPION) == first


def test_set_alias_on_unknown_version_fails(tmp_path: Path) -> None:
    """An alias cannot point at a version that was never published."""
    publish(tmp_path)
    with pytest.raises(RegistryError, match="no version 20990101T000000Z-deadbeef"):
        set_alias(tmp_path, CHAMPION, "20990101T000000Z-deadbeef", action="promote", reason="x")
    assert Registry(tmp_path).alias(CHAMPION) is None


def test_set_alias_on_unknown_registry_fails(tmp_path: Path) -> None:
    """Promoting in a directory that holds no registry says to publish first."""
    with pytest.raises(RegistryError, match="publish a model there first"):
        promote(tmp_path / "models", "20990101T000000Z-deadbeef", reason="x")


def test_promotion_needs_a_reason(tmp_path: Path) -> None:
    """An alias never moves without a reason for the audit trail."""
    version = publish(tmp_path)
    with pytest.raises(RegistryError, match="give a reason"):
        promote(tmp_path, version, reason=" ")


def test_tampered_version_is_refused_and_recorded(tmp_path: Path) -> None:
    """Promoting a version whose files changed is refused and the refusal recorded."""
    version = publish(tmp_path)
    flip_first_byte(tmp_path / "versions" / version / ONNX_MODEL_FILE)
    with pytest.raises(RegistryError, match=f"refused to point champion at {version}.*model.onnx"):
        promote(tmp_path, version, reason="x")
    assert Registry(tmp_path).alias(CHAMPION) is None
    assert Registry(tmp_path).history()[-1].action == "refuse"


def test_promote_promote_rollback(tmp_path: Path) -> None:
    """A rollback returns to the previous champion and history records every step."""
    first, second, _ = publish_three(tmp_path)
    promote(tmp_path, first, reason="first model")
    promote(tmp_path, second, reason="better recall")
    assert rollback(tmp_path, reason="false positives up") == first
    assert Registry(tmp_path).alias(CHAMPION) == first
    moves = [
        (entry.action, entry.version, entry.previous, entry.reason)
        for entry in Registry(tmp_path).history()
        if entry.alias == CHAMPION
    ]
    assert moves == [
        ("promote", first, None, "first model"),
        ("promote", second, first, "better recall"),
        ("rollback", first, second, "false positives up"),
    ]


def test_two_rollbacks_walk_back_twice(tmp_path: Path) -> None:
    """Consecutive rollbacks walk back through the promotions, then fail at the first."""
    first, second, third = publish_three(tmp_path)
    for version in (first, second, third):
        promote(tmp_path, version, reason="retrain")
    assert rollback(tmp_path, reason="bad") == second
    assert rollback(tmp_path, reason="also bad") == first
    with pytest.raises(RegistryError, match="no earlier version"):
        rollback(tmp_path, reason="and again")


def test_rollback_after_a_new_promotion(tmp_path: Path) -> None:
    """After a rollback, a new promotion's rollback returns to the version rolled back to."""
    first, second, third = publish_three(tmp_path)
    promote(tmp_path, first, reason="retrain")
    promote(tmp_path, second, reason="retrain")
    rollback(tmp_path, reason="bad")
    promote(tmp_path, third, reason="fixed")
    assert rollback(tmp_path, reason="still bad") == first


def test_aliases_roll_back_independently(tmp_path: Path) -> None:
    """Rolling back the challenger leaves the champion and its lineage alone."""
    first, second, third = publish_three(tmp_path)
    promote(tmp_path, first, reason="retrain")
    promote(tmp_path, second, alias=CHALLENGER, reason="candidate")
    promote(tmp_path, third, alias=CHALLENGER, reason="candidate")
    assert rollback(tmp_path, alias=CHALLENGER, reason="bad candidate") == second
    assert Registry(tmp_path).alias(CHAMPION) == first


def test_rollback_with_no_history(tmp_path: Path) -> None:
    """Rolling back an alias that was never set fails clearly."""
    publish(tmp_path)
    with pytest.raises(RegistryError, match="champion was never set"):
        rollback(tmp_path, reason="x")


def test_rollback_refuses_when_alias_and_history_disagree(tmp_path: Path) -> None:
    """An alias changed outside the history is not guessed at: promote explicitly."""
    first, second, _ = publish_three(tmp_path)
    promote(tmp_path, first, reason="retrain")
    promote(tmp_path, second, reason="retrain")
    (tmp_path / "history.jsonl").unlink()
    with pytest.raises(RegistryError, match="promote the version you want explicitly"):
        rollback(tmp_path, reason="x")


def test_promotion_repairs_a_corrupt_alias(tmp_path: Path) -> None:
    """A corrupt alias file does not block the promotion that rewrites it."""
    version = publish(tmp_path)
    promote(tmp_path, version, reason="first")
    (tmp_path / "aliases" / "champion.json").write_text("{", encoding="utf-8")
    entry = promote(tmp_path, version, reason="repair")
    assert entry.previous is None
    assert Registry(tmp_path).alias(CHAMPION) == version


def test_alias_replaced_without_leftovers(tmp_path: Path) -> None:
    """Moving an alias leaves exactly one file per alias, with no temporary file behind."""
    first, second, _ = publish_three(tmp_path)
    promote(tmp_path, first, reason="retrain")
    promote(tmp_path, second, alias=CHALLENGER, reason="candidate")
    promote(tmp_path, second, reason="retrain")
    names = sorted(path.name for path in (tmp_path / "aliases").iterdir())
    assert names == ["challenger.json", "champion.json"]


def test_reader_never_sees_a_partial_alias(tmp_path: Path) -> None:
    """A reader polling alias() during 200 promotions only ever sees published versions."""
    versions = publish_three(tmp_path)
    promote(tmp_path, versions[0], reason="start")
    seen: set[str | None] = set()
    errors: list[Exception] = []
    done = threading.Event()

    def poll() -> None:
        registry = Registry(tmp_path)
        while not done.is_set():
            try:
                seen.add(registry.alias(CHAMPION))
            except Exception as error:  # any failure is the finding
                errors.append(error)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for index in range(200):
            promote(tmp_path, versions[index % 3], reason=f"promotion {index}")
    finally:
        done.set()
        reader.join()
    assert errors == []
    assert seen <= set(versions)


def test_list_versions(tmp_path: Path) -> None:
    """list_versions shows each version oldest first with its test metrics and aliases."""
    first, second, third = publish_three(tmp_path)
    promote(tmp_path, first, reason="retrain")
    promote(tmp_path, first, alias=CHALLENGER, reason="candidate")
    promote(tmp_path, third, alias=CHALLENGER, reason="candidate")
    (tmp_path / "versions" / second / MANIFEST_FILE).write_text("{", encoding="utf-8")
    rows = list_versions(tmp_path)
    assert [row.version for row in rows] == [first, second, third]
    assert rows[0].aliases == (CHAMPION,)
    assert rows[0].test_metrics == {"pr_auc": 0.61, "recall_at_review": 0.72}
    assert rows[0].created_at == START
    assert rows[1].problem is not None
    assert "invalid manifest" in rows[1].problem
    assert rows[2].aliases == (CHALLENGER,)


def test_format_versions(tmp_path: Path) -> None:
    """The listing shows every version with its aliases, metrics and any problem."""
    first, second, _ = publish_three(tmp_path)
    promote(tmp_path, first, reason="retrain")
    (tmp_path / "versions" / second / MANIFEST_FILE).write_text("{", encoding="utf-8")
    lines = format_versions(list_versions(tmp_path)).splitlines()
    assert lines[0].split() == ["pr_auc", "recall_at_review"]
    assert lines[1].split() == [first, "(champion)", "0.6100", "0.7200"]
    assert lines[2].split() == [second, "-", "-"]
    assert lines[-1].startswith(f"{second}: ")
    assert "invalid manifest" in lines[-1]


def test_format_no_versions(tmp_path: Path) -> None:
    """An empty registry lists as such."""
    assert format_versions(list_versions(tmp_path)) == "no published versions"


def test_refusal_is_recorded(tmp_path: Path) -> None:
    """refuse() records that a version was kept from an alias, and moves nothing."""
    version = publish(tmp_path)
    refuse(tmp_path, version, reason="recall gate failed")
    entry = Registry(tmp_path).history()[-1]
    assert (entry.action, entry.alias, entry.version) == ("refuse", CHAMPION, version)
    assert Registry(tmp_path).alias(CHAMPION) is None


def test_decline_is_recorded(tmp_path: Path) -> None:
    """decline() records a retrain that published nothing, with its reason; no alias moves."""
    version = publish(tmp_path)
    promote(tmp_path, version, reason="first model")
    decline(tmp_path, reason="retrain: 3 new fraud reports, 10 needed")
    entry = Registry(tmp_path).history()[-1]
    assert (entry.action, entry.alias, entry.version) == ("decline", None, None)
    assert entry.reason == "retrain: 3 new fraud reports, 10 needed"
    assert Registry(tmp_path).alias(CHAMPION) == version
    assert Registry(tmp_path).alias(CHALLENGER) is None


def test_decline_needs_a_reason(tmp_path: Path) -> None:
    """A decline without a reason is refused: it is part of the audit trail."""
    publish(tmp_path)
    with pytest.raises(RegistryError, match="give a reason"):
        decline(tmp_path, reason=" ")
