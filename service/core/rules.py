"""Analyst rules and allow/block lists beside the model: what decides before its thresholds.

Precedence, first match wins (docs/rules.md):

    1. block lists (card, BIN, terminal, merchant, country)  → DECLINE
    2. allow lists (the same kinds)                           → APPROVE
    3. decline rules, in file order                           → DECLINE
    4. review rules, in file order                            → REVIEW
    5. allow rules, in file order                             → APPROVE
    6. the model's thresholds (or the fallback policy when the model cannot answer)

A rule that reads the score is skipped when there is none (the fallback answers), and one
that reads features when none were computed (a "deadline" or "clock_skew" answer): the
lists and every other rule still apply.

The hot path: `RuleBook.decide` runs on every scored transaction. Rules are compiled once,
when a rule set loads (`service.core.rule_compiler`), into closures over the transaction
tuple, the feature vector, the score, the card's BIN and the lists; a list lookup is one
dict lookup. Each possible verdict is built at load, so a request allocates nothing here.

List entries expire at their `expires_at`, compared with the transaction's event time, so
that the offline backtest and the server agree on a history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

from service.core.domain import Decision, Reason, Transaction

ListKind = Literal["card", "bin", "terminal", "merchant", "country"]
LIST_KINDS: tuple[ListKind, ...] = get_args(ListKind)
ListName = Literal["block", "allow"]
LIST_NAMES: tuple[ListName, ...] = get_args(ListName)
RuleAction = Literal["decline", "review", "allow"]
RULE_ACTIONS: tuple[RuleAction, ...] = get_args(RuleAction)
ACTION_DECISIONS: Mapping[RuleAction, Decision] = {
    "decline": Decision.DECLINE,
    "review": Decision.REVIEW,
    "allow": Decision.APPROVE,
}
# A BIN is the first 6 to 8 digits of a card number; a list entry may be any of the three.
BIN_LENGTHS = (6, 7, 8)

# The transaction, its features (None: not computed), the score (None: no model answer),
# the card's BIN ("" when the caller sent a token) and the lists: every predicate's inputs.
Predicate = Callable[[Transaction, "Sequence[float] | None", "float | None", str, "Lists"], bool]


class Verdict(NamedTuple):
    """Who decided instead of the model: `rule_id` is a rule's id or "<list>_list.<kind>",
    `version` the rules or lists version it came from, `reason` what the answer carries."""

    rule_id: str
    version: str
    decision: Decision
    reason: Reason


@dataclass(frozen=True, slots=True)
class ListEntry:
    """Why a value is listed, by whom, and until when (event time, Unix seconds; None: no
    expiry)."""

    reason: str
    added_by: str
    added_at: float
    expires_at: float | None = None


class Lists:
    """The allow and block lists of one lists version, as dicts for one-lookup membership."""

    __slots__ = ("allow", "block", "reads_bin", "version")

    def __init__(
        self,
        version: str,
        block: Mapping[ListKind, Mapping[str, ListEntry]],
        allow: Mapping[ListKind, Mapping[str, ListEntry]],
    ) -> None:
        self.version = version
        self.block = {kind: dict(block.get(kind, {})) for kind in LIST_KINDS}
        self.allow = {kind: dict(allow.get(kind, {})) for kind in LIST_KINDS}
        self.reads_bin = bool(self.block["bin"] or self.allow["bin"])

    @classmethod
    def empty(cls) -> Lists:
        return cls("", {}, {})

    def holds(self, name: ListName, kind: ListKind, tx: Transaction, card_bin: str) -> bool:
        """Whether `tx` (with its card's BIN) is on list `name` of `kind`, unexpired."""
        entries = (self.block if name == "block" else self.allow)[kind]
        if not entries:
            return False
        if kind == "bin":
            return any(
                _live(entries.get(card_bin[:length]), tx.timestamp)
                for length in BIN_LENGTHS
                if len(card_bin) >= length
            )
        return _live(entries.get(_KEY_OF[kind](tx)), tx.timestamp)


def _live(entry: ListEntry | None, at: float) -> bool:
    return entry is not None and (entry.expires_at is None or at < entry.expires_at)


_KEY_OF: Mapping[ListKind, Callable[[Transaction], str]] = {
    "card": lambda tx: tx.card_id,
    "bin": lambda tx: "",
    "terminal": lambda tx: tx.terminal_id,
    "merchant": lambda tx: tx.merchant_id,
    "country": lambda tx: tx.country,
}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule, ready to run: its predicate and the verdict it gives when it holds."""

    rule_id: str
    action: RuleAction
    predicate: Predicate
    verdict: Verdict
    reads_score: bool
    reads_features: bool
    reads_bin: bool


class RuleSet:
    """A compiled, versioned rule set: decline, review, then allow rules, each in file order."""

    __slots__ = ("_ordered", "reads_bin", "rules", "version")

    def __init__(self, version: str, rules: Sequence[CompiledRule]) -> None:
        self.version = version
        self.rules = tuple(rules)
        self._ordered = tuple(
            rule for action in RULE_ACTIONS for rule in self.rules if rule.action == action
        )
        self.reads_bin = any(rule.reads_bin for rule in self.rules)

    @classmethod
    def empty(cls) -> RuleSet:
        return cls("", ())

    def first_hit(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        score: float | None,
        card_bin: str,
        lists: Lists,
    ) -> CompiledRule | None:
        """The first rule in precedence order that holds; rules whose inputs are missing
        are skipped."""
        for rule in self._ordered:
            if (rule.reads_score and score is None) or (rule.reads_features and features is None):
                continue
            if rule.predicate(tx, features, score, card_bin, lists):
                return rule
        return None

    def hits(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        score: float | None,
        card_bin: str,
        lists: Lists,
    ) -> list[CompiledRule]:
        """Every rule that holds, whichever decides: for the backtest and shadow counts."""
        return [
            rule
            for rule in self._ordered
            if not (rule.reads_score and score is None)
            and not (rule.reads_features and features is None)
            and rule.predicate(tx, features, score, card_bin, lists)
        ]


class RuleBook:
    """The lists and the rule set that decide now: one reference, swapped whole."""

    __slots__ = ("_list_verdicts", "lists", "reads_bin", "rules")

    def __init__(self, rules: RuleSet, lists: Lists) -> None:
        self.rules = rules
        self.lists = lists
        self.reads_bin = rules.reads_bin or lists.reads_bin
        self._list_verdicts = tuple(
            (name, kind, list_verdict(name, kind, lists.version))
            for name in LIST_NAMES
            for kind in LIST_KINDS
            if (lists.block if name == "block" else lists.allow)[kind]
        )

    def decide(
        self,
        tx: Transaction,
        features: Sequence[float] | None,
        score: float | None,
        card_bin: str,
    ) -> Verdict | None:
        """The verdict of the first list or rule that holds for `tx`, in precedence order;
        None to leave the decision to the model (or the fallback)."""
        lists = self.lists
        for name, kind, verdict in self._list_verdicts:
            if lists.holds(name, kind, tx, card_bin):
                return verdict
        rule = self.rules.first_hit(tx, features, score, card_bin, lists)
        return None if rule is None else rule.verdict


def list_rule_id(name: ListName, kind: ListKind) -> str:
    """The id a list's verdicts carry: "block_list.card", "allow_list.merchant", ..."""
    return f"{name}_list.{kind}"


def list_verdict(name: ListName, kind: ListKind, version: str) -> Verdict:
    """The verdict of a hit on list `name` of `kind` (reason code e.g. BLOCK_LIST_CARD)."""
    rule_id = list_rule_id(name, kind)
    code = f"{name}_list_{kind}".upper()
    decision = Decision.DECLINE if name == "block" else Decision.APPROVE
    return Verdict(rule_id, version, decision, Reason(code, f"rule:{rule_id}", 0.0))


def card_bin(card_number: str | None) -> str:
    """The BIN kept for the request: the first 8 digits of the card number found in the
    card id (`service.core.card_data.first_card_number`), "" for a token."""
    return "" if card_number is None else card_number[: BIN_LENGTHS[-1]]
