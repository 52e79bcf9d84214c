"""The model artifact contract: file names and the manifest schema.

Owned by the server, imported by training, so the two cannot disagree on what a published
model is. Light on purpose: pydantic and hashlib only, no training dependency.

An artifact is an immutable directory:

    <version>/
        manifest.json   what serving needs to reproduce training (this schema)
        model.onnx      the scoring graph the server runs
        model.lgb.txt   the native LightGBM model (reasons, audits, retraining)
        reasons.npz     its reason tables, compiled by training (the server needs them;
                        manifests older than them still parse)
        ...             reports listed in `Manifest.files`
        manifest.sig    the manifest's Ed25519 signature (`service.model.signatures`)

`check_artifact` reads what it verifies once, through descriptors that do not follow
symbolic links, with a size cap per file, and hands the caller the very bytes it hashed:
a file swapped between the check and the load is never the one served.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from service.features.config import FeatureConfig
from service.model.signatures import (
    SIGNATURE_FILE,
    UNCHECKED,
    SignatureError,
    SignaturePolicy,
)
from service.observability.drift_bins import DriftReference

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
ONNX_MODEL_FILE = "model.onnx"
NATIVE_MODEL_FILE = "model.lgb.txt"
# The reason tables training compiles from the native model
# (`training.model_build.reason_tables`), read by `service.model.explainer`. Not in
# REQUIRED_FILES, so that an older manifest without them still parses (listings, history);
# the server refuses to serve such a version (`missing_file`): it never compiles a model.
REASON_TABLES_FILE = "reasons.npz"
REQUIRED_FILES = (ONNX_MODEL_FILE, NATIVE_MODEL_FILE)

# Serving replays the golden sample and refuses a model whose scores move more than this.
GOLDEN_TOLERANCE = 1e-5

# The default cap on any one artifact file (`models.max_file_bytes`): the default model's
# largest file is 2 MB; a forest of thousands of deep trees stays well below this.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
_MAX_SIGNATURE_BYTES = 4096
_HASH_BLOCK_BYTES = 1 << 20


# Why an artifact was refused: a closed set, so each can label a metric.
RefusalReason = Literal[
    "missing_manifest",
    "invalid_manifest",
    "missing_file",
    "checksum_mismatch",
    "feature_contract",
    "invalid_thresholds",
    "invalid_onnx",
    "golden_mismatch",
    "invalid_native_model",
    "library_mismatch",
    "version_mismatch",
    "unsigned",
    "bad_signature",
    "unknown_key",
    "revoked_key",
    "file_too_large",
    "symlink",
    "onnx_not_allowed",
    "external_data",
]
REFUSAL_REASONS: tuple[RefusalReason, ...] = get_args(RefusalReason)


class ArtifactError(Exception):
    """An artifact that must not be served: missing file, bad checksum, bad manifest.

    `reason` names the check that failed; the message says what was found.
    """

    def __init__(self, message: str, *, reason: RefusalReason) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ManifestFeature(_Frozen):
    name: str
    dtype: Literal["float32"] = "float32"
    description: str = ""


class Thresholds(_Frozen):
    """Score cut-offs: review at or above `review`, decline at or above `decline`."""

    review: float = Field(ge=0, le=1)
    decline: float = Field(ge=0, le=1)
    policy: str = Field(description="How the thresholds were chosen, in words.")


class DataFingerprint(_Frozen):
    """Identifies the exact training data: same fingerprint, same model."""

    sha256: str
    rows: int
    first_event: datetime
    last_event: datetime
    source: str = Field(description="File name the data came from (no directory).")


class Period(_Frozen):
    start: datetime
    end: datetime
    rows: int
    frauds: int


class GateResult(_Frozen):
    name: str
    passed: bool
    detail: str


class LineageSource(_Frozen):
    """One input a model was built from: a history file or the server's decision log."""

    name: str
    rows: int
    frauds: int
    sha256: str | None = Field(default=None, description="SHA-256 of the file, if one file.")


class Lineage(_Frozen):
    """Where a model came from: its data window, its parent, its inputs and why it was made."""

    kind: Literal["train", "retrain"]
    data_start: datetime = Field(description="First event of the data the model was built from.")
    data_end: datetime = Field(description="Last event of that data, evaluation included.")
    as_of: datetime | None = Field(
        default=None, description="Outcomes reported after this instant were not known."
    )
    parent_version: str | None = Field(
        default=None, description="The champion when the model was made."
    )
    sources: list[LineageSource]
    trigger: str | None = Field(default=None, description="What started a retrain, in words.")
    gates: list[GateResult]
    comparison: dict[str, dict[str, float]] | None = Field(
        default=None,
        description="A retrain's metrics of 'champion' and 'candidate' on the same window.",
    )


class GoldenSample(_Frozen):
    """Feature rows with the scores training expects; serving replays them before trusting."""

    features: list[list[float]]
    scores: list[float]


class Manifest(_Frozen):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    version: str
    created_at: datetime
    feature_engine_version: int
    feature_config: FeatureConfig
    features: list[ManifestFeature]
    thresholds: Thresholds
    metrics: dict[str, dict[str, float]] = Field(
        description="Per split ('validation', 'test'): metric name to value."
    )
    training_data: DataFingerprint
    periods: dict[str, Period]
    training_config: dict[str, Any]
    libraries: dict[str, str] = Field(description="Library name to version used in training.")
    gates: list[GateResult]
    parent_version: str | None = None
    golden_sample: GoldenSample
    drift_reference: DriftReference | None = None
    files: dict[str, str] = Field(description="File name to SHA-256 of every other file.")
    # Optional so that manifests written before lineage was recorded still load.
    lineage: Lineage | None = None

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(artifact_dir: Path) -> Manifest:
    """Parse the manifest of `artifact_dir`; ArtifactError if missing or malformed.

    Neither checksums nor signature are checked: for listings. Serving uses `check_artifact`.
    """
    path = artifact_dir / MANIFEST_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError as error:
        raise ArtifactError(f"{path}: missing", reason="missing_manifest") from error
    except OSError as error:
        raise ArtifactError(
            f"{path}: cannot read manifest ({error.strerror})", reason="invalid_manifest"
        ) from error
    return parse_manifest(path, text)


def parse_manifest(path: Path, text: bytes) -> Manifest:
    """The manifest whose bytes are `text` (read from `path`); ArtifactError if malformed."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ArtifactError(
            f"{path}: invalid manifest: {error}", reason="invalid_manifest"
        ) from error
    # Checked before validation: another schema's fields would otherwise hide the real cause.
    schema = document.get("schema_version") if isinstance(document, dict) else None
    if schema not in (None, MANIFEST_SCHEMA_VERSION):
        raise ArtifactError(
            f"{path}: manifest schema {schema}, this server reads {MANIFEST_SCHEMA_VERSION}",
            reason="invalid_manifest",
        )
    try:
        return Manifest.model_validate_json(text)
    except ValueError as error:
        raise ArtifactError(
            f"{path}: invalid manifest: {error}", reason="invalid_manifest"
        ) from error


@dataclass(frozen=True)
class CheckedArtifact:
    """An artifact whose files all verified: its manifest, who signed it, and the content
    of the files the caller asked to keep, exactly as hashed."""

    manifest: Manifest
    signer: str | None
    contents: Mapping[str, bytes]


def verify_artifact(artifact_dir: Path) -> Manifest:
    """The manifest of `artifact_dir`, once every listed file matches its SHA-256."""
    return check_artifact(artifact_dir).manifest


def check_artifact(
    artifact_dir: Path,
    *,
    signatures: SignaturePolicy = UNCHECKED,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    keep: Collection[str] = (),
) -> CheckedArtifact:
    """`artifact_dir` verified: no symbolic link in it, the manifest signed as `signatures`
    require, every listed file at most `max_file_bytes` and matching its SHA-256.

    The files named in `keep` are returned as read; ArtifactError names the first failure.
    """
    _refuse_links(artifact_dir)
    manifest_path = artifact_dir / MANIFEST_FILE
    manifest_bytes = _read(manifest_path, max_file_bytes, missing="missing_manifest")
    signature_path = artifact_dir / SIGNATURE_FILE
    signature = _read_if_present(signature_path, _MAX_SIGNATURE_BYTES)
    try:
        signer = signatures.check(manifest_bytes, signature)
    except SignatureError as error:
        raise ArtifactError(f"{artifact_dir}: {error}", reason=error.reason) from error
    manifest = parse_manifest(manifest_path, manifest_bytes)
    missing = [name for name in REQUIRED_FILES if name not in manifest.files]
    if missing:
        raise ArtifactError(
            f"{artifact_dir}: manifest lists no {', '.join(missing)}", reason="invalid_manifest"
        )
    contents: dict[str, bytes] = {}
    for name, expected in manifest.files.items():
        path = artifact_dir / name
        if Path(name).name != name or name in (MANIFEST_FILE, SIGNATURE_FILE):
            raise ArtifactError(
                f"{artifact_dir}: file name {name!r} leaves the artifact", reason="invalid_manifest"
            )
        if name in keep:
            content = _read(path, max_file_bytes, missing="missing_file")
            actual = hashlib.sha256(content).hexdigest()
            contents[name] = content
        else:
            actual = _hash(path, max_file_bytes)
        if actual != expected:
            raise ArtifactError(
                f"{path}: SHA-256 {actual}, manifest says {expected}", reason="checksum_mismatch"
            )
    return CheckedArtifact(manifest, signer, contents)


def _refuse_links(artifact_dir: Path) -> None:
    """ArtifactError if the directory or anything in it is a symbolic link: a link can point
    out of the version (a writable path, a device), and nothing a publish writes is one."""
    if artifact_dir.is_symlink():
        raise ArtifactError(f"{artifact_dir}: a symbolic link", reason="symlink")
    try:
        with os.scandir(artifact_dir) as entries:
            links = sorted(entry.name for entry in entries if entry.is_symlink())
    except FileNotFoundError as error:
        raise ArtifactError(f"{artifact_dir}: missing", reason="missing_manifest") from error
    except OSError as error:
        raise ArtifactError(
            f"{artifact_dir}: cannot list ({error.strerror})", reason="missing_file"
        ) from error
    if links:
        raise ArtifactError(
            f"{artifact_dir}: symbolic links are not served: {', '.join(links)}", reason="symlink"
        )


def _open(path: Path, max_bytes: int, missing: RefusalReason | None) -> int | None:
    """A descriptor of the regular file `path`, checked against `max_bytes`; None if the
    file does not exist and `missing` is None."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as error:
        if missing is None:
            return None
        raise ArtifactError(f"{path}: missing", reason=missing) from error
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ArtifactError(f"{path}: a symbolic link", reason="symlink") from error
        raise ArtifactError(
            f"{path}: cannot read ({error.strerror})", reason=missing or "missing_file"
        ) from error
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ArtifactError(f"{path}: not a regular file", reason="missing_file")
        if status.st_size > max_bytes:
            raise ArtifactError(
                f"{path}: {status.st_size} bytes, more than the {max_bytes} allowed "
                "(models.max_file_bytes)",
                reason="file_too_large",
            )
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _read(path: Path, max_bytes: int, *, missing: RefusalReason) -> bytes:
    content = _read_if_present(path, max_bytes, missing=missing)
    assert content is not None  # _open raises for a missing file when `missing` is set
    return content


def _read_if_present(
    path: Path, max_bytes: int, *, missing: RefusalReason | None = None
) -> bytes | None:
    descriptor = _open(path, max_bytes, missing)
    if descriptor is None:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        # One byte over the cap tells a file that grew after fstat from one that did not.
        content = handle.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise ArtifactError(f"{path}: grew past {max_bytes} bytes", reason="file_too_large")
    return content


def _hash(path: Path, max_bytes: int) -> str:
    descriptor = _open(path, max_bytes, "missing_file")
    assert descriptor is not None  # _open raises for a missing file when `missing` is set
    digest = hashlib.sha256()
    read = 0
    with os.fdopen(descriptor, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK_BYTES), b""):
            read += len(block)
            if read > max_bytes:
                raise ArtifactError(f"{path}: grew past {max_bytes} bytes", reason="file_too_large")
            digest.update(block)
    return digest.hexdigest()
