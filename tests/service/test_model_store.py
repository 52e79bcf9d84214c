"""Tests for service.model_store: which artifacts are served, on copies of a trained model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.artifact import (
    GOLDEN_TOLERANCE,
    MANIFEST_FILE,
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    ArtifactError,
    read_manifest,
    sha256_file,
)
from service.features import FEATURES, FeatureConfig
from service.model_store import ModelStore, load_model
from service.registry import CHAMPION, AliasRecord, Registry, RegistryError
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte

OTHER_VERSION = "20990101T000000Z-0123abcd"


@pytest.fixture(scope="module")
def champion_dir(trained_model: TrainedModel) -> Path:
    return Registry(trained_model.registry).artifact_dir(trained_model.version)


@pytest.fixture
def artifact(champion_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the champion's artifact, free to tamper with."""
    return Path(shutil.copytree(champion_dir, tmp_path / champion_dir.name))


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the trained registry, champion included."""
    return Path(shutil.copytree(trained_model.registry, tmp_path / "registry"))


def _edit_manifest(artifact_dir: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    path = artifact_dir / MANIFEST_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")


def _replace_file(artifact_dir: Path, name: str, content: bytes) -> None:
    """Replace a model file and re-hash it, so that only the content is wrong."""
    (artifact_dir / name).write_bytes(content)
    digest = sha256_file(artifact_dir / name)
    _edit_manifest(artifact_dir, lambda manifest: manifest["files"].update({name: digest}))


def _point_champion_at(registry_root: Path, version: str) -> None:
    record = AliasRecord(alias=CHAMPION, version=version, updated_at=datetime.now(UTC))
    Registry(registry_root).alias_path(CHAMPION).write_text(record.model_dump_json())


def _publish_copy(registry_root: Path, version: str, *, rename: bool = True) -> Path:
    """A copy of the champion published as `version` (manifest renamed unless told not to)."""
    registry = Registry(registry_root)
    source = registry.artifact_dir(registry.alias(CHAMPION) or "")
    target = Path(shutil.copytree(source, registry.versions_dir / version))
    if rename:
        _edit_manifest(target, lambda manifest: manifest.update(version=version))
    return target


def test_the_champion_loads_with_its_manifest(champion_dir: Path) -> None:
    """A trained artifact loads: version, thresholds, and a scorer that reproduces training."""
    manifest = read_manifest(champion_dir)
    model = load_model(champion_dir)
    assert model.version == manifest.version == champion_dir.name
    assert model.thresholds == manifest.thresholds
    row, expected = manifest.golden_sample.features[-1], manifest.golden_sample.scores[-1]
    assert model.scorer.score_one(row) == pytest.approx(expected, abs=GOLDEN_TOLERANCE)
    assert model.explainer.feature_names == tuple(feature.name for feature in FEATURES)


def test_summary_describes_the_model(champion_dir: Path) -> None:
    """The summary carries the manifest's features, thresholds, test metrics and libraries."""
    manifest = read_manifest(champion_dir)
    summary = load_model(champion_dir).summary()
    assert summary.version == manifest.version
    assert summary.created_at == manifest.created_at
    assert summary.features == tuple((f.name, f.description) for f in FEATURES)
    assert (summary.review_threshold, summary.decline_threshold) == (
        manifest.thresholds.review,
        manifest.thresholds.decline,
    )
    assert summary.threshold_policy == manifest.thresholds.policy
    assert summary.test_metrics == manifest.metrics["test"]
    assert "lightgbm" in summary.training_libraries


def _shift_golden_score(manifest: dict[str, Any]) -> None:
    manifest["golden_sample"]["scores"][3] += 10 * GOLDEN_TOLERANCE


def _nan_golden_score(manifest: dict[str, Any]) -> None:
    manifest["golden_sample"]["scores"][0] = float("nan")


def _empty_golden_sample(manifest: dict[str, Any]) -> None:
    manifest["golden_sample"] = {"features": [], "scores": []}


def _narrow_golden_row(manifest: dict[str, Any]) -> None:
    manifest["golden_sample"]["features"][0].pop()


def _other_engine_version(manifest: dict[str, Any]) -> None:
    manifest["feature_engine_version"] += 1


def _swapped_features(manifest: dict[str, Any]) -> None:
    features = manifest["features"]
    features[0], features[1] = features[1], features[0]


def _crossed_thresholds(manifest: dict[str, Any]) -> None:
    manifest["thresholds"].update(review=0.9, decline=0.5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_shift_golden_score, "golden sample row 3 scores"),
        (_nan_golden_score, "golden sample row 0 scores"),
        (_empty_golden_sample, "needs at least one row"),
        (_narrow_golden_row, "golden sample: expected 33 features, got 32"),
        (_other_engine_version, "built for feature engine 2"),
        (_swapped_features, "manifest's features are not this server's"),
        (_crossed_thresholds, "review threshold 0.9 is above the decline threshold 0.5"),
    ],
)
def test_manifest_edits_are_refused(
    artifact: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    """A manifest whose golden sample, features or thresholds do not hold is refused."""
    _edit_manifest(artifact, edit)
    with pytest.raises(ArtifactError, match=message):
        load_model(artifact)


def test_a_flipped_byte_is_refused(artifact: Path) -> None:
    """A model file that no longer matches its checksum is refused before it is read."""
    flip_first_byte(artifact / ONNX_MODEL_FILE)
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_model(artifact)


def test_a_missing_native_model_is_refused(artifact: Path) -> None:
    """An artifact without its LightGBM model (needed for reasons) is refused."""
    (artifact / NATIVE_MODEL_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"{NATIVE_MODEL_FILE}: missing"):
        load_model(artifact)


@pytest.mark.parametrize(
    ("name", "message"),
    [(ONNX_MODEL_FILE, "cannot be served"), (NATIVE_MODEL_FILE, "cannot explain scores")],
)
def test_unreadable_models_with_matching_checksums_are_refused(
    artifact: Path, name: str, message: str
) -> None:
    """Garbage that the manifest vouches for is still refused, naming the file."""
    _replace_file(artifact, name, b"not a model\n")
    with pytest.raises(ArtifactError, match=f"{name}: {message}"):
        load_model(artifact)


def test_another_feature_config_is_refused(artifact: Path) -> None:
    """A model trained with another label delay than the running engine's is refused."""
    with pytest.raises(ArtifactError, match="feature config"):
        load_model(artifact, expected_feature_config=FeatureConfig(label_delay_days=3))


def test_the_same_feature_config_is_accepted(artifact: Path) -> None:
    """The config the model was trained with passes the check."""
    config = read_manifest(artifact).feature_config
    assert load_model(artifact, expected_feature_config=config).version == artifact.name


def test_store_is_empty_until_the_champion_loads(registry: Path) -> None:
    """No current model before load_champion; the champion afterwards."""
    store = ModelStore(registry)
    assert store.current is None
    model = store.load_champion()
    assert store.current is model
    assert model.version == Registry(registry).alias(CHAMPION)


def test_loading_the_same_champion_again_keeps_the_model(registry: Path) -> None:
    """A second load of an unchanged champion returns the very model already deciding."""
    store = ModelStore(registry)
    first = store.load_champion()
    assert store.load_champion() is first


def test_a_registry_without_champion_loads_nothing(tmp_path: Path) -> None:
    """RegistryError says to train and promote first; nothing is current."""
    store = ModelStore(tmp_path)
    with pytest.raises(RegistryError, match="has no champion"):
        store.load_champion()
    assert store.current is None


def test_a_new_champion_replaces_the_current_model(registry: Path) -> None:
    """After promotion of another version, load_champion switches to it."""
    store = ModelStore(registry)
    store.load_champion()
    _publish_copy(registry, OTHER_VERSION)
    _point_champion_at(registry, OTHER_VERSION)
    assert store.load_champion().version == OTHER_VERSION
    assert store.current is not None
    assert store.current.version == OTHER_VERSION


def test_a_refused_champion_leaves_the_current_model_deciding(registry: Path) -> None:
    """A tampered new champion raises ArtifactError and the old model stays current."""
    store = ModelStore(registry)
    old = store.load_champion()
    flip_first_byte(_publish_copy(registry, OTHER_VERSION) / ONNX_MODEL_FILE)
    _point_champion_at(registry, OTHER_VERSION)
    with pytest.raises(ArtifactError, match="SHA-256"):
        store.load_champion()
    assert store.current is old


def test_a_champion_whose_manifest_names_another_version_is_refused(registry: Path) -> None:
    """A version directory whose manifest names another version is not served."""
    store = ModelStore(registry)
    _publish_copy(registry, OTHER_VERSION, rename=False)
    _point_champion_at(registry, OTHER_VERSION)
    with pytest.raises(ArtifactError, match="manifest says version"):
        store.load_champion()
    assert store.current is None


def test_the_engines_feature_config_binds_every_model(registry: Path) -> None:
    """A store told the running engine's config refuses a champion trained with another."""
    store = ModelStore(registry, feature_config=FeatureConfig(label_delay_days=3))
    with pytest.raises(ArtifactError, match="feature config"):
        store.load_champion()
