"""Who makes the challenger the champion: a person (`manual`, the default) or the retrain
loop (`automatic`), once the challenger has earned it.

Automatic promotion needs, for the challenger's version (not the champion's):

1. an average precision on its evaluation window of at least `min_average_precision`: the
   retrain's comparison (`lineage.comparison["candidate"]`) when there is one, else the
   test metrics of a model trained from a history;
2. `shadow_hours` in shadow, since the history entry that named it challenger;
3. `min_comparisons` shadow comparisons on the servers, counted by `ShadowTracker`;
4. an agreement with the champion of at least `min_agreement` over them.

Shadow time and comparisons come with waiting; a condition that waiting does not meet (a
low average precision or agreement, no history entry naming it, no `metrics_urls` to count
comparisons with, a version that does not verify) withholds the promotion, and the
reason is recorded once per version in the registry history, as a `refuse` entry whose
reason starts with `WITHHELD`, so that an auditor sees why it did not happen. A promotion
is recorded as `promote` with a reason starting "automatic:" and the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from service.model.artifact import ArtifactError, Manifest
from service.model.registry import CHALLENGER, CHAMPION, HistoryEntry, Registry
from training.config import PromotionConfig, TrainSettings
from training.registry.publishing import promote, refuse
from training.retraining.server_scrape import MetricsLook, ServerMetrics, ShadowCounts

WITHHELD = "automatic promotion withheld: "
MANUAL_COMMAND = "fraud-train registry promote challenger"
_NAMING_ACTIONS = frozenset({"promote", "rollback"})


@dataclass(frozen=True, slots=True)
class PromotionVerdict:
    """Whether the challenger was promoted at this look, and why (not)."""

    promoted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class _Finding:
    """One condition: met, to be met by waiting, or failed (withholds the promotion)."""

    status: Literal["met", "wait", "withhold"]
    text: str


class ShadowTracker:
    """Shadow comparisons of one challenger version, counted from the first look at which
    each server was seen shadowing it.

    A server's counters add up every comparison since its process started, whichever
    challenger made them. So a server's counts at the first look that shows it serving the
    challenger (`fraud_model_info`) are its baseline, and only the increase counts. A
    restart starts a new baseline: the server's start time (`process_start_time_seconds`)
    changed, or, for a server that does not export it, a counter went down. The start time
    catches a restarted process that has already counted past its predecessor, whose
    counts would otherwise be mixed with the old one's. Comparisons made before the loop's
    first look are not counted: a restarted loop gathers them again.
    """

    def __init__(self) -> None:
        """No baselines yet."""
        self._baselines: dict[str, _Baseline] = {}

    def counts(self, look: MetricsLook, challenger: str) -> ShadowCounts | None:
        """Comparisons of `challenger` since the baselines, summed over the servers that
        shadow it now; None if none does."""
        shadowing = [
            server for server in look.servers if server.aliases.get(CHALLENGER) == challenger
        ]
        if not shadowing:
            return None
        return sum((self._increase(server, challenger) for server in shadowing), ShadowCounts())

    def _increase(self, server: ServerMetrics, challenger: str) -> ShadowCounts:
        baseline = self._baselines.get(server.url)
        counts = server.shadow
        if baseline is None or not baseline.continued_by(server, challenger):
            self._baselines[server.url] = _Baseline(challenger, server.started_at, counts)
            return ShadowCounts()
        return counts - baseline.counts


@dataclass(frozen=True, slots=True)
class _Baseline:
    """A server's counts when it was first seen shadowing `challenger` in this process."""

    challenger: str
    started_at: float | None
    counts: ShadowCounts

    def continued_by(self, server: ServerMetrics, challenger: str) -> bool:
        """Whether `server` still counts from this baseline: same challenger, same process."""
        counts = server.shadow
        return (
            challenger == self.challenger
            and server.started_at == self.started_at
            and counts.agree >= self.counts.agree
            and counts.disagree >= self.counts.disagree
        )


def consider_promotion(
    registry_root: Path, settings: TrainSettings, shadow: ShadowCounts | None, *, now: datetime
) -> PromotionVerdict:
    """Promote the challenger if the policy of `settings.promotion` allows it now.

    `shadow` holds its comparisons (`ShadowTracker.counts`), None when no server reported
    shadowing it; `now` is the wall time the shadow period is measured to.
    """
    registry = Registry(registry_root)
    champion, challenger = registry.alias(CHAMPION), registry.alias(CHALLENGER)
    if challenger is None or challenger == champion:
        return PromotionVerdict(False, "no challenger in shadow")
    if settings.promotion.mode == "manual":
        return PromotionVerdict(
            False,
            f"manual promotion: a person must read challenger {challenger}'s report and run "
            f"`{MANUAL_COMMAND}`",
        )
    history = registry.history()
    findings = _findings(registry, history, challenger, settings, shadow, now)
    blocking = next((finding for finding in findings if finding.status != "met"), None)
    if blocking is None:
        evidence = "; ".join(finding.text for finding in findings)
        # The version judged, not whatever the challenger alias names by now.
        promote(registry_root, challenger, alias=CHAMPION, reason=f"automatic: {evidence}")
        return PromotionVerdict(True, f"promoted challenger {challenger}: {evidence}")
    if blocking.status == "wait":
        return PromotionVerdict(False, f"challenger {challenger} waits: {blocking.text}")
    if not _already_withheld(history, challenger):
        refuse(registry_root, challenger, alias=CHAMPION, reason=WITHHELD + blocking.text)
    return PromotionVerdict(False, f"challenger {challenger}: {WITHHELD}{blocking.text}")


def evaluation_average_precision(manifest: Manifest) -> tuple[float, str] | None:
    """The model's average precision on its evaluation window, and where it was read."""
    lineage = manifest.lineage
    comparison = lineage.comparison if lineage is not None else None
    if comparison is not None and "average_precision" in comparison.get("candidate", {}):
        return comparison["candidate"]["average_precision"], "retrain evaluation window"
    test = manifest.metrics.get("test", {})
    if "average_precision" in test:
        return test["average_precision"], "test period"
    return None


def named_challenger_at(history: Sequence[HistoryEntry], version: str) -> datetime | None:
    """When `version` was last made the challenger, from the history; None if never."""
    return next(
        (
            entry.at
            for entry in reversed(history)
            if entry.alias == CHALLENGER
            and entry.version == version
            and entry.action in _NAMING_ACTIONS
        ),
        None,
    )


def _findings(
    registry: Registry,
    history: Sequence[HistoryEntry],
    challenger: str,
    settings: TrainSettings,
    shadow: ShadowCounts | None,
    now: datetime,
) -> list[_Finding]:
    """Each condition, in the order they are reported."""
    policy = settings.promotion
    return [
        _quality(registry, challenger, policy),
        _shadow_time(history, challenger, policy, now),
        _shadow_agreement(shadow, policy, metrics_configured=bool(settings.triggers.metrics_urls)),
    ]


def _quality(registry: Registry, challenger: str, policy: PromotionConfig) -> _Finding:
    try:
        manifest = registry.load(challenger)
    except ArtifactError as error:
        return _Finding("withhold", f"challenger {challenger} does not verify: {error}")
    measured = evaluation_average_precision(manifest)
    if measured is None:
        return _Finding("withhold", "its manifest records no average precision")
    value, where = measured
    text = f"average precision {value:.3f} on its {where} ({policy.min_average_precision:g} needed)"
    return _Finding("met" if value >= policy.min_average_precision else "withhold", text)


def _shadow_time(
    history: Sequence[HistoryEntry], challenger: str, policy: PromotionConfig, now: datetime
) -> _Finding:
    named_at = named_challenger_at(history, challenger)
    if named_at is None:
        return _Finding("withhold", "no history entry names it challenger: shadow time unknown")
    hours = (now - named_at).total_seconds() / 3_600
    text = f"in shadow {hours:.1f} h ({policy.shadow_hours:g} needed)"
    return _Finding("met" if hours >= policy.shadow_hours else "wait", text)


def _shadow_agreement(
    shadow: ShadowCounts | None, policy: PromotionConfig, *, metrics_configured: bool
) -> _Finding:
    if not metrics_configured:
        return _Finding("withhold", "no metrics_urls configured: shadow agreement unmeasured")
    if shadow is None:
        return _Finding("wait", "no server answered that it shadows it")
    needed = f"{policy.min_comparisons} comparisons and agreement {policy.min_agreement:g} needed"
    text = f"{shadow} ({needed})"
    if shadow.comparisons < policy.min_comparisons:
        return _Finding("wait", text)
    agreement = shadow.agreement or 0.0
    return _Finding("met" if agreement >= policy.min_agreement else "withhold", text)


def _already_withheld(history: Sequence[HistoryEntry], version: str) -> bool:
    return any(
        entry.action == "refuse" and entry.version == version and entry.reason.startswith(WITHHELD)
        for entry in history
    )
