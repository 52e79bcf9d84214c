"""The models that decide and shadow, following the registry's aliases.

The champion decides, the optional challenger is scored in its shadow; each is a
`LoadedModel` that `service.model.loading.load_model` checked before it is held. See
`ModelStore` for how a swap stays atomic and how refusals are remembered, and
`ModelStore.refresh_or_fall_back` for what serves when the champion is refused at start.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from service.features import FeatureConfig
from service.model.artifact import (
    DEFAULT_MAX_FILE_BYTES,
    REFUSAL_REASONS,
    ArtifactError,
    RefusalReason,
)
from service.model.library_versions import LibraryDifference, installed_versions
from service.model.loading import LoadedModel, load_model
from service.model.registry import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    REGISTRY_ERROR,
    VERSION_PATTERN,
    Registry,
    RegistryError,
    RegistryErrorReason,
    no_champion,
)
from service.model.signatures import UNCHECKED, SignaturePolicy
from service.observability.metrics import start_refusal_counts

# Every (alias, reason) series exists from the start at 0, so alert rules see a rise from 0.
start_refusal_counts(ALIASES, (*REFUSAL_REASONS, REGISTRY_ERROR))


@dataclass(frozen=True, slots=True)
class AliasChange:
    """An alias now served by another model: `version` None when the alias was removed."""

    alias: str
    version: str | None
    previous: str | None
    load_seconds: float
    library_differences: tuple[LibraryDifference, ...] = ()
    signer: str | None = None
    """The trusted key that signed the version; None when the server requires none."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A version an alias points at that the store would not load.

    `reason` is an `ArtifactError` reason, or "registry_error" when the registry could not
    say which version the alias names or the version is not published.
    """

    alias: str
    version: str | None
    reason: RefusalReason | RegistryErrorReason
    detail: str


@dataclass(frozen=True, slots=True)
class ChampionFallback:
    """What a store serving no champion did when the champion alias's version was refused:
    serve the newest earlier champion that verifies in its place (`change`), or find none
    (`change` None).

    `passed_over` are the earlier champions refused as well, newest first; one without a
    version means the registry's history could not be read.
    """

    refused: Refusal
    change: AliasChange | None
    passed_over: tuple[Refusal, ...] = ()


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one look at the registry changed: loads and new refusals."""

    changes: tuple[AliasChange, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    fallback: ChampionFallback | None = None
    """Set when the look refused the champion while none served: see `refresh_or_fall_back`."""


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

    A store that serves no champion yet, and finds the champion refused, can serve the
    newest earlier champion that verifies in its place (`refresh_or_fall_back`).

    Loads may run on another thread than scoring; two loads must not run at once.
    """

    def __init__(
        self,
        registry_root: Path,
        *,
        feature_config: FeatureConfig | None = None,
        allow_major_library_difference: bool = False,
        signatures: SignaturePolicy = UNCHECKED,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        """Read models from `registry_root`.

        `feature_config` is the running feature engine's: every model must have been trained
        with it. When None, the first model loaded fixes it for the later ones. Versions
        must be signed as `signatures` require; no file may exceed `max_file_bytes`.
        """
        self.registry = Registry(registry_root)
        self._feature_config = feature_config
        self._allow_major = allow_major_library_difference
        self._signatures = signatures
        self._max_file_bytes = max_file_bytes
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

    def refresh_or_fall_back(self, *, retry_refused: bool = False) -> RefreshReport:
        """`refresh`; and when it refused the champion while none serves (a start on a bad
        champion), serve the newest earlier champion that verifies in its place.

        The stand-in serves as the champion but the alias file is not rewritten (the server
        never writes the registry), and the refusal stands: every look still follows the
        alias, so the champion is served once it verifies (its files change, the alias
        moves), as any promotion is. Earlier champions are tried once per reported refusal,
        not on every look: with none that verifies, polls stay as cheap as ever.
        """
        report = self.refresh(retry_refused=retry_refused)
        refused = [refusal for refusal in report.refusals if refusal.alias == CHAMPION]
        if self.current is not None or not refused:
            return report
        return dataclasses.replace(report, fallback=self._fall_back(refused[0]))

    def _fall_back(self, refused: Refusal) -> ChampionFallback:
        """Serve the first of `earlier_champions` that loads, through the checks of any load."""
        try:
            candidates = earlier_champions(self.registry, refused.version)
        except RegistryError as error:
            return ChampionFallback(refused, None, (_refusal(None, error),))
        passed_over: list[Refusal] = []
        for version in candidates:
            started = time.perf_counter()
            try:
                model = self._loaded_elsewhere(version) or self._load(version)
            except (RegistryError, ArtifactError) as error:
                passed_over.append(_refusal(version, error))
                continue
            self._models[CHAMPION] = model
            seconds = time.perf_counter() - started
            change = AliasChange(
                CHAMPION, version, None, seconds, model.library_differences, model.signer
            )
            return ChampionFallback(refused, change, tuple(passed_over))
        return ChampionFallback(refused, None, tuple(passed_over))

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
            model.signer,
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
            signatures=self._signatures,
            max_file_bytes=self._max_file_bytes,
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


def earlier_champions(registry: Registry, refused: str | None) -> list[str]:
    """The versions to serve in place of the refused champion `refused`, in the order to try
    them: back through the champion's lineage (`Registry.lineage`) from `refused`'s last
    place in it, each version once; the whole lineage, newest first, when `refused` is not
    in it (an alias moved by hand, or None: an alias that cannot be read).

    Only versions that were champion: a version the champion was rolled back from has left
    the lineage, since it was taken off for a reason. RegistryError if the history is corrupt.
    """
    lineage = registry.lineage(CHAMPION)
    if refused in lineage:
        last = len(lineage) - 1 - lineage[::-1].index(refused)
        lineage = lineage[:last]
    return [version for version in dict.fromkeys(reversed(lineage)) if version != refused]


def _refusal(version: str | None, error: RegistryError | ArtifactError) -> Refusal:
    """An earlier champion's refusal, as a fallback reports it."""
    reason = error.reason if isinstance(error, ArtifactError) else REGISTRY_ERROR
    return Refusal(CHAMPION, version, reason, str(error))


def _size_and_mtime(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns
