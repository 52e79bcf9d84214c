"""Tests for service.model.watcher: hot reload as the server runs it, with its refresh reports,
metrics and overview, on copies of the trained registry.

Coroutines run under `asyncio.run` in the test. Metrics live on the process-wide registry:
counters are compared before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
from structlog.testing import capture_logs

from service.model.artifact import MANIFEST_FILE, ONNX_MODEL_FILE, read_manifest
from service.model.registry import CHALLENGER, CHAMPION, Registry
from service.model.store import ModelStore, RefreshReport
from service.model.watcher import ModelWatcher
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.process_metrics import sample_value
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
UNREADABLE_VERSION = "20990105T000000Z-fedcba98"
POLL_SECONDS = 0.05
WAIT_SECONDS = 30.0  # generous: the machine is shared; a pass takes one poll and one load


@pytest.fixture
def registry(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the trained registry, champion included."""
    return copy_registry(trained_model, tmp_path / "registry")


def _refresh(watcher: ModelWatcher, *, retry_refused: bool = False) -> RefreshReport:
    return asyncio.run(watcher.refresh(retry_refused=retry_refused))


def _sample(name: str, **labels: str) -> float | None:
    return sample_value(name, labels)


def _count(name: str, **labels: str) -> float:
    return _sample(name, **labels) or 0.0


def _served(watcher: ModelWatcher) -> str:
    model = watcher.store.current
    assert model is not None
    return model.version


async def _until(condition: Callable[[], bool]) -> None:
    """Wait, polling, until `condition` holds; fail after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the watcher did not get there in time"
        await asyncio.sleep(POLL_SECONDS / 5)


def _while_running(
    watcher: ModelWatcher, scenario: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run `scenario` while `watcher.run(POLL_SECONDS)` polls in the same event loop."""

    async def main() -> None:
        task = asyncio.create_task(watcher.run(POLL_SECONDS))
        try:
            await scenario()
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_a_swap_moves_the_model_info_series_and_counts_the_load(registry: Path) -> None:
    """fraud_model_info is 1 for the version served; a swap drops the previous one's series."""
    watcher = ModelWatcher(ModelStore(registry))
    loads = _count("fraud_model_loads_total", alias=CHAMPION)
    _refresh(watcher)
    first = _served(watcher)
    assert _sample("fraud_model_info", alias=CHAMPION, version=first) == 1
    publish_copy(registry, OTHER_VERSION)
    point_alias(registry, CHAMPION, OTHER_VERSION)
    _refresh(watcher)
    assert _sample("fraud_model_info", alias=CHAMPION, version=OTHER_VERSION) == 1
    assert _sample("fraud_model_info", alias=CHAMPION, version=first) is None
    assert _count("fraud_model_loads_total", alias=CHAMPION) - loads == 2


def test_each_refresh_reports_serves_and_exports_its_changes(registry: Path) -> None:
    """Each refresh reports the changes it made, the challenger's included, in order; the
    store serves them and fraud_model_info follows each, a retired alias losing its series."""
    store = ModelStore(registry)
    watcher = ModelWatcher(store)
    loaded = _refresh(watcher)
    champion = _served(watcher)
    assert _sample("fraud_model_info", alias=CHAMPION, version=champion) == 1
    publish_copy(registry, CHALLENGER_VERSION)
    point_alias(registry, CHALLENGER, CHALLENGER_VERSION)
    added = _refresh(watcher)
    assert store.challenger is not None
    assert store.challenger.version == CHALLENGER_VERSION
    assert _sample("fraud_model_info", alias=CHALLENGER, version=CHALLENGER_VERSION) == 1
    remove_alias(registry, CHALLENGER)
    retired = _refresh(watcher)
    assert store.challenger is None
    assert _sample("fraud_model_info", alias=CHALLENGER, version=CHALLENGER_VERSION) is None
    assert [
        [(change.alias, change.version) for change in report.changes]
        for report in (loaded, added, retired)
    ] == [
        [(CHAMPION, champion)],
        [(CHALLENGER, CHALLENGER_VERSION)],
        [(CHALLENGER, None)],
    ]
    assert _served(watcher) == champion


def test_refusals_are_counted_by_alias_and_reason(registry: Path) -> None:
    """A refusal counts once however often it is seen, and again when a reload retries it."""
    watcher = ModelWatcher(ModelStore(registry))
    _refresh(watcher)
    flip_first_byte(publish_copy(registry, BROKEN_VERSION) / ONNX_MODEL_FILE)
    point_alias(registry, CHAMPION, BROKEN_VERSION)
    point_alias(registry, CHALLENGER, OTHER_VERSION)  # never published
    series = [
        ("fraud_model_refusals_total", {"alias": CHAMPION, "reason": "checksum_mismatch"}),
        ("fraud_model_refusals_total", {"alias": CHALLENGER, "reason": "registry_error"}),
    ]
    before = [_count(name, **labels) for name, labels in series]

    def moved() -> list[float]:
        return [
            _count(name, **labels) - was for (name, labels), was in zip(series, before, strict=True)
        ]

    _refresh(watcher)
    _refresh(watcher)
    assert moved() == [1, 1]
    asyncio.run(watcher.reload())
    assert moved() == [2, 2]


def test_the_champions_library_differences_are_exported(registry: Path) -> None:
    """A minor difference is a series while that champion serves, and goes with it."""
    publish_copy(registry, OTHER_VERSION)
    champion_dir = Registry(registry).artifact_dir(Registry(registry).alias(CHAMPION) or "")
    serving = f"{onnxruntime.__version__.split('.')[0]}.999.0"
    edit_manifest(champion_dir, lambda manifest: manifest["libraries"].update(onnxruntime=serving))
    watcher = ModelWatcher(ModelStore(registry))
    difference = {"library": "onnxruntime", "severity": "minor"}
    _refresh(watcher)
    assert _sample("fraud_model_library_difference", **difference) == 1
    point_alias(registry, CHAMPION, OTHER_VERSION)
    _refresh(watcher)
    assert _sample("fraud_model_library_difference", **difference) is None


def test_run_picks_up_a_promotion_by_itself(registry: Path) -> None:
    """While `run` polls, a promotion in the registry is served without anyone asking."""
    watcher = ModelWatcher(ModelStore(registry))
    _refresh(watcher)
    publish_copy(registry, OTHER_VERSION)

    async def promote() -> None:
        point_alias(registry, CHAMPION, OTHER_VERSION)
        await _until(lambda: _served(watcher) == OTHER_VERSION)

    _while_running(watcher, promote)


class _UnreadableOnce(ModelStore):
    """A store whose first look fails as an unreadable registry mount would."""

    failed = False

    def refresh(self, *, retry_refused: bool = False) -> RefreshReport:
        if not self.failed:
            self.failed = True
            raise OSError("registry mount unreadable")
        return super().refresh(retry_refused=retry_refused)


def test_run_keeps_looking_after_a_look_fails(registry: Path) -> None:
    """A look that raises is logged, and the next look loads the champion all the same."""
    store = _UnreadableOnce(registry)
    watcher = ModelWatcher(store)

    async def wait_for_champion() -> None:
        await _until(lambda: store.current is not None)

    _while_running(watcher, wait_for_champion)
    assert store.failed


@pytest.mark.parametrize("poll_seconds", [0, -1.0])
def test_run_needs_a_positive_poll_interval(registry: Path, poll_seconds: float) -> None:
    """A zero or negative poll interval is a ValueError, not a busy loop."""
    watcher = ModelWatcher(ModelStore(registry))
    with pytest.raises(ValueError, match="poll_seconds must be positive"):
        asyncio.run(watcher.run(poll_seconds))


def test_the_overview_lists_versions_aliases_and_what_is_served(registry: Path) -> None:
    """All versions with their aliases and manifest details, what is served, the refusals."""
    watcher = ModelWatcher(ModelStore(registry))
    _refresh(watcher)
    champion = _served(watcher)
    publish_copy(registry, CHALLENGER_VERSION)
    point_alias(registry, CHALLENGER, CHALLENGER_VERSION)
    _refresh(watcher)
    flip_first_byte(publish_copy(registry, BROKEN_VERSION) / ONNX_MODEL_FILE)
    point_alias(registry, CHALLENGER, BROKEN_VERSION)
    _refresh(watcher)
    unreadable = publish_copy(registry, UNREADABLE_VERSION)
    (unreadable / MANIFEST_FILE).write_text("{", encoding="utf-8")

    overview = watcher.overview()

    assert (overview.serving_version, overview.challenger_version) == (
        champion,
        CHALLENGER_VERSION,
    )
    assert [(version.version, version.aliases) for version in overview.versions] == [
        (champion, (CHAMPION,)),
        (CHALLENGER_VERSION, ()),
        (BROKEN_VERSION, (CHALLENGER,)),
        (UNREADABLE_VERSION, ()),
    ]
    manifest = read_manifest(Registry(registry).artifact_dir(champion))
    served = overview.versions[0]
    assert served.created_at == manifest.created_at
    assert served.test_metrics == manifest.metrics["test"]
    assert served.parent_version == manifest.parent_version
    assert (overview.versions[-1].created_at, overview.versions[-1].test_metrics) == (None, {})
    assert [(refusal.alias, refusal.version, refusal.reason) for refusal in overview.refusals] == [
        (CHALLENGER, BROKEN_VERSION, "checksum_mismatch")
    ]


def test_a_registry_gone_and_back_is_logged_once_each_and_exported(
    registry: Path, tmp_path: Path
) -> None:
    """Found by `fraud-bench chaos --scenario registry`: a registry renamed away changed
    nothing served (a missing alias leaves the champion) and said nothing. Now its loss and
    return are logged once each and exported, and the champion serves throughout."""
    watcher = ModelWatcher(ModelStore(registry))
    elsewhere = tmp_path / "moved-away"
    with capture_logs() as lines:
        _refresh(watcher)
        assert _sample("fraud_model_registry_readable") == 1.0
        registry.rename(elsewhere)
        _refresh(watcher)
        _refresh(watcher)
        assert _sample("fraud_model_registry_readable") == 0.0
        served_meanwhile = _served(watcher)
        elsewhere.rename(registry)
        _refresh(watcher)
    events = [line["event"] for line in lines if line["event"].startswith("registry_")]
    assert events == ["registry_unreadable", "registry_found_again"]
    assert _sample("fraud_model_registry_readable") == 1.0
    assert served_meanwhile == _served(watcher)
