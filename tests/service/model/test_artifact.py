"""Tests for the artifact contract: manifest schema, hashes and verification."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.model.artifact import (
    MANIFEST_FILE,
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    ArtifactError,
    GateResult,
    Lineage,
    LineageSource,
    check_artifact,
    read_manifest,
    sha256_file,
    verify_artifact,
)
from service.model.signatures import signature_document
from tests.factories import REPORT_FILE, flip_first_byte, write_artifact, write_model_files


def edit_manifest(directory: Path, **changes: Any) -> None:
    """Rewrite fields of the raw manifest JSON, bypassing validation."""
    path = directory / MANIFEST_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    document.update(changes)
    path.write_text(json.dumps(document), encoding="utf-8")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    """sha256_file is the hex SHA-256 of the file's bytes."""
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_verify_accepts_a_complete_artifact(tmp_path: Path) -> None:
    """An artifact whose files all match the manifest verifies to that manifest."""
    written = write_artifact(tmp_path)
    assert verify_artifact(tmp_path) == written


def test_read_manifest_round_trips(tmp_path: Path) -> None:
    """read_manifest returns what was written, without checking the files."""
    written = write_artifact(tmp_path)
    (tmp_path / ONNX_MODEL_FILE).unlink()
    assert read_manifest(tmp_path) == written


def test_tampered_file_is_named(tmp_path: Path) -> None:
    """One changed byte in a listed file fails verification, naming that file."""
    write_artifact(tmp_path)
    flip_first_byte(tmp_path / NATIVE_MODEL_FILE)
    with pytest.raises(ArtifactError, match=rf"{NATIVE_MODEL_FILE}: SHA-256") as refused:
        verify_artifact(tmp_path)
    assert refused.value.reason == "checksum_mismatch"


def test_missing_listed_file_is_named(tmp_path: Path) -> None:
    """A listed file that is gone fails verification, naming that file."""
    write_artifact(tmp_path)
    (tmp_path / REPORT_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"{REPORT_FILE}: missing") as refused:
        verify_artifact(tmp_path)
    assert refused.value.reason == "missing_file"


def test_missing_manifest(tmp_path: Path) -> None:
    """A directory without manifest.json is not an artifact."""
    write_model_files(tmp_path)
    with pytest.raises(ArtifactError, match=rf"{MANIFEST_FILE}: missing") as refused:
        verify_artifact(tmp_path)
    assert refused.value.reason == "missing_manifest"


def test_invalid_manifest_json(tmp_path: Path) -> None:
    """A manifest that is not JSON is reported as invalid."""
    write_artifact(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text('{"version": ', encoding="utf-8")
    with pytest.raises(ArtifactError, match="invalid manifest") as refused:
        verify_artifact(tmp_path)
    assert refused.value.reason == "invalid_manifest"


def test_manifest_missing_a_field(tmp_path: Path) -> None:
    """A manifest without a required field is reported as invalid."""
    write_artifact(tmp_path)
    path = tmp_path / MANIFEST_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    del document["thresholds"]
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ArtifactError, match="invalid manifest"):
        verify_artifact(tmp_path)


def test_wrong_schema_version(tmp_path: Path) -> None:
    """A manifest of another schema version is refused with both versions named."""
    write_artifact(tmp_path)
    edit_manifest(tmp_path, schema_version=2)
    with pytest.raises(ArtifactError, match="manifest schema 2, this server reads 1") as refused:
        verify_artifact(tmp_path)
    assert refused.value.reason == "invalid_manifest"


def test_newer_schema_with_new_fields_reports_the_schema(tmp_path: Path) -> None:
    """A future manifest with fields this schema lacks is reported by schema, not by field."""
    write_artifact(tmp_path)
    edit_manifest(tmp_path, schema_version=2, calibration={"method": "isotonic"})
    with pytest.raises(ArtifactError, match="manifest schema 2"):
        read_manifest(tmp_path)


def test_manifest_must_list_the_required_models(tmp_path: Path) -> None:
    """A manifest whose files omit the ONNX model is refused even if the rest verifies."""
    write_artifact(tmp_path)
    manifest = read_manifest(tmp_path)
    files = {name: digest for name, digest in manifest.files.items() if name != ONNX_MODEL_FILE}
    edit_manifest(tmp_path, files=files)
    with pytest.raises(ArtifactError, match=f"lists no {ONNX_MODEL_FILE}") as refused:
        verify_artifact(tmp_path)
    assert refused.value.reason == "invalid_manifest"


def test_file_names_cannot_leave_the_artifact(tmp_path: Path) -> None:
    """A listed file outside the artifact directory is refused before it is read."""
    artifact = tmp_path / "artifact"
    write_artifact(artifact)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret", encoding="utf-8")
    files = {**read_manifest(artifact).files, "../outside.txt": sha256_file(outside)}
    edit_manifest(artifact, files=files)
    with pytest.raises(ArtifactError, match="leaves the artifact") as refused:
        verify_artifact(artifact)
    assert refused.value.reason == "invalid_manifest"


def test_a_symbolic_link_in_the_artifact_is_refused(tmp_path: Path) -> None:
    """A listed file that is a link is refused though its target has the right content:
    the link could point anywhere, and nothing a publish writes is one."""
    artifact = tmp_path / "artifact"
    write_artifact(artifact)
    target = tmp_path / "elsewhere.json"
    (artifact / REPORT_FILE).rename(target)
    (artifact / REPORT_FILE).symlink_to(target)
    with pytest.raises(
        ArtifactError, match=f"symbolic links are not served: {REPORT_FILE}"
    ) as refused:
        verify_artifact(artifact)
    assert refused.value.reason == "symlink"


def test_an_unlisted_link_and_a_linked_directory_are_refused(tmp_path: Path) -> None:
    """A link the manifest does not list is refused too, and so is a version directory that
    is itself a link to a directory that verifies."""
    artifact = tmp_path / "artifact"
    write_artifact(artifact)
    linked = tmp_path / "linked"
    linked.symlink_to(artifact)
    with pytest.raises(ArtifactError, match="a symbolic link") as refused:
        verify_artifact(linked)
    assert refused.value.reason == "symlink"
    (artifact / "extra").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="extra") as refused:
        verify_artifact(artifact)
    assert refused.value.reason == "symlink"


def test_a_file_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    """A listed file larger than the cap is refused by its size, checksum unread; the same
    artifact verifies under a cap it fits."""
    write_artifact(tmp_path)
    (tmp_path / REPORT_FILE).write_bytes(b"x" * 10_000)
    files = {**read_manifest(tmp_path).files, REPORT_FILE: sha256_file(tmp_path / REPORT_FILE)}
    edit_manifest(tmp_path, files=files)
    with pytest.raises(
        ArtifactError, match=r"report.json: \d+ bytes, more than the 4096"
    ) as refused:
        check_artifact(tmp_path, max_file_bytes=4096)
    assert refused.value.reason == "file_too_large"
    assert check_artifact(tmp_path, max_file_bytes=20_000).manifest.files


def test_kept_files_are_the_bytes_that_were_hashed(tmp_path: Path) -> None:
    """The contents handed back are exactly the checked files' bytes, and only those asked."""
    write_artifact(tmp_path)
    checked = check_artifact(tmp_path, keep=(ONNX_MODEL_FILE,))
    assert dict(checked.contents) == {ONNX_MODEL_FILE: (tmp_path / ONNX_MODEL_FILE).read_bytes()}
    assert checked.signer is None


def test_the_manifest_cannot_list_itself_or_its_signature(tmp_path: Path) -> None:
    """`files` naming the manifest or the signature is refused: neither can be in its own
    checksum list, so such an entry can only be a forgery."""
    write_artifact(tmp_path)
    (tmp_path / "manifest.sig").write_bytes(signature_document("ed25519-0", b"signature"))
    files = {
        **read_manifest(tmp_path).files,
        "manifest.sig": sha256_file(tmp_path / "manifest.sig"),
    }
    edit_manifest(tmp_path, files=files)
    with pytest.raises(ArtifactError, match="leaves the artifact") as refused:
        verify_artifact(tmp_path)
    assert refused.value.reason == "invalid_manifest"


def test_manifest_written_before_lineage_loads(tmp_path: Path) -> None:
    """A manifest with no lineage key, as older training wrote, verifies with lineage None."""
    write_artifact(tmp_path)
    path = tmp_path / MANIFEST_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    del document["lineage"]
    path.write_text(json.dumps(document), encoding="utf-8")
    assert verify_artifact(tmp_path).lineage is None


def test_lineage_round_trips(tmp_path: Path) -> None:
    """A retrain's lineage reads back as written, sources, gates and comparison included."""
    lineage = Lineage(
        kind="retrain",
        data_start=datetime(2026, 8, 1, tzinfo=UTC),
        data_end=datetime(2026, 9, 27, tzinfo=UTC),
        as_of=datetime(2026, 10, 4, tzinfo=UTC),
        parent_version="20260801T000000Z-0123abcd",
        sources=[LineageSource(name="decision log", rows=1234, frauds=40)],
        trigger="precision 0.12 < 0.20",
        gates=[GateResult(name="onnx_parity", passed=True, detail="0 <= 1e-5")],
        comparison={"champion": {"average_precision": 0.32}, "candidate": {"auc_roc": 0.9}},
    )
    write_artifact(tmp_path, lineage=lineage)
    assert read_manifest(tmp_path).lineage == lineage
