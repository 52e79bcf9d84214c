"""Tests for service.model.store: how the store follows the registry's champion and
challenger, refuses what loading refuses and keeps the old model deciding, on copies of a
trained model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.features import FeatureConfig
from service.model import store as model_store
from service.model.artifact import (
    NATIVE_MODEL_FILE,
    ONNX_MODEL_FILE,
    REQUIRED_FILES,
    ArtifactError,
)
from service.model.loading import LoadedModel, load_model
from service.model.registry import ALIASES, CHALLENGER, CHAMPION, Registry, RegistryError
from service.model.store import ModelStore, RefreshReport, Refusal
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.service.registry_copies import (
    copy_registry,
    edit_manifest,
    point_alias,
    publish_copy,
    remove_alias,
)

OTHER_VERSION = "20990101T000000Z-0123abcd"
CHALLENGER_VERSION = "20990102T000000Z-4567cdef"
BROKEN_VERSION = "20990103T000000Z-89abcdef"

Tamper = Callable[[Path], object]
# (alias, version, previous) of each change; (alias, version, reason) of each refusal.
ChangeRow = tuple[str, str | None, str | None]
RefusalRow = tuple[str, str | None, str]


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the trained registry, champion included."""
    return copy_registry(trained_model, tmp_path / "registry")


def test_the_store_refuses_a_major_library_difference_unless_allowed(registry: Path) -> None:
    """The store checks against this environment's libraries; its flag lets a major one in."""
    champion = Registry(registry).alias(CHAMPION) or ""
    edit_manifest(
        Registry(registry).artifact_dir(champion),
        lambda manifest: manifest["libraries"].update(onnxruntime="0.9.0"),
    )
    with pytest.raises(ArtifactError, match=r"onnxruntime 0\.9\.0 in training") as refused:
        ModelStore(registry).load_champion()
    assert refused.value.reason == "library_mismatch"
    model = ModelStore(registry, allow_major_library_difference=True).load_champion()
    assert [(item.library, item.severity) for item in model.library_differences] == [
        ("onnxruntime", "major")
    ]


# --- load_champion -------------------------------------------------------------------------


def test_store_is_empty_until_the_champion_loads(registry: Path) -> None:
    """No current model before load_champion; the champion afterwards."""
    store = ModelStore(registry)
    assert store.current is None
    assert store.challenger is None
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
    publish_copy(registry, OTHER_VERSION)
    point_alias(registry, CHAMPION, OTHER_VERSION)
    assert store.load_champion().version == OTHER_VERSION
    assert store.current is not None
    assert store.current.version == OTHER_VERSION


def test_a_refused_champion_leaves_the_current_model_deciding(registry: Path) -> None:
    """A tampered new champion raises ArtifactError and the old model stays current."""
    store = ModelStore(registry)
    old = store.load_champion()
    flip_first_byte(publish_copy(registry, OTHER_VERSION) / ONNX_MODEL_FILE)
    point_alias(registry, CHAMPION, OTHER_VERSION)
    with pytest.raises(ArtifactError, match="SHA-256"):
        store.load_champion()
    assert store.current is old


def test_a_champion_whose_manifest_names_another_version_is_refused(registry: Path) -> None:
    """A version directory whose manifest names another version is not served."""
    store = ModelStore(registry)
    publish_copy(registry, OTHER_VERSION, rename=False)
    point_alias(registry, CHAMPION, OTHER_VERSION)
    with pytest.raises(ArtifactError, match="manifest says version") as refused:
        store.load_champion()
    assert refused.value.reason == "version_mismatch"
    assert store.current is None


def test_the_engines_feature_config_binds_every_model(registry: Path) -> None:
    """A store told the running engine's config refuses a champion trained with another."""
    store = ModelStore(registry, feature_config=FeatureConfig(label_delay_days=3))
    with pytest.raises(ArtifactError, match="feature config") as refused:
        store.load_champion()
    assert refused.value.reason == "feature_contract"


# --- refresh: following both aliases -------------------------------------------------------


def _changes(report: RefreshReport) -> list[ChangeRow]:
    return [(change.alias, change.version, change.previous) for change in report.changes]


def _refusals(refusals: tuple[Refusal, ...]) -> list[RefusalRow]:
    return [(refusal.alias, refusal.version, refusal.reason) for refusal in refusals]


def _loaded_store(registry: Path) -> tuple[ModelStore, str]:
    """A store that has looked once: the champion is loaded. Returns it and its version."""
    store = ModelStore(registry)
    store.refresh()
    assert store.current is not None
    return store, store.current.version


def _publish_broken(registry: Path, version: str) -> Path:
    """A copy of the champion published as `version` with a corrupted ONNX model."""
    target = publish_copy(registry, version)
    flip_first_byte(target / ONNX_MODEL_FILE)
    return target


def test_refresh_loads_the_champion_then_follows_its_moves(registry: Path) -> None:
    """The first look loads the champion; after a promotion the next look swaps to it."""
    store = ModelStore(registry)
    first = store.refresh()
    champion = Registry(registry).alias(CHAMPION)
    assert _changes(first) == [(CHAMPION, champion, None)]
    assert first.refusals == ()
    assert first.changes[0].library_differences == ()
    publish_copy(registry, OTHER_VERSION)
    point_alias(registry, CHAMPION, OTHER_VERSION)
    assert _changes(store.refresh()) == [(CHAMPION, OTHER_VERSION, champion)]
    assert store.current is not None
    assert store.current.version == OTHER_VERSION
    assert store.refresh() == RefreshReport()


def test_a_challenger_is_loaded_beside_the_champion_and_unloaded_with_its_alias(
    registry: Path,
) -> None:
    """A challenger alias loads its model; removing the alias file unloads it, not the champion."""
    store, _ = _loaded_store(registry)
    champion = store.current
    publish_copy(registry, CHALLENGER_VERSION)
    point_alias(registry, CHALLENGER, CHALLENGER_VERSION)
    assert _changes(store.refresh()) == [(CHALLENGER, CHALLENGER_VERSION, None)]
    assert store.challenger is not None
    assert store.challenger.version == CHALLENGER_VERSION
    assert store.current is champion
    remove_alias(registry, CHALLENGER)
    assert _changes(store.refresh()) == [(CHALLENGER, None, CHALLENGER_VERSION)]
    assert store.challenger is None
    assert store.current is champion


def test_a_challenger_naming_the_champions_version_shares_its_model(registry: Path) -> None:
    """Both aliases on one version hold one `LoadedModel`, not two copies."""
    store, champion = _loaded_store(registry)
    point_alias(registry, CHALLENGER, champion)
    assert _changes(store.refresh()) == [(CHALLENGER, champion, None)]
    assert store.challenger is store.current


def test_promoting_the_challengers_version_reuses_its_model(registry: Path) -> None:
    """The champion moved to the challenger's version takes its loaded model, not a reload."""
    store, old = _loaded_store(registry)
    challenger_dir = publish_copy(registry, CHALLENGER_VERSION)
    point_alias(registry, CHALLENGER, CHALLENGER_VERSION)
    store.refresh()
    challenger = store.challenger
    flip_first_byte(challenger_dir / ONNX_MODEL_FILE)  # a reload would now be refused
    point_alias(registry, CHAMPION, CHALLENGER_VERSION)
    report = store.refresh()
    assert _changes(report) == [(CHAMPION, CHALLENGER_VERSION, old)]
    assert report.refusals == ()
    assert store.current is challenger
    assert store.challenger is challenger


def test_a_refused_champion_is_reported_once_while_the_old_one_decides(registry: Path) -> None:
    """The refusal comes in one report; later looks skip the unchanged version silently."""
    store, _ = _loaded_store(registry)
    model = store.current
    _publish_broken(registry, BROKEN_VERSION)
    point_alias(registry, CHAMPION, BROKEN_VERSION)
    report = store.refresh()
    assert report.changes == ()
    assert _refusals(report.refusals) == [(CHAMPION, BROKEN_VERSION, "checksum_mismatch")]
    assert "SHA-256" in report.refusals[0].detail
    assert store.current is model
    assert store.refresh() == RefreshReport()
    assert store.refresh() == RefreshReport()
    assert store.refusals == report.refusals


def test_a_refused_version_whose_files_change_is_checked_and_reported_again(
    registry: Path,
) -> None:
    """New content in a refused artifact gets a new check, and a new report if still unfit."""
    store, _ = _loaded_store(registry)
    broken = _publish_broken(registry, BROKEN_VERSION)
    point_alias(registry, CHAMPION, BROKEN_VERSION)
    store.refresh()
    _truncate_onnx_model(broken)
    report = store.refresh()
    assert _refusals(report.refusals) == [(CHAMPION, BROKEN_VERSION, "checksum_mismatch")]
    assert store.refresh() == RefreshReport()


def test_retry_refused_checks_and_reports_a_refused_version_again(registry: Path) -> None:
    """`retry_refused` forgets the refusals: the unchanged version is checked and reported."""
    store, _ = _loaded_store(registry)
    _publish_broken(registry, BROKEN_VERSION)
    point_alias(registry, CHAMPION, BROKEN_VERSION)
    first = store.refresh()
    assert store.refresh() == RefreshReport()
    assert store.refresh(retry_refused=True) == first


def _drop_native_model(artifact_dir: Path) -> None:
    (artifact_dir / NATIVE_MODEL_FILE).unlink()


def _truncate_onnx_model(artifact_dir: Path) -> None:
    path = artifact_dir / ONNX_MODEL_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("interrupt", "reason"),
    [(_drop_native_model, "missing_file"), (_truncate_onnx_model, "checksum_mismatch")],
)
def test_a_half_copied_version_is_refused_then_loaded_once_complete(
    registry: Path, interrupt: Tamper, reason: str
) -> None:
    """A copy still in progress is refused; when its files are complete it loads unasked."""
    store, old = _loaded_store(registry)
    target = publish_copy(registry, OTHER_VERSION)
    complete = {name: (target / name).read_bytes() for name in REQUIRED_FILES}
    interrupt(target)
    point_alias(registry, CHAMPION, OTHER_VERSION)
    assert _refusals(store.refresh().refusals) == [(CHAMPION, OTHER_VERSION, reason)]
    assert store.refresh() == RefreshReport()
    for name, content in complete.items():
        (target / name).write_bytes(content)
    assert _changes(store.refresh()) == [(CHAMPION, OTHER_VERSION, old)]
    assert store.refusals == ()


def test_a_standing_refusal_ends_when_the_alias_moves_back(registry: Path) -> None:
    """Rolled back to the version serving, the alias has nothing refused any more."""
    store, old = _loaded_store(registry)
    _publish_broken(registry, BROKEN_VERSION)
    point_alias(registry, CHAMPION, BROKEN_VERSION)
    store.refresh()
    point_alias(registry, CHAMPION, old)
    assert store.refresh() == RefreshReport()
    assert store.refusals == ()


@pytest.mark.parametrize("alias", ALIASES)
def test_an_alias_naming_an_unpublished_version_is_a_registry_error(
    registry: Path, alias: str
) -> None:
    """A version that is not in the registry is refused as "registry_error", once."""
    store, _ = _loaded_store(registry)
    champion, challenger = store.current, store.challenger
    point_alias(registry, alias, OTHER_VERSION)
    report = store.refresh()
    assert _refusals(report.refusals) == [(alias, OTHER_VERSION, "registry_error")]
    assert f"no version {OTHER_VERSION}" in report.refusals[0].detail
    assert (store.current, store.challenger) == (champion, challenger)
    assert store.refresh() == RefreshReport()


@pytest.mark.parametrize("alias", ALIASES)
def test_a_corrupt_alias_file_is_a_registry_error(registry: Path, alias: str) -> None:
    """An alias file that does not parse is refused without a version, once."""
    store, _ = _loaded_store(registry)
    champion = store.current
    Registry(registry).alias_path(alias).write_text("{not json", encoding="utf-8")
    report = store.refresh()
    assert _refusals(report.refusals) == [(alias, None, "registry_error")]
    assert "is corrupt" in report.refusals[0].detail
    assert store.current is champion
    assert store.refresh() == RefreshReport()


def test_the_champion_stays_when_its_alias_file_disappears(registry: Path) -> None:
    """Without a champion alias the store keeps the model deciding: nothing is unloaded."""
    store, _ = _loaded_store(registry)
    champion = store.current
    remove_alias(registry, CHAMPION)
    assert store.refresh() == RefreshReport()
    assert store.current is champion


def _promoting_during_load(registry: Path, *, checked: str, then: str) -> Callable[..., Any]:
    """`load_model`, with the champion alias moved to `then` while `checked` is loaded: a
    second promotion made while a load is under way."""

    def load(artifact_dir: Path, **options: Any) -> LoadedModel:
        if artifact_dir.name == checked:
            point_alias(registry, CHAMPION, then)
        return load_model(artifact_dir, **options)

    return load


def test_a_promotion_made_during_a_refused_check_is_followed_at_the_next_look(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal names the version checked, so the version promoted meanwhile still loads."""
    store, _ = _loaded_store(registry)
    _publish_broken(registry, BROKEN_VERSION)
    publish_copy(registry, OTHER_VERSION)
    point_alias(registry, CHAMPION, BROKEN_VERSION)
    promoting = _promoting_during_load(registry, checked=BROKEN_VERSION, then=OTHER_VERSION)
    monkeypatch.setattr(model_store, "load_model", promoting)
    report = store.refresh()
    assert _refusals(report.refusals) == [(CHAMPION, BROKEN_VERSION, "checksum_mismatch")]
    assert [change.version for change in store.refresh().changes] == [OTHER_VERSION]
