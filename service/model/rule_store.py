"""The lists and rule sets the server decides with, following the registry's aliases.

`refresh` reads the three aliases (rules champion and challenger, lists champion); a version
not loaded yet is verified (checksum) and compiled, off the event loop, then swapped in with
one reference assignment: a request reads `current` once and decides with that book whole.
A version that does not verify (checksum, and the signature when `signatures` requires one,
as for models) or compile is refused, named with its problem, and the one
loaded before keeps serving; it is not tried again at every poll, only when its alias
moves or an explicit reload asks (`retry_refused`). An alias removed (never set) means no
rules, or no lists: a registry without either costs a request nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from service.core.rules import Lists, RuleBook, RuleSet
from service.model.registry import CHALLENGER, CHAMPION, RegistryError
from service.model.rule_registry import (
    RuleArtifactError,
    RuleKind,
    RuleRegistry,
    load_lists,
    load_rule_set,
)
from service.model.signatures import UNCHECKED, SignaturePolicy


class _Versioned(Protocol):
    @property
    def version(self) -> str: ...


_T = TypeVar("_T", bound=_Versioned)


@dataclass(frozen=True, slots=True)
class RuleChange:
    """An alias now served at another version (None: retired)."""

    kind: RuleKind
    alias: str
    version: str | None
    previous: str | None


@dataclass(frozen=True, slots=True)
class RuleRefusal:
    """A version refused; what was served before goes on."""

    kind: RuleKind
    alias: str
    version: str | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class RuleReport:
    changes: list[RuleChange] = field(default_factory=list)
    refusals: list[RuleRefusal] = field(default_factory=list)


class RuleStore:
    """Lists and rule sets loaded from the registry. `refresh` on one thread at a time;
    `current` and `challenger` from any."""

    def __init__(
        self,
        registry_root: Path,
        feature_names: tuple[str, ...],
        *,
        signatures: SignaturePolicy = UNCHECKED,
    ) -> None:
        self.signatures = signatures
        self._rules = RuleRegistry(registry_root, "rules")
        self._lists = RuleRegistry(registry_root, "lists")
        self._feature_names = feature_names
        self._champion_rules: RuleSet | None = None
        self._lists_loaded: Lists | None = None
        self._challenger: RuleSet | None = None
        self._refused: set[tuple[RuleKind, str, str]] = set()
        self.current: RuleBook | None = None

    @property
    def challenger(self) -> RuleSet | None:
        """The rule set in the champion's shadow, if one is published and differs."""
        return self._challenger

    @property
    def versions(self) -> dict[str, str | None]:
        """What is served: rules champion and challenger, lists."""
        return {
            "rules": None if self._champion_rules is None else self._champion_rules.version,
            "rules_challenger": None if self._challenger is None else self._challenger.version,
            "lists": None if self._lists_loaded is None else self._lists_loaded.version,
        }

    def refresh(self, *, retry_refused: bool = False) -> RuleReport:
        """Follow the aliases once; what changed and what was refused."""
        report = RuleReport()
        if retry_refused:
            self._refused.clear()
        rules = self._follow(self._rules, CHAMPION, self._champion_rules, self._load_rules, report)
        lists = self._follow(
            self._lists,
            CHAMPION,
            self._lists_loaded,
            lambda v: load_lists(self._lists, v, self.signatures),
            report,
        )
        challenger = self._follow(
            self._rules, CHALLENGER, self._challenger, self._load_rules, report
        )
        changed = rules is not self._champion_rules or lists is not self._lists_loaded
        self._champion_rules, self._lists_loaded, self._challenger = rules, lists, challenger
        if changed:
            self.current = (
                None
                if rules is None and lists is None
                else RuleBook(rules or RuleSet.empty(), lists or Lists.empty())
            )
        return report

    def _load_rules(self, version: str) -> RuleSet:
        return load_rule_set(self._rules, version, self._feature_names, self.signatures)

    def _follow(
        self,
        registry: RuleRegistry,
        alias: str,
        loaded: _T | None,
        load: Callable[[str], _T],
        report: RuleReport,
    ) -> _T | None:
        """What `alias` should serve now: the loaded one, the version it names, or None."""
        kind = registry.kind
        try:
            version = registry.alias(alias)
        except RegistryError as error:
            return self._refuse(report, kind, alias, None, "registry_error", str(error), loaded)
        current = None if loaded is None else loaded.version
        if version == current:
            return loaded
        if version is None:
            report.changes.append(RuleChange(kind, alias, None, current))
            return None
        if (kind, alias, version) in self._refused:
            return loaded
        try:
            made = load(version)
        except RuleArtifactError as error:
            self._refused.add((kind, alias, version))
            return self._refuse(report, kind, alias, version, error.reason, str(error), loaded)
        except OSError as error:
            return self._refuse(report, kind, alias, version, "unreadable", str(error), loaded)
        report.changes.append(RuleChange(kind, alias, version, current))
        return made

    @staticmethod
    def _refuse(
        report: RuleReport,
        kind: RuleKind,
        alias: str,
        version: str | None,
        reason: str,
        detail: str,
        loaded: _T | None,
    ) -> _T | None:
        report.refusals.append(RuleRefusal(kind, alias, version, reason, detail))
        return loaded
