"""Loading a model the server may trust: every check before anything is served.

`load_model` serves nothing it has not checked, in this order; each refusal is an
`ArtifactError` whose `reason` names the check that failed:

1. the artifact verifies (`service.model.artifact.check_artifact`): no symbolic link, a
   manifest signed by a trusted key when the server trusts keys (`SignaturePolicy`), every
   file within the size cap and matching the SHA-256 its manifest lists. A truncated,
   corrupted, half-copied or edited artifact stops here, before any model file is parsed;
   the ONNX graph and the reason tables are read once, here, and those very bytes are what
   the later steps load;
2. the model was built for this server's feature engine: same engine version, same
   feature names in the same order and, when the caller says which, the same feature
   config as the running engine (a model trained with another label delay reads other
   features);
3. the thresholds are ordered;
4. the serving libraries' versions match training's (`service.model.library_versions`): a major
   difference is refused unless allowed, a minor one is recorded on the model;
5. the ONNX graph holds only what a LightGBM export does (`service.model.onnx_graph`: an
   operator allow-list, no external data, no subgraphs or functions), then loads and fits
   the scoring contract (`service.model.onnx_scorer.OnnxScorer`);
6. the golden sample, replayed row by row through `OnnxScorer.score_one` (the path requests
   take), gives the scores training recorded, within `GOLDEN_TOLERANCE`;
7. the reason tables load (`reasons.npz`, compiled by training; a version published
   without them is refused, `missing_file`: the server does not compile LightGBM models),
   for the same features, with a reason code for each, and explain the golden rows'
   scores: each row's contributions plus the bias give back the score training recorded.

The golden replay doubles as the ONNX warm-up; the explanations warm up the reasons path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.domain import ModelSummary
from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from service.features.engine import FEATURE_NAMES
from service.model.artifact import (
    DEFAULT_MAX_FILE_BYTES,
    GOLDEN_TOLERANCE,
    ONNX_MODEL_FILE,
    REASON_TABLES_FILE,
    ArtifactError,
    GoldenSample,
    Manifest,
    Thresholds,
    check_artifact,
)
from service.model.explainer import Explainer
from service.model.library_versions import LibraryDifference, differences, installed_versions
from service.model.onnx_graph import GraphRefused, check_graph
from service.model.onnx_scorer import OnnxScorer
from service.model.signatures import UNCHECKED, SignaturePolicy
from service.observability.drift_bins import DriftReference

# The reasons come from LightGBM's float64 trees, the golden scores from the float32 ONNX
# graph: training's parity gate keeps the two within `gates.max_parity_gap` (1e-5 by
# default, at most 1e-3) on every test row.
REASONS_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LoadedModel:
    """A checked, warmed-up model. `scorer` is single-threaded (see `OnnxScorer`)."""

    version: str
    manifest: Manifest
    scorer: OnnxScorer
    thresholds: Thresholds
    explainer: Explainer
    library_differences: tuple[LibraryDifference, ...] = ()
    signer: str | None = None
    """The id of the trusted key that signed the manifest; None when none was required."""

    @property
    def drift_reference(self) -> DriftReference | None:
        """What the model saw on its test period, for drift statistics; None if not built."""
        return self.manifest.drift_reference

    def summary(self) -> ModelSummary:
        """The model as `GetModelInfo` describes it: test-period metrics only."""
        manifest = self.manifest
        return ModelSummary(
            version=self.version,
            created_at=manifest.created_at,
            feature_engine_version=manifest.feature_engine_version,
            features=tuple((feature.name, feature.description) for feature in manifest.features),
            review_threshold=self.thresholds.review,
            decline_threshold=self.thresholds.decline,
            threshold_policy=self.thresholds.policy,
            test_metrics=dict(manifest.metrics.get("test", {})),
            training_libraries=dict(manifest.libraries),
        )


def load_model(
    artifact_dir: Path,
    *,
    expected_feature_config: FeatureConfig | None = None,
    serving_libraries: Mapping[str, str] | None = None,
    allow_major_library_difference: bool = False,
    signatures: SignaturePolicy = UNCHECKED,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> LoadedModel:
    """The model in `artifact_dir`, once every check in the module docstring passed.

    `serving_libraries` (library name to version) defaults to what is installed here.
    """
    checked = check_artifact(
        artifact_dir,
        signatures=signatures,
        max_file_bytes=max_file_bytes,
        keep=(ONNX_MODEL_FILE, REASON_TABLES_FILE),
    )
    manifest = checked.manifest
    _check_feature_contract(artifact_dir, manifest, expected_feature_config)
    _check_thresholds(artifact_dir, manifest.thresholds)
    serving = installed_versions() if serving_libraries is None else serving_libraries
    library_differences = differences(manifest.libraries, serving)
    if not allow_major_library_difference:
        _refuse_major_differences(artifact_dir, library_differences)
    scorer = _onnx_scorer(artifact_dir / ONNX_MODEL_FILE, checked.contents[ONNX_MODEL_FILE])
    _replay_golden_sample(artifact_dir, scorer, manifest.golden_sample)
    explainer = _explainer(artifact_dir, manifest, checked.contents.get(REASON_TABLES_FILE))
    _check_reasons_explain_the_scores(artifact_dir, explainer, manifest.golden_sample)
    return LoadedModel(
        manifest.version,
        manifest,
        scorer,
        manifest.thresholds,
        explainer,
        library_differences,
        checked.signer,
    )


def _check_feature_contract(
    artifact_dir: Path, manifest: Manifest, expected_config: FeatureConfig | None
) -> None:
    if manifest.feature_engine_version != FEATURE_ENGINE_VERSION:
        raise ArtifactError(
            f"{artifact_dir}: built for feature engine {manifest.feature_engine_version}, "
            f"this server computes version {FEATURE_ENGINE_VERSION}",
            reason="feature_contract",
        )
    if tuple(manifest.feature_names) != FEATURE_NAMES:
        raise ArtifactError(
            f"{artifact_dir}: the manifest's features are not this server's",
            reason="feature_contract",
        )
    reference = manifest.drift_reference
    if reference is not None and reference.feature_names != manifest.feature_names:
        raise ArtifactError(
            f"{artifact_dir}: the drift reference's features are not the model's",
            reason="invalid_manifest",
        )
    if expected_config is not None and manifest.feature_config != expected_config:
        raise ArtifactError(
            f"{artifact_dir}: trained with feature config {manifest.feature_config!r}, the "
            f"running feature engine uses {expected_config!r}",
            reason="feature_contract",
        )


def _check_thresholds(artifact_dir: Path, thresholds: Thresholds) -> None:
    if thresholds.review > thresholds.decline:
        raise ArtifactError(
            f"{artifact_dir}: review threshold {thresholds.review} is above the decline "
            f"threshold {thresholds.decline}",
            reason="invalid_thresholds",
        )


def _refuse_major_differences(
    artifact_dir: Path, library_differences: tuple[LibraryDifference, ...]
) -> None:
    major = [item.describe() for item in library_differences if item.severity == "major"]
    if major:
        raise ArtifactError(
            f"{artifact_dir}: trained with another major version: {'; '.join(major)}",
            reason="library_mismatch",
        )


def _onnx_scorer(path: Path, model: bytes) -> OnnxScorer:
    try:
        check_graph(model)
    except GraphRefused as error:
        raise ArtifactError(f"{path}: cannot be served: {error}", reason=error.reason) from error
    try:
        return OnnxScorer(model, len(FEATURES))
    # onnxruntime raises its own exception classes, derived from Exception only.
    except Exception as error:
        raise ArtifactError(f"{path}: cannot be served: {error}", reason="invalid_onnx") from error


def _replay_golden_sample(artifact_dir: Path, scorer: OnnxScorer, sample: GoldenSample) -> None:
    """ArtifactError unless every golden row scores as training recorded."""
    if not sample.features or len(sample.features) != len(sample.scores):
        raise ArtifactError(
            f"{artifact_dir}: golden sample has {len(sample.features)} rows and "
            f"{len(sample.scores)} scores; it needs at least one row and a score for each",
            reason="golden_mismatch",
        )
    try:
        actual = np.array([scorer.score_one(row) for row in sample.features])
    except ValueError as error:
        raise ArtifactError(
            f"{artifact_dir}: golden sample: {error}", reason="golden_mismatch"
        ) from error
    expected = np.array(sample.scores)
    # Written so that a NaN score fails too.
    (failing,) = np.nonzero(~(np.abs(actual - expected) <= GOLDEN_TOLERANCE))
    if failing.size:
        row = int(failing[0])
        raise ArtifactError(
            f"{artifact_dir}: golden sample row {row} scores {actual[row]!r}, training recorded "
            f"{expected[row]!r} ({failing.size} rows beyond the tolerance {GOLDEN_TOLERANCE})",
            reason="golden_mismatch",
        )


def _explainer(artifact_dir: Path, manifest: Manifest, tables: bytes | None) -> Explainer:
    """The explainer of the artifact's reason tables. ArtifactError if the manifest lists
    none (a version published before training compiled them: the server does not compile
    LightGBM models) or they do not load, for this server's features."""
    if tables is None:
        raise ArtifactError(
            f"{artifact_dir}: no reason tables ({REASON_TABLES_FILE}), which this server "
            f"needs to explain scores (version {manifest.version} predates them): train and "
            "publish a new version with a current fraud-train",
            reason="missing_file",
        )
    path = artifact_dir / REASON_TABLES_FILE
    try:
        explainer = Explainer.from_tables(tables)
    except ValueError as error:
        raise ArtifactError(
            f"{path}: cannot explain scores: {error}", reason="invalid_native_model"
        ) from error
    if explainer.feature_names != FEATURE_NAMES:
        raise ArtifactError(
            f"{path}: the reason tables' features are not this server's",
            reason="invalid_native_model",
        )
    return explainer


def _check_reasons_explain_the_scores(
    artifact_dir: Path, explainer: Explainer, sample: GoldenSample
) -> None:
    """ArtifactError unless the reasons add up to the golden scores: tables of another
    model would name the wrong features however well their file verifies."""
    for row, (features, score) in enumerate(zip(sample.features, sample.scores, strict=True)):
        raw = explainer.bias + float(explainer.contributions(features).sum())
        explained = 1.0 / (1.0 + math.exp(-raw))
        if not abs(explained - score) <= REASONS_TOLERANCE:
            raise ArtifactError(
                f"{artifact_dir}: the reasons of golden row {row} add up to a score of "
                f"{explained!r}, the model scores {score!r}: they explain another model",
                reason="invalid_native_model",
            )
    explainer.explain(sample.features[0])  # warms up the path REVIEW and DECLINE take
