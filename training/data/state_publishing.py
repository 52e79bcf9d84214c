"""A seeded feature state published at a directory as the model registry publishes a
version: built aside, synced, then renamed into place.

A server starting meanwhile finds at the target the old store or the complete new one,
never a half-built one: the store is built in a hidden sibling directory (same file
system, so a rename moves it whole), closed, which syncs it to disk, and only then renamed
onto the target. An absent or empty target takes one rename. A store already there is
kept unless `replace`: a directory cannot be renamed over a non-empty one, so the old store
is renamed aside, the new one renamed in, and the old one deleted; between those two
renames the target is briefly absent. Stop the servers using a store before replacing it:
they keep the old file open and go on writing to it.

`replace` only ever deletes a feature state store: a directory holding any other file is
refused, so that a mistyped path cannot delete someone's files.

A failed or interrupted build deletes its sibling directory; a build killed outright
leaves it (`.<name>.building-<id>`) beside the target, never at it.

A Redis store (`build_state_redis`) is replayed in memory, then written in pipelined
batches (`service.state.redis_seeding`): not atomic, so no server may use it meanwhile.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb
import pandas as pd

from service.config.settings import StateSettings
from service.features import EntityKind, FeatureConfig, MemoryStore, state_identity
from service.state.errors import StateStoreError
from service.state.lmdb_store import LmdbStore
from service.state.opening import open_state
from service.state.redis_seeding import RedisTarget
from training.data.seeding import seed_state
from training.durable_files import fsync_path, make_dir

_STORE_FILES = frozenset({"data.mdb", "lock.mdb"})


class StateTargetError(Exception):
    """The target directory cannot take a new store; the message says what to do."""


@dataclass(frozen=True)
class SeededState:
    """What a build replayed, and what the published store holds."""

    replayed: int
    cards: int
    terminals: int
    merchants: int
    transactions: int
    stored_bytes: int
    """The bytes the store's files take on disk (LMDB), or the Redis server's memory in use."""


def check_target(target: Path, *, replace: bool) -> None:
    """StateTargetError unless a store may be published at `target`: absent, an empty
    directory, or (with `replace`) a directory holding only a store."""
    if target.exists() and not target.is_dir():
        raise StateTargetError(f"{target} exists and is not a directory")
    found = _contents(target)
    if not found:
        return
    if not replace:
        raise StateTargetError(
            f"{target} is not empty: choose another directory, or replace the store in it "
            "(--replace)"
        )
    others = sorted(found - _STORE_FILES)
    if others:
        raise StateTargetError(
            f"{target} holds files other than a feature state store ({', '.join(others[:3])}): "
            "refusing to replace it"
        )


def build_state_directory(
    frame: pd.DataFrame,
    config: FeatureConfig,
    target: Path,
    settings: StateSettings,
    *,
    replace: bool = False,
    tokenize_card: Callable[[str], str] | None = None,
    progress: bool = False,
) -> SeededState:
    """Seed an LMDB store (bounded by `settings`) from `frame` with `config`'s features,
    and publish it at `target` (see the module's docstring)."""
    target = target.resolve()  # a name to put the sibling beside, even for "." or ".."
    check_target(target, replace=replace)
    make_dir(target.parent)
    staging = target.with_name(f".{target.name}.building-{uuid.uuid4().hex}")
    try:
        building = settings.model_copy(update={"backend": "lmdb", "path": staging})
        seeded = _build(frame, config, building, tokenize_card, progress)
        _publish(staging, target, replace=replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return seeded


def check_redis_target(target: RedisTarget, *, replace: bool) -> None:
    """StateTargetError unless a store may be written at `target`: a database holding no
    feature state, or any with `replace` (its feature state is deleted first)."""
    if not replace and target.holds_state():
        raise StateTargetError(
            f"the Redis at {target.shown} holds feature state: choose another database, or "
            "replace the state in it (--replace) once no server uses it"
        )


def build_state_redis(
    frame: pd.DataFrame,
    config: FeatureConfig,
    target: RedisTarget,
    *,
    replace: bool = False,
    tokenize_card: Callable[[str], str] | None = None,
    progress: bool = False,
) -> SeededState:
    """Seed a Redis store at `target` from `frame` with `config`'s features: replayed in
    memory by the same engine, then every record kept written in pipelined batches."""
    check_redis_target(target, replace=replace)  # before the long part, not after
    horizon = config.state_horizon_seconds
    memory = MemoryStore(horizon_seconds=horizon)
    replayed = seed_state(frame, config, memory, tokenize_card=tokenize_card, progress=progress)
    transactions = list(memory.held_transactions())
    # What idled past the horizon since the store last dropped it would be read as new.
    oldest = max((record.transaction.timestamp for record in transactions), default=0) - horizon
    entities = [
        (kind, key, record)
        for kind in EntityKind
        for key, record in memory.held(kind)
        if record[0] >= oldest
    ]
    transactions = [record for record in transactions if record.transaction.timestamp >= oldest]
    if replace:
        target.clear()
    else:
        check_redis_target(target, replace=False)  # again: another build may have begun
    target.write(state_identity(config), horizon, entities, transactions)
    kept = Counter(kind for kind, _, _ in entities)
    return SeededState(
        replayed=replayed,
        cards=kept[EntityKind.CARD],
        terminals=kept[EntityKind.TERMINAL],
        merchants=kept[EntityKind.MERCHANT],
        transactions=len(transactions),
        stored_bytes=target.used_memory(),
    )


def _build(
    frame: pd.DataFrame,
    config: FeatureConfig,
    settings: StateSettings,
    tokenize_card: Callable[[str], str] | None,
    progress: bool,
) -> SeededState:
    """Seed the store `settings` name, count what it keeps, and close (sync) it."""
    store = open_state(settings, config)
    try:
        bulk = store.bulk() if isinstance(store, LmdbStore) else contextlib.nullcontext()
        with bulk:  # the store is not shared yet: commit in batches, not per transaction
            replayed = seed_state(
                frame, config, store, tokenize_card=tokenize_card, progress=progress
            )
        kept = {kind: store.records(kind) for kind in EntityKind}
        transactions = store.records()
    except lmdb.MapFullError:
        raise StateStoreError(
            f"the state outgrew state.max_bytes ({settings.max_bytes} bytes): raise it "
            "(FRAUD_STATE__MAX_BYTES), or lower max_entities and max_transactions"
        ) from None
    finally:
        store.close()
    return SeededState(
        replayed=replayed,
        cards=kept[EntityKind.CARD],
        terminals=kept[EntityKind.TERMINAL],
        merchants=kept[EntityKind.MERCHANT],
        transactions=transactions,
        stored_bytes=sum(_disk_bytes(path) for path in settings.path.iterdir()),
    )


def _disk_bytes(path: Path) -> int:
    """What the file takes on disk: with `state.writemap` LMDB's data file is as large as
    its map, the part past its pages a hole."""
    status = path.stat()
    return min(status.st_size, status.st_blocks * 512)


def _publish(staging: Path, target: Path, *, replace: bool) -> None:
    """Rename the complete store at `staging` onto `target`, the old store aside first."""
    check_target(target, replace=replace)  # again: another build may have published since
    aside = None
    if _contents(target):
        aside = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex}")
        target.rename(aside)
    try:
        staging.replace(target)
    except OSError:
        if aside is not None:
            aside.rename(target)
        raise
    fsync_path(target.parent)
    if aside is not None:
        shutil.rmtree(aside)


def _contents(directory: Path) -> set[str]:
    """Names of the entries in `directory`; none when it does not exist."""
    if not directory.is_dir():
        return set()
    return {entry.name for entry in directory.iterdir()}
