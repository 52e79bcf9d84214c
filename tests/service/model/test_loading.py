"""Tests for service.model.loading: which artifacts are served, each refusal with its
reason, on copies of a trained model."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.features import FEATURE_ENGINE_VERSION, FEATURES, FeatureConfig
from service.model.artifact import (
    GOLDEN_TOLERANCE,
    MANIFEST_FILE,
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    REASON_TABLES_FILE,
    ArtifactError,
    read_manifest,
)
from service.model.library_versions import LibraryDifference, installed_versions
from service.model.loading import load_model
from service.model.registry import Registry
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.service.registry_copies import (
    edit_manifest,
    replace_file,
)

Tamper = Callable[[Path], object]


@pytest.fixture(scope="module")
def champion_dir(trained_model: TrainedModel) -> Path:
    return Registry(trained_model.registry).artifact_dir(trained_model.version)


@pytest.fixture
def artifact(champion_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the champion's artifact, free to tamper with."""
    return Path(shutil.copytree(champion_dir, tmp_path / champion_dir.name))


def test_the_champion_loads_with_its_manifest(champion_dir: Path) -> None:
    """A trained artifact loads: version, thresholds, and a scorer that reproduces training."""
    manifest = read_manifest(champion_dir)
    model = load_model(champion_dir)
    assert model.version == manifest.version == champion_dir.name
    assert model.thresholds == manifest.thresholds
    row, expected = manifest.golden_sample.features[-1], manifest.golden_sample.scores[-1]
    assert model.scorer.score_one(row) == pytest.approx(expected, abs=GOLDEN_TOLERANCE)
    assert model.explainer.feature_names == tuple(feature.name for feature in FEATURES)
    assert model.library_differences == ()


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


# --- What load_model refuses, and why ------------------------------------------------------


def _manifest_edit(edit: Callable[[dict[str, Any]], None]) -> Tamper:
    return lambda artifact: edit_manifest(artifact, edit)


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


def _trained_with_onnxruntime_0(manifest: dict[str, Any]) -> None:
    manifest["libraries"]["onnxruntime"] = "0.9.0"


def _unchanged(artifact: Path) -> None:
    """Leave the artifact as trained: the load options make it unfit."""


def _without_reason_tables(artifact: Path) -> None:
    """The artifact as written before training compiled the reason tables."""
    (artifact / REASON_TABLES_FILE).unlink()
    edit_manifest(artifact, lambda manifest: manifest["files"].pop(REASON_TABLES_FILE))


def _doubled_reason_tables(artifact: Path) -> None:
    """Well-formed tables whose leaf values are not the model's (re-hashed)."""
    with np.load(artifact / REASON_TABLES_FILE) as tables:
        arrays = {name: tables[name] for name in tables.files}
    arrays["leaf_contributions"] = arrays["leaf_contributions"] * 2
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    replace_file(artifact, REASON_TABLES_FILE, buffer.getvalue())


def _serving_onnxruntime(version: str) -> dict[str, str]:
    """This environment's serving libraries, but with onnxruntime at `version`."""
    return installed_versions() | {"onnxruntime": version}


def _minor_step(version: str) -> str:
    """Another version with the same major number as `version`."""
    return f"{version.split('.')[0]}.999.0"


REFUSED_ARTIFACTS = [
    pytest.param(
        _manifest_edit(_shift_golden_score),
        {},
        "golden sample row 3 scores",
        "golden_mismatch",
        id="golden-score-shifted",
    ),
    pytest.param(
        _manifest_edit(_nan_golden_score),
        {},
        "golden sample row 0 scores",
        "golden_mismatch",
        id="golden-score-nan",
    ),
    pytest.param(
        _manifest_edit(_empty_golden_sample),
        {},
        "needs at least one row",
        "golden_mismatch",
        id="golden-sample-empty",
    ),
    pytest.param(
        _manifest_edit(_narrow_golden_row),
        {},
        "golden sample: expected 33 features, got 32",
        "golden_mismatch",
        id="golden-row-narrow",
    ),
    pytest.param(
        _manifest_edit(_other_engine_version),
        {},
        f"built for feature engine {FEATURE_ENGINE_VERSION + 1}",
        "feature_contract",
        id="other-engine-version",
    ),
    pytest.param(
        _manifest_edit(_swapped_features),
        {},
        "manifest's features are not this server's",
        "feature_contract",
        id="features-swapped",
    ),
    pytest.param(
        _manifest_edit(_crossed_thresholds),
        {},
        "review threshold 0.9 is above the decline threshold 0.5",
        "invalid_thresholds",
        id="thresholds-crossed",
    ),
    pytest.param(
        lambda artifact: flip_first_byte(artifact / ONNX_MODEL_FILE),
        {},
        "SHA-256",
        "checksum_mismatch",
        id="flipped-byte",
    ),
    pytest.param(
        lambda artifact: (artifact / NATIVE_MODEL_FILE).unlink(),
        {},
        f"{NATIVE_MODEL_FILE}: missing",
        "missing_file",
        id="native-model-missing",
    ),
    pytest.param(
        lambda artifact: (artifact / MANIFEST_FILE).unlink(),
        {},
        f"{MANIFEST_FILE}: missing",
        "missing_manifest",
        id="manifest-missing",
    ),
    pytest.param(
        lambda artifact: replace_file(artifact, ONNX_MODEL_FILE, b"not a model\n"),
        {},
        f"{ONNX_MODEL_FILE}: cannot be served",
        "invalid_onnx",
        id="onnx-garbage-rehashed",
    ),
    pytest.param(
        _without_reason_tables,
        {},
        f"no reason tables ({REASON_TABLES_FILE}), which this server needs to explain scores "
        "(version ",
        "missing_file",
        id="no-reason-tables",
    ),
    pytest.param(
        lambda artifact: replace_file(artifact, REASON_TABLES_FILE, b"not tables\n"),
        {},
        f"{REASON_TABLES_FILE}: cannot explain scores",
        "invalid_native_model",
        id="reason-tables-garbage-rehashed",
    ),
    pytest.param(
        _doubled_reason_tables,
        {},
        "they explain another model",
        "invalid_native_model",
        id="reason-tables-of-another-model",
    ),
    pytest.param(
        _unchanged,
        {"expected_feature_config": FeatureConfig(label_delay_days=3)},
        "feature config",
        "feature_contract",
        id="other-feature-config",
    ),
    pytest.param(
        _unchanged,
        {"serving_libraries": _serving_onnxruntime("0.1.0")},
        "in training, 0.1.0 here (major)",
        "library_mismatch",
        id="serving-major-library",
    ),
    pytest.param(
        _manifest_edit(_trained_with_onnxruntime_0),
        {},
        "onnxruntime 0.9.0 in training",
        "library_mismatch",
        id="trained-major-library",
    ),
]


@pytest.mark.parametrize(("tamper", "options", "message", "reason"), REFUSED_ARTIFACTS)
def test_an_unfit_artifact_is_refused_naming_the_failed_check(
    artifact: Path, tamper: Tamper, options: dict[str, Any], message: str, reason: str
) -> None:
    """Each failed check refuses the artifact with its own reason and a message saying why."""
    tamper(artifact)
    with pytest.raises(ArtifactError, match=re.escape(message)) as refused:
        load_model(artifact, **options)
    assert refused.value.reason == reason


def test_the_same_feature_config_is_accepted(artifact: Path) -> None:
    """The config the model was trained with passes the check."""
    config = read_manifest(artifact).feature_config
    assert load_model(artifact, expected_feature_config=config).version == artifact.name


def test_a_major_library_difference_is_served_when_allowed(artifact: Path) -> None:
    """Allowed, a major difference loads, and the model records it."""
    trained = read_manifest(artifact).libraries["onnxruntime"]
    model = load_model(
        artifact,
        serving_libraries=_serving_onnxruntime("0.1.0"),
        allow_major_library_difference=True,
    )
    assert model.library_differences == (
        LibraryDifference("onnxruntime", trained, "0.1.0", "major"),
    )


def test_a_minor_library_difference_is_served_and_recorded(artifact: Path) -> None:
    """Another minor version of a serving library loads, with the difference on the model."""
    trained = read_manifest(artifact).libraries["onnxruntime"]
    serving = _minor_step(trained)
    model = load_model(artifact, serving_libraries=_serving_onnxruntime(serving))
    assert model.library_differences == (
        LibraryDifference("onnxruntime", trained, serving, "minor"),
    )
