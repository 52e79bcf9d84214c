"""Hot reload: the running server follows the registry's aliases without a restart.

`ModelWatcher.run` looks at the registry every `poll_seconds` (reading two small alias
files), and `refresh` does one look on demand (the admin `Reload` RPC, SIGHUP). Each look
runs `ModelStore.refresh` on a worker thread, so every check and the warm-up of a new model
happen off the event loop that answers requests; the swap itself is one reference
assignment (see `ModelStore`). Looks never overlap.

Polling rather than filesystem notifications: it works the same on every filesystem a
registry lives on (local disk, NFS, a Kubernetes volume), where inotify does not, and a
look costs so little that a one-second poll is cheaper than the machinery to avoid it.
Writers rename complete files into place (`training.registry.publishing`), so a look sees
an alias before or after a move, and a version directory complete or not at all.

Every change and refusal is logged and counted (`service.observability.metrics`):
"model_swapped" and `fraud_model_loads_total`, "model_refused" and
`fraud_model_refusals_total{reason}`, the champion's library differences from training in
`fraud_model_library_difference`. A refusal never touches health: the model already
serving goes on serving.

The same looks follow the rule and list aliases (`RuleStore.refresh`, after the models):
"rules_swapped" and `fraud_rules_loads_total`, "rules_refused" and
`fraud_rules_refusals_total{kind, reason}`; a refused rule set or list leaves the one loaded
before deciding.

With no champion serving yet (a start), a refused champion is replaced by the newest
earlier champion that verifies (`ModelStore.refresh_or_fall_back`), logged as
"champion_fallback" and exported as the champion it serves as. While nothing serves, the
reason is logged once ("cannot_serve_yet"), not on every poll, and the first champion a
look serves is announced to the listeners of `on_first_champion` (the server turns its
health SERVING then).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import structlog

from service.model.loading import LoadedModel
from service.model.overview import ModelsOverview, models_overview
from service.model.registry import CHAMPION, no_champion
from service.model.rule_store import RuleReport, RuleStore
from service.model.rule_writer import SignedListsError, change_list
from service.model.store import (
    AliasChange,
    ChampionFallback,
    ModelStore,
    RefreshReport,
    Refusal,
)
from service.observability.metrics import (
    MODEL_LOAD_SECONDS,
    MODEL_LOADS,
    REGISTRY_READABLE,
    count_refusal,
    set_library_differences,
    set_serving_model,
)
from service.observability.rule_metrics import RULE_LOADS, RULE_REFUSALS

LOADING_SWITCH_INTERVAL_SECONDS = 0.0005

FirstChampionListener = Callable[[LoadedModel], Awaitable[None]]

_log = structlog.get_logger(__name__)


class ModelWatcher:
    """Keeps a `ModelStore` following the registry. Event-loop thread only."""

    def __init__(self, store: ModelStore, rules: RuleStore | None = None) -> None:
        """Keep `store`, and `rules` if given, following the registry."""
        self.store = store
        self.rules = rules
        self._lock = asyncio.Lock()
        self._first_champion_listeners: list[FirstChampionListener] = []
        self._champion_announced = False
        # Why nothing serves, as last logged (a refusal, or None: no champion alias), so that
        # "cannot_serve_yet" is not repeated on every poll.
        self._not_serving_reported: tuple[Refusal | None] | None = None
        # Whether the registry's directory was there at the last look (None: not looked
        # yet), so that its loss and return are logged once each.
        self._registry_found: bool | None = None

    async def run(self, poll_seconds: float) -> None:
        """Look at the registry every `poll_seconds` until cancelled."""
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        while True:
            await asyncio.sleep(poll_seconds)
            # One failed look (a registry mount gone, a bug) must not end hot reload for good.
            try:
                await self.refresh()
            except Exception:
                _log.exception("model_watch_failed", registry=str(self.store.registry.root))

    def on_first_champion(self, listener: FirstChampionListener) -> None:
        """Have `listener` hear the first champion served, once, after the look that serves
        it: at start, or at the poll that finds one when none verified before."""
        self._first_champion_listeners.append(listener)

    async def refresh(self, *, retry_refused: bool = False) -> RefreshReport:
        """One look at the registry now; see `ModelStore.refresh_or_fall_back`. OSError if
        unreadable."""
        async with self._lock:
            with _short_gil_turns():
                report = await asyncio.to_thread(
                    self.store.refresh_or_fall_back, retry_refused=retry_refused
                )
                if self.rules is not None:
                    _followed_rules(
                        await asyncio.to_thread(self.rules.refresh, retry_refused=retry_refused)
                    )
        self._registry_seen(await asyncio.to_thread(self.store.registry.root.is_dir))
        fallback = report.fallback
        for change in report.changes:
            self._swapped(change)
        for refusal in report.refusals:
            _refused(refusal, nothing_served=fallback is not None and refusal == fallback.refused)
        if fallback is not None and fallback.change is not None:
            self._swapped(fallback.change)
            _fell_back(fallback, fallback.change)
        model = self.store.current
        if model is None:
            self._not_serving_yet(fallback)
        elif not self._champion_announced:
            self._champion_announced = True
            for listener in self._first_champion_listeners:
                await listener(model)
        return report

    async def reload(self) -> RefreshReport:
        """A look at the registry now that retries refused versions (admin RPC, SIGHUP)."""
        return await self.refresh(retry_refused=True)

    async def change_list(
        self,
        *,
        name: str,
        kind: str,
        value: str,
        remove: bool,
        reason: str,
        by: str,
        expires_at: float | None,
        card_token: Callable[[str], str],
    ) -> str:
        """Publish the lists with `value` added or removed (`rule_writer.change_list`) and
        look at the registry at once; the lists version. RuleError for bad input;
        SignedListsError where lists must be signed, which this server cannot do."""
        if self.rules is not None and self.rules.signatures.required:
            raise SignedListsError(
                "this server serves only lists signed by a trusted key (models.trusted_keys) "
                "and holds no private key: change them with `fraud-train rules list add|remove` "
                "and its signing_key"
            )
        version = await asyncio.to_thread(
            functools.partial(
                change_list,
                self.store.registry.root,
                name=name,  # type: ignore[arg-type]  # checked by change_list
                kind=kind,  # type: ignore[arg-type]
                value=value,
                add=not remove,
                by=by,
                reason=reason,
                card_token=card_token,
                expires_at=expires_at,
            )
        )
        await self.refresh()
        return version

    def _registry_seen(self, found: bool) -> None:
        """Export whether the registry's directory is there; log when it goes and returns.

        Reading a missing registry finds no alias, which changes nothing served (a champion
        is only ever replaced), so without this a lost mount would be silent while
        promotions and rollbacks go unseen. At the first look nothing is logged: a
        registry not made yet is what "cannot_serve_yet" reports.
        """
        REGISTRY_READABLE.set(int(found))
        before, self._registry_found = self._registry_found, found
        if before is None or before == found:
            return
        root = str(self.store.registry.root)
        if found:
            _log.info("registry_found_again", registry=root)
        else:
            _log.error(
                "registry_unreadable",
                registry=root,
                advice="the models loaded keep serving; promotions and rollbacks are not seen "
                "until the directory is back (a volume unmounted, the directory moved?)",
            )

    def _not_serving_yet(self, fallback: ChampionFallback | None) -> None:
        """Log why no champion serves, unless that is what was logged last."""
        champion_refusals = [r for r in self.store.refusals if r.alias == CHAMPION]
        why = champion_refusals[0] if champion_refusals else None
        if (why,) == self._not_serving_reported and fallback is None:
            return
        self._not_serving_reported = (why,)
        passed_over = [] if fallback is None else [_described(r) for r in fallback.passed_over]
        _log.error(
            "cannot_serve_yet",
            reason="no_champion" if why is None else why.reason,
            version=None if why is None else why.version,
            detail=str(no_champion(self.store.registry.root)) if why is None else why.detail,
            passed_over=passed_over,
            advice="health stays NOT_SERVING and every swipe gets the fallback rules "
            "(model_unavailable) until the champion alias names a version that verifies: "
            "promote or roll back to one, or repair the refused version's files",
        )

    def overview(self) -> ModelsOverview:
        """The registry's versions and what is served; reads files, so not on the loop."""
        return models_overview(self.store)

    def _swapped(self, change: AliasChange) -> None:
        set_serving_model(change.alias, change.version, time.time())
        if change.version is None:
            _log.info("model_retired", alias=change.alias, previous=change.previous)
        else:
            MODEL_LOADS.labels(change.alias).inc()
            MODEL_LOAD_SECONDS.observe(change.load_seconds)
            _log.info(
                "model_swapped",
                alias=change.alias,
                version=change.version,
                previous=change.previous,
                load_seconds=round(change.load_seconds, 3),
                signed_by=change.signer,
            )
            if change.signer is None:
                _log.warning(
                    "model_signature_not_checked",
                    alias=change.alias,
                    version=change.version,
                    advice="no trusted signing key is configured (models.trusted_keys): any "
                    "version written to the registry is served",
                )
        if change.alias == CHAMPION:
            differences = change.library_differences
            set_library_differences((item.library, item.severity) for item in differences)
            for item in differences:
                _log.warning("library_version_differs", difference=item.describe())


@contextlib.contextmanager
def _short_gil_turns() -> Iterator[None]:
    """Shorter GIL turns while a look may load a model beside the event loop.

    The loading thread runs Python (manifest, reason tables) and keeps the GIL for up to
    the switch interval whenever the event loop wakes for a request. Lowering the interval
    from Python's default to `LOADING_SWITCH_INTERVAL_SECONDS` for the look shortens the
    loop's wake-up delay while a model loads (see benchmarks/RESULTS.md, "Hot reloads
    under load"); the extra switching costs nothing noticeable over a look.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(LOADING_SWITCH_INTERVAL_SECONDS)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _refused(refusal: Refusal, *, nothing_served: bool) -> None:
    count_refusal(refusal.alias, refusal.reason)
    _log.error(
        "model_refused",
        alias=refusal.alias,
        version=refusal.version,
        reason=refusal.reason,
        detail=refusal.detail,
        advice="no champion served yet: earlier champions were tried in its place"
        if nothing_served
        else "the model already loaded keeps serving",
    )


def _fell_back(fallback: ChampionFallback, change: AliasChange) -> None:
    refused = fallback.refused
    _log.warning(
        "champion_fallback",
        refused_version=refused.version,
        reason=refused.reason,
        detail=refused.detail,
        version=change.version,
        passed_over=[_described(refusal) for refusal in fallback.passed_over],
        advice="an earlier champion decides; the alias still names the refused version "
        "and is followed: repair its files or promote or roll back to a sound version",
    )


def _followed_rules(report: RuleReport) -> None:
    for change in report.changes:
        if change.version is not None:
            RULE_LOADS.labels(change.kind, change.alias).inc()
        _log.info(
            "rules_swapped",
            kind=change.kind,
            alias=change.alias,
            version=change.version,
            previous=change.previous,
        )
    for refusal in report.refusals:
        RULE_REFUSALS.labels(refusal.kind, refusal.reason).inc()
        _log.error(
            "rules_refused",
            kind=refusal.kind,
            alias=refusal.alias,
            version=refusal.version,
            reason=refusal.reason,
            detail=refusal.detail,
            advice=f"the {refusal.kind} loaded before keep deciding: fix and publish again, "
            "or roll back (fraud-train rules rollback)",
        )


def _described(refusal: Refusal) -> str:
    """A refusal in a few words: the version and reason, or why there was no version."""
    if refusal.version is None:
        return f"{refusal.reason}: {refusal.detail}"
    return f"{refusal.version}: {refusal.reason}"
