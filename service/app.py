"""The composition root: `create_app(settings)` builds one scoring server from its settings.

    champion's feature config → feature state store → feature engine
    → model store (bound to that config)
    → decision and outcome logs → answer and outcome listeners → scorer
    → health (NOT_SERVING) → model watcher (SERVING with the first champion)
    → gRPC server bound, with the model watcher behind the admin RPC

This is the one place objects are built and wired; everything else receives its
collaborators. The listeners each answer goes to, in order: decision metrics, drift
statistics, the challenger's shadow, the decision log; each outcome goes to the outcome
metrics, the outcome log and its quarantine. `service.__main__` is the command line around
it (arguments, SIGTERM and SIGINT, worker processes); `following_the_registry` is here
because a SIGHUP is one more way to look at the registry. Tests build the same app, or a
scorer with `build_scorer`.

The port is bound by `create_app` and opens at `App.start`, before the model is loaded, so
probes get an answer (NOT_SERVING) while it warms up; scoring calls in that window get the
fallback decision ("model_unavailable"). Health turns SERVING only with a verified model:
the champion, or, when the champion is refused at start, the newest earlier champion that
verifies (`ModelStore.refresh_or_fall_back`). With none, or no champion at all, the server
stays up NOT_SERVING and the watcher serves the first champion that verifies: a bad or
missing model is not a reason to exit, since a restart would find the same registry.

The feature settings are fixed at start (`startup_feature_config`): the champion's, read
from its manifest; an earlier champion's when that cannot be read; the defaults with no
readable model at all. Every model is checked against them, so a version trained with
other settings is refused ("feature_contract") until a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import prometheus_client
import structlog

from service.config.settings import (
    ModelSettings,
    QuarantineSettings,
    RecordLogSettings,
    ServeSettings,
)
from service.core.ports import AnswerListener, ModelSource, OutcomeListener, RuleSource
from service.core.scoring import FallbackPolicy, Scorer
from service.core.validation import ScoringLimits
from service.features import FeatureConfig, FeatureEngine, StateStore
from service.features.engine import FEATURE_NAMES
from service.grpc_api.health_port import build_health_server
from service.grpc_api.server import (
    HealthServicer,
    build_server,
    create_health,
    set_serving,
    shut_down,
)
from service.model.artifact import ArtifactError, read_manifest
from service.model.loading import LoadedModel
from service.model.registry import CHAMPION, Registry, RegistryError, no_champion
from service.model.rule_shadow import RuleShadow
from service.model.rule_store import RuleStore
from service.model.shadow import Schedule, ShadowScorer
from service.model.signatures import SignaturePolicy
from service.model.store import ModelStore, earlier_champions
from service.model.watcher import ModelWatcher
from service.observability.clock_skew import ClockSkewMetrics
from service.observability.drift import DriftCollector
from service.observability.logs import RequestLogSampler
from service.observability.metrics import DecisionMetrics, SampledStageTimer, track_feature_state
from service.observability.rule_metrics import RuleHitMetrics
from service.observability.unread_calls import track_unread_calls
from service.records.decision_writer import DecisionLogWriter
from service.records.outcome_writer import OutcomeLogWriter
from service.records.quarantine_writer import QuarantineWriter
from service.records.segment_log import LogLimits
from service.state.opening import open_state

_log = structlog.get_logger("service")


@dataclass
class App:
    """One scoring server, built and bound but not started."""

    settings: ServeSettings
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    watcher: ModelWatcher
    scorer: Scorer[LoadedModel]
    listeners: Listeners
    state: StateStore
    # The plaintext health-only port (`server.health_port`), when configured.
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    async def start(self) -> None:
        """Open the ports: health answers NOT_SERVING, scoring the fallback, until a model."""
        if self.health_server is not None:
            await self.health_server.start()
        await self.server.start()

    async def load_champion(self) -> LoadedModel | None:
        """The first look at the registry: the champion (and any challenger) loaded and warmed
        up, or an earlier champion in place of a refused one; health SERVING with it.

        None when no version verifies: health stays NOT_SERVING, and the watcher's polls
        serve the first champion that does.
        """
        await self.watcher.refresh()
        return self.watcher.store.current

    async def stop(self, grace_seconds: float) -> None:
        """NOT_SERVING at once; calls in progress get `grace_seconds` to finish."""
        await shut_down(self.server, self.health, grace_seconds)
        if self.health_server is not None:  # said NOT_SERVING through the grace; now gone
            await self.health_server.stop(0)

    def close(self) -> None:
        """Drain and close the record logs, stop exporting drift and close the feature
        state: after `stop`, when no decision or outcome can arrive any more."""
        try:
            self.listeners.close()
        finally:
            self.state.close()


@dataclass
class Listeners:
    """Who hears the scoring core's answers and outcomes, besides the decision metrics."""

    drift: DriftCollector
    shadow: ShadowScorer
    decision_log: DecisionLogWriter | None
    outcome_log: OutcomeLogWriter | None
    quarantine: QuarantineWriter | None = None

    @property
    def answers(self) -> list[AnswerListener[LoadedModel]]:
        """In the order they hear: drift statistics, the challenger's shadow, the log."""
        heard: list[AnswerListener[LoadedModel]] = [self.drift, self.shadow]
        if self.decision_log is not None:
            heard.append(self.decision_log)
        return heard

    @property
    def outcomes(self) -> list[OutcomeListener]:
        """The outcome log and its quarantine, when they are kept."""
        return [log for log in (self.outcome_log, self.quarantine) if log is not None]

    def close(self) -> None:
        """Drain and close the record logs; stop exporting drift if it was registered."""
        for log in (self.decision_log, self.outcome_log, self.quarantine):
            if log is not None:
                log.close()
        with contextlib.suppress(KeyError):  # never registered, or already closed
            prometheus_client.REGISTRY.unregister(self.drift)


def open_listeners(
    settings: ServeSettings,
    store: ModelStore,
    feature_config: FeatureConfig,
    schedule: Schedule,
) -> Listeners:
    """The listeners `settings` ask for, the record logs writing from now on; the shadow
    scores the challenger in callbacks given to `schedule` (the event loop's `call_soon`)."""
    shadow = ShadowScorer(
        store,
        schedule,
        log_sampler=RequestLogSampler(settings.logging.sample_rate),
        backlog_limit=settings.models.shadow_backlog,
    )
    drift = DriftCollector(window=settings.drift.window, min_rows=settings.drift.min_rows)
    decision_log = _open_decision_log(settings.decision_log, feature_config)
    outcome_log = _open_outcome_log(settings.outcome_log)
    quarantine = _open_quarantine(settings.outcome_log, settings.outcome_quarantine)
    return Listeners(drift, shadow, decision_log, outcome_log, quarantine)


async def create_app(settings: ServeSettings) -> App:
    """The scoring server `settings` describe; must run in the event loop that will serve.

    A registry without a champion fit to serve is no error: the server waits for one.
    BindError when the port cannot be bound (nothing is left open then).
    """
    feature_config = startup_feature_config(settings.registry)
    models = settings.models
    store = ModelStore(
        settings.registry,
        feature_config=feature_config,
        allow_major_library_difference=models.allow_major_library_difference,
        signatures=signature_policy(models),
        max_file_bytes=models.max_file_bytes,
    )
    state = open_state(settings.state, feature_config)
    engine = FeatureEngine(feature_config, state)
    rules = RuleStore(settings.registry, FEATURE_NAMES, signatures=signature_policy(models))
    track_feature_state(state)
    track_unread_calls()  # gRPC's core's refusals, which no interceptor sees
    try:
        listeners = open_listeners(
            settings, store, feature_config, asyncio.get_running_loop().call_soon
        )
    except BaseException:
        state.close()
        raise
    try:
        scorer = build_scorer(
            settings,
            engine,
            store,
            # Lists and rules (docs/rules.md): their hits, then the shadow rule set's.
            answer_listeners=[
                *listeners.answers,
                RuleHitMetrics(),
                RuleShadow(rules, log_sampler=RequestLogSampler(settings.logging.sample_rate)),
            ],
            rules=rules,
            outcome_listeners=listeners.outcomes,
        )
        health = await create_health()
        watcher = watch_models(store, health, rules)
        server, port = build_server(settings, scorer, health, models=watcher)
        health_only = build_health_server(settings.server, health)
        prometheus_client.REGISTRY.register(listeners.drift)
    except BaseException:
        listeners.close()
        state.close()
        raise
    health_server, health_port = health_only if health_only is not None else (None, None)
    return App(
        settings,
        server,
        port,
        health,
        watcher,
        scorer,
        listeners,
        state,
        health_server,
        health_port,
    )


def signature_policy(settings: ModelSettings) -> SignaturePolicy:
    """The manifest signatures `settings` accept; ValueError for a key that does not parse."""
    return SignaturePolicy.from_settings(settings.trusted_keys, settings.revoked_keys)


def build_scorer(
    settings: ServeSettings,
    engine: FeatureEngine,
    store: ModelSource[LoadedModel],
    *,
    answer_listeners: Sequence[AnswerListener[LoadedModel]] = (),
    outcome_listeners: Sequence[OutcomeListener] = (),
    rules: RuleSource | None = None,
) -> Scorer[LoadedModel]:
    """The scoring core over `engine`'s state and `store`'s model, configured by `settings`.

    The decision metrics hear every answer and outcome first, then `answer_listeners` and
    `outcome_listeners` in order; the stages of a sample of calls are timed; outcomes are
    ranked by their callers' `rank`. ValueError when `store`'s model was trained with other
    feature settings than `engine` computes.
    """
    model = store.current
    if model is not None and model.manifest.feature_config != engine.config:
        raise ValueError("the feature engine's config is not the one the model was trained with")
    limits = settings.limits
    metrics = DecisionMetrics()
    return Scorer(
        engine,
        store,
        tokenizer=settings.card_tokenizer(),
        limits=ScoringLimits(
            max_string_length=limits.max_string_length,
            max_amount_minor=limits.max_amount_minor,
            max_future_skew_seconds=limits.max_future_skew_seconds,
        ),
        fallback=FallbackPolicy(settings.fallback.policy, settings.fallback.approve_below_minor),
        answer_listeners=(metrics, *answer_listeners),
        outcome_listeners=(metrics, *outcome_listeners),
        stage_timer=SampledStageTimer(),
        clock_skew_listener=ClockSkewMetrics(),
        rules=rules,
        caller_ranks={caller.name: caller.rank for caller in settings.auth.callers},
    )


def champion_feature_config(registry_root: Path) -> FeatureConfig:
    """The feature config the champion was trained with: the engine must compute the same.

    Read from its manifest alone: loading the champion verifies every file moments later.
    RegistryError or ArtifactError when there is no champion manifest to read (the server
    starts with `startup_feature_config`, which then turns to earlier champions).
    """
    registry = Registry(registry_root)
    version = registry.alias(CHAMPION)
    if version is None:
        raise no_champion(registry_root)
    return read_manifest(registry.artifact_dir(version)).feature_config


def startup_feature_config(registry_root: Path) -> FeatureConfig:
    """The feature config the engine computes from the start, read before any model loads.

    The champion's, from its manifest; when that cannot be read (a corrupt alias, a missing
    or corrupt manifest), that of the newest earlier champion whose manifest can, the
    version the store falls back to if it verifies; with no readable manifest at all, the
    defaults, logged: models trained with other settings are refused until a restart.
    Manifests are read, not verified: loading verifies every file moments later.
    """
    registry = Registry(registry_root)
    try:
        champion = registry.alias(CHAMPION)
    except RegistryError:
        champion = None
    try:
        candidates = earlier_champions(registry, champion)
    except RegistryError:
        candidates = []
    for version in ([] if champion is None else [champion]) + candidates:
        try:
            return read_manifest(registry.artifact_dir(version)).feature_config
        except (RegistryError, ArtifactError):
            continue
    config = FeatureConfig()
    _log.warning(
        "default_feature_config",
        registry=str(registry_root),
        feature_config=config.model_dump(),
        advice="no champion's manifest can be read: the default feature settings are used "
        "until a restart, and a model trained with other settings is refused (feature_contract)",
    )
    return config


def watch_models(
    store: ModelStore, health: HealthServicer, rules: RuleStore | None = None
) -> ModelWatcher:
    """A watcher keeping `store` on the registry, that turns `health` SERVING once a look
    serves a champion: at start, or at the poll that finds one when none verified before."""
    watcher = ModelWatcher(store, rules)
    watcher.on_first_champion(lambda _model: set_serving(health))
    return watcher


@contextlib.asynccontextmanager
async def following_the_registry(watcher: ModelWatcher, poll_seconds: float) -> AsyncIterator[None]:
    """Hot reload while the context lasts: a poll (unless 0) and SIGHUP for a look now."""
    looks: set[asyncio.Task[object]] = set()  # referenced until done, or asyncio may drop them

    def look_now() -> None:
        _log.info("reload_requested", trigger="SIGHUP")
        task: asyncio.Task[object] = asyncio.create_task(watcher.reload())
        looks.add(task)
        task.add_done_callback(looks.discard)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, look_now)
    polling = asyncio.create_task(watcher.run(poll_seconds)) if poll_seconds > 0 else None
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in (polling, *looks):
            if task is not None:
                task.cancel()


def _open_decision_log(
    settings: RecordLogSettings, feature_config: FeatureConfig
) -> DecisionLogWriter | None:
    """The decision log, writing from now on; None when the settings keep none."""
    if settings.directory is None:
        return None
    return DecisionLogWriter(settings.directory, _limits(settings), feature_config=feature_config)


def _open_outcome_log(settings: RecordLogSettings) -> OutcomeLogWriter | None:
    """The outcome log, writing from now on; None when the settings keep none."""
    if settings.directory is None:
        return None
    return OutcomeLogWriter(settings.directory, _limits(settings))


def _open_quarantine(
    outcome_log: RecordLogSettings, settings: QuarantineSettings
) -> QuarantineWriter | None:
    """The outcome quarantine, in the outcome log's directory, writing from now on; None when
    no outcome log is kept."""
    if outcome_log.directory is None:
        return None
    return QuarantineWriter(outcome_log.directory, LogLimits(**settings.model_dump()))


def _limits(settings: RecordLogSettings) -> LogLimits:
    return LogLimits(**settings.model_dump(exclude={"directory"}))
