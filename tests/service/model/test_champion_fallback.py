"""Tests for the store's champion fallback: a store with no champion yet whose champion is
refused serves, under the champion role, the newest earlier champion of the registry's
history that verifies, and keeps following the alias. On copies of the trained registry;
aliases are moved with the registry's own writer, so the history is the one operators make.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from service.model import store as model_store
from service.model.artifact import MANIFEST_FILE, ONNX_MODEL_FILE
from service.model.loading import LoadedModel, load_model
from service.model.registry import CHALLENGER, CHAMPION, REGISTRY_ERROR, Registry
from service.model.store import ChampionFallback, ModelStore, RefreshReport, earlier_champions
from service.model.watcher import ModelWatcher
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.process_metrics import sample_value
from tests.service.registry_copies import copy_registry, point_alias, publish_copy
from training.registry.publishing import promote, refuse, rollback, sign
from training.registry.signing import SigningKey

FIRST = "20990101T000000Z-0000000a"
SECOND = "20990102T000000Z-0000000b"
THIRD = "20990103T000000Z-0000000c"
NEVER_CHAMPION = "20990109T000000Z-0000000f"  # the newest of all: never the fallback


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the trained registry: its champion, promoted by training."""
    return copy_registry(trained_model, tmp_path / "registry")


def _promote_copies(registry: Path, *versions: str) -> None:
    """Publish copies of the champion as `versions`, then promote each in turn."""
    for version in versions:
        publish_copy(registry, version)
    for version in versions:
        promote(registry, version, reason=f"test: {version}")


def _break(registry: Path, version: str) -> None:
    """Corrupt the version's ONNX model: refused as "checksum_mismatch"."""
    flip_first_byte(Registry(registry).versions_dir / version / ONNX_MODEL_FILE)


def _served(store: ModelStore) -> str | None:
    return None if store.current is None else store.current.version


def _fallback(report: RefreshReport) -> ChampionFallback:
    assert report.fallback is not None, report
    return report.fallback


def _passed_over(fallback: ChampionFallback) -> list[tuple[str | None, str]]:
    return [(refusal.version, refusal.reason) for refusal in fallback.passed_over]


def test_a_refused_champion_is_replaced_by_the_newest_earlier_champion(registry: Path) -> None:
    """Champions T (the trained version), FIRST, SECOND, THIRD in turn, THIRD broken: SECOND
    serves as champion, the alias file is left as it was, and the refusal stands for THIRD."""
    _promote_copies(registry, FIRST, SECOND, THIRD)
    _break(registry, THIRD)
    alias_file = Registry(registry).alias_path(CHAMPION)
    alias_before = alias_file.read_bytes()

    store = ModelStore(registry)
    report = store.refresh_or_fall_back()

    fallback = _fallback(report)
    assert (fallback.refused.version, fallback.refused.reason) == (THIRD, "checksum_mismatch")
    assert fallback.change is not None
    assert (fallback.change.alias, fallback.change.version) == (CHAMPION, SECOND)
    assert fallback.passed_over == ()
    assert _served(store) == SECOND
    assert [(r.alias, r.version) for r in report.refusals] == [(CHAMPION, THIRD)]
    assert [(r.alias, r.version) for r in store.refusals] == [(CHAMPION, THIRD)]
    assert alias_file.read_bytes() == alias_before


def test_earlier_champions_that_fail_are_passed_over_newest_first(
    registry: Path, trained_model: TrainedModel
) -> None:
    """Each earlier champion that fails its checks is named with its reason; the first one
    that verifies serves."""
    _promote_copies(registry, FIRST, SECOND, THIRD)
    _break(registry, THIRD)
    _break(registry, SECOND)
    (Registry(registry).versions_dir / FIRST / MANIFEST_FILE).unlink()

    store = ModelStore(registry)
    fallback = _fallback(store.refresh_or_fall_back())

    assert fallback.change is not None
    assert fallback.change.version == trained_model.version
    assert _passed_over(fallback) == [(SECOND, "checksum_mismatch"), (FIRST, "missing_manifest")]


def test_a_version_that_was_never_champion_is_never_served_in_its_place(
    registry: Path, trained_model: TrainedModel
) -> None:
    """Sound versions that were only published, only the challenger, or refused as champion
    are no fallback: with every champion broken, nothing serves."""
    publish_copy(registry, NEVER_CHAMPION)
    publish_copy(registry, FIRST)
    promote(registry, FIRST, alias=CHALLENGER, reason="test: a challenger only")
    refuse(registry, NEVER_CHAMPION, reason="test: a gate failed")
    _promote_copies(registry, SECOND)
    _break(registry, SECOND)
    _break(registry, trained_model.version)

    store = ModelStore(registry)
    fallback = _fallback(store.refresh_or_fall_back())

    assert fallback.change is None
    assert _passed_over(fallback) == [(trained_model.version, "checksum_mismatch")]
    assert _served(store) is None
    assert store.challenger is not None  # the challenger alias is followed as ever
    assert store.challenger.version == FIRST


def test_a_version_rolled_back_from_is_no_fallback(
    registry: Path, trained_model: TrainedModel
) -> None:
    """T, FIRST, SECOND, then a rollback to FIRST, which breaks: SECOND was rolled back for a
    reason, so T serves, as a second `fraud-train registry rollback` would choose."""
    _promote_copies(registry, FIRST, SECOND)
    assert rollback(registry, reason="test: false positives up") == FIRST
    _break(registry, FIRST)

    store = ModelStore(registry)
    fallback = _fallback(store.refresh_or_fall_back())

    assert fallback.change is not None
    assert fallback.change.version == trained_model.version
    assert fallback.passed_over == ()


def test_an_earlier_champion_must_be_signed_as_any_version_served(
    registry: Path, trained_model: TrainedModel
) -> None:
    """With a trusted key, an unsigned earlier champion is passed over ("unsigned") like
    any refused one, and the fallback names the key that signed the version it serves."""
    key = SigningKey.of(Ed25519PrivateKey.generate())
    _promote_copies(registry, FIRST, SECOND)
    for version in (trained_model.version, SECOND):
        sign(registry, version, key)
    _break(registry, SECOND)

    store = ModelStore(registry, signatures=key.policy)
    fallback = _fallback(store.refresh_or_fall_back())

    assert _passed_over(fallback) == [(FIRST, "unsigned")]
    assert fallback.change is not None
    assert (fallback.change.version, fallback.change.signer) == (trained_model.version, key.key_id)


def test_an_unreadable_champion_alias_falls_back_to_the_newest_champion(registry: Path) -> None:
    """A corrupt alias names no version: the newest champion of the history serves."""
    _promote_copies(registry, FIRST, SECOND)
    Registry(registry).alias_path(CHAMPION).write_text("{not json", encoding="utf-8")

    store = ModelStore(registry)
    fallback = _fallback(store.refresh_or_fall_back())

    assert (fallback.refused.version, fallback.refused.reason) == (None, REGISTRY_ERROR)
    assert _served(store) == SECOND


def test_a_corrupt_history_leaves_nothing_to_fall_back_to(registry: Path) -> None:
    """Without a readable history there is no earlier champion: the reason is reported."""
    _promote_copies(registry, FIRST)
    _break(registry, FIRST)
    with Registry(registry).history_path.open("a", encoding="utf-8") as history:
        history.write("{not json\n")

    store = ModelStore(registry)
    fallback = _fallback(store.refresh_or_fall_back())

    assert fallback.change is None
    assert _passed_over(fallback) == [(None, REGISTRY_ERROR)]
    assert "history.jsonl line" in fallback.passed_over[0].detail
    assert _served(store) is None


def test_a_champion_already_serving_is_kept_rather_than_replaced_by_a_fallback(
    registry: Path, trained_model: TrainedModel
) -> None:
    """A refusal while a champion serves changes nothing: the fallback is for a start."""
    store = ModelStore(registry)
    store.refresh_or_fall_back()
    _promote_copies(registry, FIRST)
    _break(registry, FIRST)

    report = store.refresh_or_fall_back()

    assert report.fallback is None
    assert [(r.version, r.reason) for r in report.refusals] == [(FIRST, "checksum_mismatch")]
    assert _served(store) == trained_model.version


def _repair(registry: Path, version: str) -> None:
    _break(registry, version)  # the flip undone: the files are as published again


@pytest.mark.parametrize("fix", ["files_repaired", "alias_moved"])
def test_the_champion_is_served_as_soon_as_it_verifies(registry: Path, fix: str) -> None:
    """While a fallback serves, the alias is still followed: repaired files, or the alias
    moved to a sound version, are swapped in at the next look."""
    publish_copy(registry, THIRD)
    _promote_copies(registry, FIRST, SECOND)
    _break(registry, SECOND)
    store = ModelStore(registry)
    store.refresh_or_fall_back()
    assert _served(store) == FIRST
    assert store.refresh_or_fall_back() == RefreshReport()

    if fix == "files_repaired":
        _repair(registry, SECOND)
        expected = SECOND
    else:
        promote(registry, THIRD, reason="test: the fix")
        expected = THIRD
    report = store.refresh_or_fall_back()

    assert [(c.alias, c.version, c.previous) for c in report.changes] == [
        (CHAMPION, expected, FIRST)
    ]
    assert report.fallback is None
    assert _served(store) == expected
    assert store.refusals == ()


def test_earlier_champions_are_tried_once_per_refusal_and_again_on_retry(
    registry: Path, trained_model: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing that verifies, a look that reports no new refusal loads nothing (polls
    stay cheap); a retry of the refused versions tries the earlier champions again."""
    _promote_copies(registry, FIRST)
    _break(registry, FIRST)
    _break(registry, trained_model.version)
    loaded: list[str] = []

    def counting_load(artifact_dir: Path, **options: Any) -> LoadedModel:
        loaded.append(artifact_dir.name)
        return load_model(artifact_dir, **options)

    monkeypatch.setattr(model_store, "load_model", counting_load)
    store = ModelStore(registry)

    store.refresh_or_fall_back()
    assert loaded == [FIRST, trained_model.version]
    assert store.refresh_or_fall_back() == RefreshReport()
    assert loaded == [FIRST, trained_model.version]
    retried = store.refresh_or_fall_back(retry_refused=True)
    assert loaded == [FIRST, trained_model.version] * 2
    assert _fallback(retried).change is None


def test_earlier_champions_are_listed_newest_first_once_each(
    registry: Path, trained_model: TrainedModel
) -> None:
    """The order a fallback tries: back through the champion's lineage from the refused
    version, each version once; all of the lineage when the refused version is not in it."""
    _promote_copies(registry, FIRST, SECOND)
    promote(registry, FIRST, reason="test: FIRST again")
    promote(registry, SECOND, reason="test: SECOND again")
    trained = trained_model.version
    history = Registry(registry)

    assert earlier_champions(history, SECOND) == [FIRST, trained]
    assert earlier_champions(history, FIRST) == [SECOND, trained]
    assert earlier_champions(history, None) == [SECOND, FIRST, trained]
    assert earlier_champions(history, NEVER_CHAMPION) == [SECOND, FIRST, trained]


# --- the watcher: what the fallback logs, exports and announces ------------------------------


def _look(watcher: ModelWatcher, *, retry_refused: bool = False) -> list[MutableMapping[str, Any]]:
    """One look at the registry; the log lines it wrote."""
    with capture_logs() as lines:
        asyncio.run(watcher.refresh(retry_refused=retry_refused))
    return lines


def _lines(lines: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [line for line in lines if line["event"] == event]


def _sample(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


def test_a_fallback_is_logged_and_exported_as_the_champion(
    registry: Path, trained_model: TrainedModel
) -> None:
    """The refusal is logged and counted as any champion refusal; the version served instead
    is the champion of fraud_model_info, and `champion_fallback` names both."""
    _promote_copies(registry, FIRST)
    _break(registry, FIRST)
    refusals = _sample("fraud_model_refusals_total", alias=CHAMPION, reason="checksum_mismatch")
    watcher = ModelWatcher(ModelStore(registry))

    lines = _look(watcher)

    (refused,) = _lines(lines, "model_refused")
    assert (refused["version"], refused["reason"]) == (FIRST, "checksum_mismatch")
    (fallback,) = _lines(lines, "champion_fallback")
    assert fallback["refused_version"] == FIRST
    assert fallback["reason"] == "checksum_mismatch"
    assert fallback["version"] == trained_model.version
    assert fallback["log_level"] == "warning"
    assert _lines(lines, "cannot_serve_yet") == []
    served = _sample("fraud_model_info", alias=CHAMPION, version=trained_model.version)
    assert served == 1
    assert _sample("fraud_model_info", alias=CHAMPION, version=FIRST) == 0
    after = _sample("fraud_model_refusals_total", alias=CHAMPION, reason="checksum_mismatch")
    assert after - refusals == 1


def test_with_nothing_to_serve_the_watcher_says_so_once_and_announces_the_first_champion(
    registry: Path, trained_model: TrainedModel
) -> None:
    """Every champion broken: `cannot_serve_yet` once, not on every look, and again only
    for a new reason; the first champion that loads is announced once, later swaps not."""
    _promote_copies(registry, FIRST)
    _break(registry, FIRST)
    _break(registry, trained_model.version)
    watcher = ModelWatcher(ModelStore(registry))
    announced: list[str] = []

    async def announce(model: LoadedModel) -> None:
        announced.append(model.version)

    watcher.on_first_champion(announce)

    (waiting,) = _lines(_look(watcher), "cannot_serve_yet")
    assert (waiting["reason"], waiting["version"]) == ("checksum_mismatch", FIRST)
    assert waiting["passed_over"] == [f"{trained_model.version}: checksum_mismatch"]
    assert _lines(_look(watcher) + _look(watcher), "cannot_serve_yet") == []
    publish_copy(registry, SECOND)  # a copy of FIRST, broken as FIRST is
    point_alias(registry, CHAMPION, SECOND)
    (again,) = _lines(_look(watcher), "cannot_serve_yet")
    assert again["version"] == SECOND
    assert announced == []

    _repair(registry, FIRST)
    point_alias(registry, CHAMPION, FIRST)
    _look(watcher)
    assert announced == [FIRST]
    _repair(registry, trained_model.version)
    point_alias(registry, CHAMPION, trained_model.version)
    _look(watcher)
    assert watcher.store.current is not None
    assert watcher.store.current.version == trained_model.version
    assert announced == [FIRST]


def test_without_a_champion_alias_the_watcher_waits_for_the_first_promotion(
    tmp_path: Path, trained_model: TrainedModel
) -> None:
    """An empty registry: `cannot_serve_yet` once ("no_champion"); a first promotion is
    served and announced at the next look."""
    registry = tmp_path / "empty"
    watcher = ModelWatcher(ModelStore(registry))
    announced: list[str] = []

    async def announce(model: LoadedModel) -> None:
        announced.append(model.version)

    watcher.on_first_champion(announce)
    (waiting,) = _lines(_look(watcher), "cannot_serve_yet")
    assert waiting["reason"] == "no_champion"
    assert "has no champion" in waiting["detail"]
    assert _lines(_look(watcher), "cannot_serve_yet") == []

    source = Registry(trained_model.registry).artifact_dir(trained_model.version)
    shutil.copytree(source, Registry(registry).versions_dir / trained_model.version)
    promote(registry, trained_model.version, reason="test: the first champion")
    _look(watcher)
    assert announced == [trained_model.version]
