"""Tests for service.model.explainer: reason codes from the reason tables of a trained artifact."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
from numpy.typing import NDArray

from service.features import FEATURES
from service.model.artifact import NATIVE_MODEL_FILE, REASON_TABLES_FILE, read_manifest
from service.model.explainer import REASON_CODES, Explainer
from service.model.registry import Registry
from tests.conftest import TrainedModel

FEATURE_NAMES = [feature.name for feature in FEATURES]


def lightgbm_predict(booster: lightgbm.Booster, rows: Any, **kind: bool) -> NDArray[np.float64]:
    """LightGBM's prediction of float32 `rows` (probability unless `kind` says otherwise)."""
    return np.asarray(booster.predict(np.asarray(rows, dtype=np.float32), **kind), np.float64)


@pytest.fixture(scope="module")
def artifact_dir(trained_model: TrainedModel) -> Path:
    return Registry(trained_model.registry).artifact_dir(trained_model.version)


@pytest.fixture(scope="module")
def explainer(artifact_dir: Path) -> Explainer:
    return Explainer.from_tables(artifact_dir / REASON_TABLES_FILE)


@pytest.fixture(scope="module")
def booster(artifact_dir: Path) -> lightgbm.Booster:
    return lightgbm.Booster(model_file=str(artifact_dir / NATIVE_MODEL_FILE))


@pytest.fixture(scope="module")
def golden_rows(artifact_dir: Path) -> list[list[float]]:
    return read_manifest(artifact_dir).golden_sample.features


def test_every_feature_has_exactly_one_code() -> None:
    """The code table covers every feature of the engine and nothing else."""
    assert sorted(REASON_CODES) == sorted(FEATURE_NAMES)


def test_codes_are_upper_snake_case() -> None:
    """Codes are machine-readable constants such as TERMINAL_RECENT_FRAUD."""
    assert all(re.fullmatch(r"[A-Z]+(_[A-Z]+)*", code) for code in REASON_CODES.values())


def test_explainer_reads_the_models_features(explainer: Explainer) -> None:
    """The reason tables of a trained artifact name the engine's features, in order."""
    assert explainer.feature_names == tuple(FEATURE_NAMES)


def test_contributions_add_up_to_the_raw_score(
    explainer: Explainer, booster: lightgbm.Booster, golden_rows: list[list[float]]
) -> None:
    """On every golden row, bias plus contributions is LightGBM's raw score (log-odds)."""
    raw = lightgbm_predict(booster, golden_rows, raw_score=True)
    totals = [explainer.bias + explainer.contributions(row).sum() for row in golden_rows]
    assert totals == pytest.approx(raw, rel=1e-9, abs=1e-9)


def test_bias_is_treeshaps_expected_value(
    explainer: Explainer, booster: lightgbm.Booster, golden_rows: list[list[float]]
) -> None:
    """Nodes are weighted by training rows as TreeSHAP weighs them: same bias (log-odds)."""
    shap = lightgbm_predict(booster, golden_rows[:1], pred_contrib=True)
    assert explainer.bias == pytest.approx(shap[0, -1], rel=1e-9)


def test_top_reason_mostly_agrees_with_treeshap(
    explainer: Explainer, booster: lightgbm.Booster, golden_rows: list[list[float]]
) -> None:
    """On rows scored above even odds, the strongest feature is mostly TreeSHAP's too."""
    rows = np.array(golden_rows, dtype=np.float32)
    flagged = rows[lightgbm_predict(booster, rows) > 0.5]
    shap_top = np.argmax(lightgbm_predict(booster, flagged, pred_contrib=True)[:, :-1], axis=1)
    path_top = [np.argmax(explainer.contributions(row.tolist())) for row in flagged]
    assert len(flagged) >= 20
    assert np.mean(shap_top == path_top) >= 0.7


def test_reasons_are_the_strongest_positive_contributions(
    explainer: Explainer, golden_rows: list[list[float]]
) -> None:
    """Up to three reasons, strongest first: the largest positive contributions, coded."""
    for row in golden_rows[:50]:
        contributions = explainer.contributions(row)
        positive = sorted((c for c in contributions if c > 0), reverse=True)[:3]
        reasons = explainer.explain(row)
        assert [reason.contribution for reason in reasons] == positive
        for reason in reasons:
            assert reason.code == REASON_CODES[reason.feature]
            assert contributions[FEATURE_NAMES.index(reason.feature)] == reason.contribution


def test_high_scores_have_reasons(
    explainer: Explainer, artifact_dir: Path, golden_rows: list[list[float]]
) -> None:
    """Every golden row the model scores above even odds gets at least one reason."""
    scores = read_manifest(artifact_dir).golden_sample.scores
    risky = [row for row, score in zip(golden_rows, scores, strict=True) if score > 0.5]
    assert risky
    assert all(explainer.explain(row) for row in risky)


def test_top_sets_the_number_of_reasons(artifact_dir: Path, golden_rows: list[list[float]]) -> None:
    """An explainer built with top=1 gives at most one reason."""
    explainer = Explainer.from_tables(artifact_dir / REASON_TABLES_FILE, top=1)
    assert all(len(explainer.explain(row)) <= 1 for row in golden_rows)


def test_a_row_of_the_wrong_length_is_refused(explainer: Explainer) -> None:
    """A row that is not one value per feature raises ValueError."""
    with pytest.raises(ValueError, match=f"expected {len(FEATURES)} features, got 2"):
        explainer.explain([1.0, 2.0])


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not an npz file", "not reason tables"), (None, "no leaf_contributions")],
)
def test_files_that_are_not_reason_tables_are_value_errors(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    """Garbage, or an archive missing an array, is refused with ValueError."""
    path = tmp_path / "reasons.npz"
    if content is None:
        with path.open("wb") as out:
            np.savez(out, bias=np.array(0.0), feature_names=np.array(["amount"]))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        Explainer.from_tables(path)


def test_tables_naming_a_feature_without_a_code_are_refused(
    artifact_dir: Path, tmp_path: Path
) -> None:
    """Tables whose features include one without a reason code raise ValueError naming it."""
    with np.load(artifact_dir / REASON_TABLES_FILE) as tables:
        arrays = {name: tables[name] for name in tables.files}
    arrays["feature_names"] = np.array(["x0", *FEATURE_NAMES[1:]])
    path = tmp_path / "reasons.npz"
    with path.open("wb") as out:
        np.savez(out, **arrays)
    with pytest.raises(ValueError, match=r"no reason code for feature\(s\) x0$"):
        Explainer.from_tables(path)
