"""Loading a model the server may trust, and holding the one that currently decides.

`load_model` serves nothing it has not checked, in this order; each refusal is an
`ArtifactError` saying which check failed:

1. every file matches the SHA-256 its manifest lists (`service.artifact.verify_artifact`);
2. the model was built for this server's feature engine: same engine version, same
   feature names in the same order and, when the caller says which, the same feature
   config as the running engine (a model trained with another label delay reads other
   features);
3. the ONNX graph loads and fits the scoring contract (`service.onnx_model.OnnxScorer`);
4. the golden sample, replayed row by row through `OnnxScorer.score_one` (the path requests
   take), gives the scores training recorded, within `GOLDEN_TOLERANCE`;
5. the native LightGBM model loads, for the same features, with a reason code for each.

The golden replay doubles as the ONNX warm-up; one explanation warms up the reasons path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.artifact import (
    GOLDEN_TOLERANCE,
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    ArtifactError,
    GoldenSample,
    Manifest,
    Thresholds,
    verify_artifact,
)
from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from service.features.engine import FEATURE_NAMES
from service.onnx_model import OnnxScorer
from service.reasons import Explainer
from service.registry import CHAMPION, Registry, RegistryError
from service.scoring_types import ModelSummary


@dataclass(frozen=True)
class LoadedModel:
    """A checked, warmed-up model. `scorer` is single-threaded (see `OnnxScorer`)."""

    version: str
    manifest: Manifest
    scorer: OnnxScorer
    thresholds: Thresholds
    explainer: Explainer

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
    artifact_dir: Path, *, expected_feature_config: FeatureConfig | None = None
) -> LoadedModel:
    """The model in `artifact_dir`, once every check in the module docstring passed."""
    manifest = verify_artifact(artifact_dir)
    _check_feature_contract(artifact_dir, manifest, expected_feature_config)
    _check_thresholds(artifact_dir, manifest.thresholds)
    scorer = _onnx_scorer(artifact_dir / ONNX_MODEL_FILE)
    _replay_golden_sample(artifact_dir, scorer, manifest.golden_sample)
    explainer = _explainer(artifact_dir / NATIVE_MODEL_FILE)
    explainer.explain(manifest.golden_sample.features[0])
    return LoadedModel(manifest.version, manifest, scorer, manifest.thresholds, explainer)


class ModelStore:
    """The registry's champion, loaded, behind one reference.

    A load builds and checks a complete `LoadedModel` before it replaces the reference, so
    the scoring thread sees the old model or the new one, never a partial one, and a refused
    model leaves the current one deciding. A load may run on another thread than scoring;
    two loads must not run at once.
    """

    def __init__(self, registry_root: Path, *, feature_config: FeatureConfig | None = None) -> None:
        """Read models from `registry_root`.

        `feature_config` is the running feature engine's: every model must have been trained
        with it. When None, the first model loaded fixes it for the later ones.
        """
        self._registry = Registry(registry_root)
        self._feature_config = feature_config
        self._current: LoadedModel | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The model deciding now; None until a load succeeds."""
        return self._current

    def load_champion(self) -> LoadedModel:
        """Switch to the champion (a no-op if it is already deciding) and return it.

        RegistryError when there is no champion or the alias is corrupt, ArtifactError when
        the champion must not be served; either way the current model keeps deciding.
        """
        version = self._registry.alias(CHAMPION)
        if version is None:
            raise RegistryError(
                f"{self._registry.root} has no champion: train and promote a model first"
            )
        current = self._current
        if current is not None and current.version == version:
            return current  # versions are immutable: nothing to reload
        artifact_dir = self._registry.artifact_dir(version)
        model = load_model(artifact_dir, expected_feature_config=self._expected_feature_config())
        if model.version != version:
            raise ArtifactError(f"{artifact_dir}: manifest says version {model.version}")
        self._current = model
        return model

    def _expected_feature_config(self) -> FeatureConfig | None:
        if self._feature_config is not None or self._current is None:
            return self._feature_config
        return self._current.manifest.feature_config


def _check_feature_contract(
    artifact_dir: Path, manifest: Manifest, expected_config: FeatureConfig | None
) -> None:
    if manifest.feature_engine_version != FEATURE_ENGINE_VERSION:
        raise ArtifactError(
            f"{artifact_dir}: built for feature engine {manifest.feature_engine_version}, "
            f"this server computes version {FEATURE_ENGINE_VERSION}"
        )
    if tuple(manifest.feature_names) != FEATURE_NAMES:
        raise ArtifactError(f"{artifact_dir}: the manifest's features are not this server's")
    if expected_config is not None and manifest.feature_config != expected_config:
        raise ArtifactError(
            f"{artifact_dir}: trained with feature config {manifest.feature_config!r}, the "
            f"running feature engine uses {expected_config!r}"
        )


def _check_thresholds(artifact_dir: Path, thresholds: Thresholds) -> None:
    if thresholds.review > thresholds.decline:
        raise ArtifactError(
            f"{artifact_dir}: review threshold {thresholds.review} is above the decline "
            f"threshold {thresholds.decline}"
        )


def _onnx_scorer(path: Path) -> OnnxScorer:
    try:
        return OnnxScorer(path, len(FEATURES))
    # onnxruntime raises its own exception classes, derived from Exception only.
    except Exception as error:
        raise ArtifactError(f"{path}: cannot be served: {error}") from error


def _replay_golden_sample(artifact_dir: Path, scorer: OnnxScorer, sample: GoldenSample) -> None:
    """ArtifactError unless every golden row scores as training recorded."""
    if not sample.features or len(sample.features) != len(sample.scores):
        raise ArtifactError(
            f"{artifact_dir}: golden sample has {len(sample.features)} rows and "
            f"{len(sample.scores)} scores; it needs at least one row and a score for each"
        )
    try:
        actual = np.array([scorer.score_one(row) for row in sample.features])
    except ValueError as error:
        raise ArtifactError(f"{artifact_dir}: golden sample: {error}") from error
    expected = np.array(sample.scores)
    # Written so that a NaN score fails too.
    (failing,) = np.nonzero(~(np.abs(actual - expected) <= GOLDEN_TOLERANCE))
    if failing.size:
        row = int(failing[0])
        raise ArtifactError(
            f"{artifact_dir}: golden sample row {row} scores {actual[row]!r}, training recorded "
            f"{expected[row]!r} ({failing.size} rows beyond the tolerance {GOLDEN_TOLERANCE})"
        )


def _explainer(path: Path) -> Explainer:
    try:
        explainer = Explainer(path)
    except ValueError as error:
        raise ArtifactError(f"{path}: cannot explain scores: {error}") from error
    if explainer.feature_names != FEATURE_NAMES:
        raise ArtifactError(f"{path}: the native model's features are not this server's")
    return explainer
