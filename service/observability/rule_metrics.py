"""The metrics of lists and analyst rules: loads, refusals, and hits per rule.

    fraud_rules_loads_total{kind, alias}        rule sets and lists swapped in
    fraud_rules_refusals_total{kind, reason}    versions refused (the old one serves on)
    fraud_rule_hits_total{rule_set, rule}       answers a rule or list decided ("champion"),
                                                and those the shadow rule set would have
                                                ("challenger")

A rule's counter child is bound the first time the rule hits and kept: rule ids are few (a
set holds at most 500), so the label set stays bounded, and a request pays a dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter

from service.core.domain import ScoreResult, Transaction

RULE_LOADS = Counter(
    "fraud_rules_loads", "Rule sets and lists loaded and swapped in, by kind and alias.",
    ["kind", "alias"],
)  # fmt: skip
RULE_REFUSALS = Counter(
    "fraud_rules_refusals",
    "Rule set or list versions refused at load (the version loaded before serves on), by "
    "kind and reason.",
    ["kind", "reason"],
)
RULE_HITS = Counter(
    "fraud_rule_hits",
    "Answers a list or rule decided (rule_set champion), and those the shadow rule set would "
    "have decided (rule_set challenger), by rule id.",
    ["rule_set", "rule"],
)


class RuleHitCounters:
    """The `fraud_rule_hits_total` children of one rule set label, bound once per rule."""

    __slots__ = ("_children", "_rule_set")

    def __init__(self, rule_set: str) -> None:
        self._rule_set = rule_set
        self._children: dict[str, Counter] = {}

    def count(self, rule_id: str) -> None:
        child = self._children.get(rule_id)
        if child is None:
            child = self._children[rule_id] = RULE_HITS.labels(self._rule_set, rule_id)
        child.inc()


class RuleHitMetrics:
    """Counts the answers lists and rules decided (`service.core.ports.AnswerListener`)."""

    def __init__(self) -> None:
        self._counters = RuleHitCounters("champion")

    def on_answer(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        result: ScoreResult,
        model: object,
    ) -> None:
        if result.rule_id:
            self._counters.count(result.rule_id)
