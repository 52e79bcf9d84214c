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
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from service.features.config import FeatureConfig
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
    """Parse the manifest of `artifact_dir`; ArtifactError if missing or malformed."""
    path = artifact_dir / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ArtifactError(f"{path}: missing", reason="missing_manifest") from error
    except OSError as error:
        raise ArtifactError(
            f"{path}: cannot read manifest ({error.strerror})", reason="invalid_manifest"
        ) from error
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


def verify_artifact(artifact_dir: Path) -> Manifest:
    """The manifest of `artifact_dir`, once every listed file matches its SHA-256."""
    manifest = read_manifest(artifact_dir)
    missing = [name for name in REQUIRED_FILES if name not in manifest.files]
    if missing:
        raise ArtifactError(
            f"{artifact_dir}: manifest lists no {', '.join(missing)}", reason="invalid_manifest"
        )
    for name, expected in manifest.files.items():
        path = artifact_dir / name
        if Path(name).name != name:
            raise ArtifactError(
                f"{artifact_dir}: file name {name!r} leaves the artifact", reason="invalid_manifest"
            )
        if not path.is_file():
            raise ArtifactError(f"{path}: missing", reason="missing_file")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path}: SHA-256 {actual}, manifest says {expected}", reason="checksum_mismatch"
            )
    return manifest
