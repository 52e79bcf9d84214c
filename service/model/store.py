"""Loading a model the server may trust, and holding the ones that decide and shadow.

`load_model` serves nothing it has not checked, in this order; each refusal is an
`ArtifactError` whose `reason` names the check that failed:

1. every file matches the SHA-256 its manifest lists (`service.model.artifact.verify_artifact`):
   a truncated, corrupted or half-copied artifact stops here, before any model file is
   parsed;
2. the model was built for this server's feature engine: same engine version, same
   feature names in the same order and, when the caller says which, the same feature
   config as the running engine (a model trained with another label delay reads other
   features);
3. the thresholds are ordered;
4. the serving libraries' versions match training's (`service.model.library_versions`): a major
   difference is refused unless allowed, a minor one is recorded on the model;
5. the ONNX graph loads and fits the scoring contract (`service.model.onnx_scorer.OnnxScorer`);
6. the golden sample, replayed row by row through `OnnxScorer.score_one` (the path requests
   take), gives the scores training recorded, within `GOLDEN_TOLERANCE`;
7. the reason tables load (`reasons.npz`, compiled by training; for older artifacts,
   compiled here from the native LightGBM model), for the same features, with a reason
   code for each, and explain the golden rows' scores: each row's contributions plus the
   bias give back the score training recorded.

The golden replay doubles as the ONNX warm-up; the explanations warm up the reasons path.

`ModelStore` follows the registry's aliases: the champion decides, the optional challenger
is scored in its shadow. See its docstring for how a swap stays atomic.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from service.features.engine import FEATURE_NAMES
from service.model.artifact import (
    GOLDEN_TOLERANCE,
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    REASON_TABLES_FILE,
    ArtifactError,
    GoldenSample,
    Manifest,
    Thresholds,
    verify_artifact,
)
from service.model.explainer import Explainer
from service.model.library_versions import LibraryDifference, differences, installed_versions
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    REGISTRY_ERROR,
    VERSION_PATTERN,
    Registry,
    RegistryError,
    no_champion,
)
from service.scoring_types import ModelSummary

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
) -> LoadedModel:
    """The model in `artifact_dir`, once every check in the module docstring passed.

    `serving_libraries` (library name to version) defaults to what is installed here.
    """
    manifest = verify_artifact(artifact_dir)
    _check_feature_contract(artifact_dir, manifest, expected_feature_config)
    _check_thresholds(artifact_dir, manifest.thresholds)
    serving = installed_versions() if serving_libraries is None else serving_libraries
    library_differences = differences(manifest.libraries, serving)
    if not allow_major_library_difference:
        _refuse_major_differences(artifact_dir, library_differences)
    scorer = _onnx_scorer(artifact_dir / ONNX_MODEL_FILE)
    _replay_golden_sample(artifact_dir, scorer, manifest.golden_sample)
    explainer = _explainer(artifact_dir, manifest)
    _check_reasons_explain_the_scores(artifact_dir, explainer, manifest.golden_sample)
    return LoadedModel(
        manifest.version,
        manifest,
        scorer,
        manifest.thresholds,
        explainer,
        library_differences,
    )


@dataclass(frozen=True, slots=True)
class AliasChange:
    """An alias now served by another model: `version` None when the alias was removed."""

    alias: str
    version: str | None
    previous: str | None
    load_seconds: float
    library_differences: tuple[LibraryDifference, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """A version an alias points at that the store would not load.

    `reason` is an `ArtifactError` reason, or "registry_error" when the registry could not
    say which version the alias names or the version is not published.
    """

    alias: str
    version: str | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one look at the registry changed: loads and new refusals."""

    changes: tuple[AliasChange, ...] = ()
    refusals: tuple[Refusal, ...] = ()


_Listing = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class _Standing:
    """A refusal, and the artifact's file listing when it was made."""

    refusal: Refusal
    listing: _Listing | None


class _Refused(Exception):
    """A look at an alias that ended in a refusal: why, and the version and listing checked."""

    def __init__(
        self, error: RegistryError | ArtifactError, version: str | None, listing: _Listing | None
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.version = version
        self.listing = listing


class ModelStore:
    """The registry's champion and challenger, each loaded behind one reference.

    A load builds and checks a complete `LoadedModel` before it replaces the reference, so
    the scoring thread, which reads `champion` once per request, sees the old model or the
    new one, never a partial one or a mix of two. A refused model leaves the current one
    deciding. The previous model is dropped at the swap (its ONNX session is freed once
    the requests that read it are done): the store never holds more than one model per
    alias.

    A refusal is remembered with the artifact's file listing (names, sizes, modification
    times): the same artifact is not checked again on every poll, but one whose files
    change (a copy that completes) is, and so is every refused one on `retry_refused`.

    Loads may run on another thread than scoring; two loads must not run at once.
    """

    def __init__(
        self,
        registry_root: Path,
        *,
        feature_config: FeatureConfig | None = None,
        allow_major_library_difference: bool = False,
    ) -> None:
        """Read models from `registry_root`.

        `feature_config` is the running feature engine's: every model must have been trained
        with it. When None, the first model loaded fixes it for the later ones.
        """
        self.registry = Registry(registry_root)
        self._feature_config = feature_config
        self._allow_major = allow_major_library_difference
        self._serving_libraries = installed_versions()
        self._models: dict[str, LoadedModel | None] = dict.fromkeys(ALIASES)
        self._refused: dict[str, _Standing] = {}

    @property
    def current(self) -> LoadedModel | None:
        """The champion, which decides; None until a load succeeds."""
        return self._models[CHAMPION]

    @property
    def challenger(self) -> LoadedModel | None:
        """The model scored in the champion's shadow; None without a challenger alias."""
        return self._models[CHALLENGER]

    @property
    def refusals(self) -> tuple[Refusal, ...]:
        """The standing refusals: versions an alias points at that are not served."""
        return tuple(standing.refusal for standing in self._refused.values())

    def load_champion(self) -> LoadedModel:
        """Switch to the champion (a no-op if it is already deciding) and return it.

        RegistryError when there is no champion or the alias is corrupt, ArtifactError when
        the champion must not be served; either way the current model keeps deciding.
        """
        version = self.registry.alias(CHAMPION)
        if version is None:
            raise no_champion(self.registry.root)
        self._switch(CHAMPION, version)
        model = self._models[CHAMPION]
        assert model is not None  # _switch raises rather than leave the champion unset
        return model

    def refresh(self, *, retry_refused: bool = False) -> RefreshReport:
        """Follow both aliases to the versions they name now; never raises for a bad model.

        A refused version is reported once, the first time it is refused; later looks
        skip it until its files change or `retry_refused` is set.
        """
        if retry_refused:
            self._refused.clear()
        changes: list[AliasChange] = []
        refusals: list[Refusal] = []
        for alias in ALIASES:
            try:
                change = self._follow(alias)
            except _Refused as refused:
                refusal = self._refuse(alias, refused)
                if refusal is not None:
                    refusals.append(refusal)
                continue
            if change is not None:
                changes.append(change)
        return RefreshReport(tuple(changes), tuple(refusals))

    def _follow(self, alias: str) -> AliasChange | None:
        """Serve what `alias` names now; _Refused, changing nothing, if that is refused."""
        try:
            version = self.registry.alias(alias)
        except RegistryError as error:
            raise _Refused(error, None, None) from error
        current = self._models[alias]
        if version is None:
            self._refused.pop(alias, None)
            if current is None or alias == CHAMPION:
                return None  # a champion, once served, is only ever replaced
            self._models[alias] = None
            return AliasChange(alias, None, current.version, 0.0)
        if current is not None and current.version == version:
            self._refused.pop(alias, None)
            return None  # versions are immutable: nothing to reload
        # Read before the checks, as the version is: a refusal stands for what was checked,
        # so an alias moved or a copy completed while they ran is looked at next time.
        listing = self._listing(version)
        standing = self._refused.get(alias)
        if (
            standing is not None
            and standing.refusal.version == version
            and standing.listing == listing
        ):
            return None
        try:
            return self._switch(alias, version)
        except (RegistryError, ArtifactError) as error:
            raise _Refused(error, version, listing) from error

    def _switch(self, alias: str, version: str) -> AliasChange | None:
        """Serve `version` under `alias`; raises, changing nothing, if it is refused."""
        current = self._models[alias]
        if current is not None and current.version == version:
            return None
        started = time.perf_counter()
        model = self._loaded_elsewhere(version) or self._load(version)
        self._models[alias] = model
        self._refused.pop(alias, None)
        return AliasChange(
            alias,
            version,
            None if current is None else current.version,
            time.perf_counter() - started,
            model.library_differences,
        )

    def _loaded_elsewhere(self, version: str) -> LoadedModel | None:
        """The model of `version` if another alias serves it: promoting is then instant."""
        for model in self._models.values():
            if model is not None and model.version == version:
                return model
        return None

    def _load(self, version: str) -> LoadedModel:
        artifact_dir = self.registry.versions_dir / version
        if not (VERSION_PATTERN.fullmatch(version) and artifact_dir.is_dir()):
            artifact_dir = self.registry.artifact_dir(version)  # RegistryError, saying why
        model = load_model(
            artifact_dir,
            expected_feature_config=self._expected_feature_config(),
            serving_libraries=self._serving_libraries,
            allow_major_library_difference=self._allow_major,
        )
        if model.version != version:
            raise ArtifactError(
                f"{artifact_dir}: manifest says version {model.version}", reason="version_mismatch"
            )
        return model

    def _refuse(self, alias: str, refused: _Refused) -> Refusal | None:
        """Record the refusal; it is returned only when it was not already standing."""
        error = refused.error
        reason = error.reason if isinstance(error, ArtifactError) else REGISTRY_ERROR
        refusal = Refusal(alias, refused.version, reason, str(error))
        standing = _Standing(refusal, refused.listing)
        previous = self._refused.get(alias)
        self._refused[alias] = standing
        if previous == standing:
            return None
        return refusal

    def _listing(self, version: str) -> _Listing | None:
        """Names, sizes and modification times of the version's files; None if absent."""
        try:
            with os.scandir(self.registry.versions_dir / version) as entries:
                return tuple(
                    sorted((entry.name, *_size_and_mtime(entry.stat())) for entry in entries)
                )
        except OSError:
            return None

    def _expected_feature_config(self) -> FeatureConfig | None:
        if self._feature_config is not None:
            return self._feature_config
        champion = self._models[CHAMPION]
        return None if champion is None else champion.manifest.feature_config


def _size_and_mtime(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns


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


def _onnx_scorer(path: Path) -> OnnxScorer:
    try:
        return OnnxScorer(path, len(FEATURES))
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


def _explainer(artifact_dir: Path, manifest: Manifest) -> Explainer:
    tables = REASON_TABLES_FILE in manifest.files
    path = artifact_dir / (REASON_TABLES_FILE if tables else NATIVE_MODEL_FILE)
    try:
        explainer = Explainer.from_tables(path) if tables else Explainer(path)
    except ValueError as error:
        raise ArtifactError(
            f"{path}: cannot explain scores: {error}", reason="invalid_native_model"
        ) from error
    if explainer.feature_names != FEATURE_NAMES:
        raise ArtifactError(
            f"{path}: the native model's features are not this server's",
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
