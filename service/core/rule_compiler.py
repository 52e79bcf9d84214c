"""Rule and list documents checked and compiled into `service.core.rules` objects.

The language is declarative data, never code: a rule is an id, an action, a reason code
and a condition; a condition is a comparison `{field, op, value}` or `{all: [...]}`,
`{any: [...]}`, `{not: ...}`. Fields come from a fixed catalogue, operators from a fixed
table, values are literals checked against the field's type; nothing is evaluated,
imported, looked up by attribute or repeated, and nesting and sizes are bounded. So a rule
file cannot read a file, import a module or loop: a field, operator or value that tries is
refused by name. The server compiles at load what `fraud-train rules validate` and
`publish` compiled, with this same code, so a set that passed there loads here.

Why closures rather than CEL: a request pays one Python call per comparison, with no
activation map built per request. Measured on 50 typical rules (benchmarks/RESULTS.md,
"Lists and rules", `python -m benchmarks.measurements.rule_cost`), the closures cost
about a quarter of what Google's compiled CEL bindings (`common-expression-language`)
cost with all 50 conditions chained into one program, the cheapest way to use them, and
a small fraction of one program per rule or of `cel-python`; a CEL rule would also need
its activation map, and its answer mapped back to a rule. The schema is the smaller
language too: what it cannot say (arithmetic, functions) is what it need not police.

Every problem is a `RuleError` naming the rule (by id, or by position before its id is
known) and the path of the faulty part, e.g.
`rule 'big_cnp' when.all[2].value: card_present takes true or false, not 'no'`.
"""

from __future__ import annotations

import json
import math
import operator
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from service.core.domain import Decision, EntryMode, Reason, Transaction
from service.core.rules import (
    ACTION_DECISIONS,
    LIST_KINDS,
    LIST_NAMES,
    RULE_ACTIONS,
    CompiledRule,
    ListEntry,
    ListKind,
    Lists,
    Predicate,
    RuleAction,
    RuleSet,
    Verdict,
    list_rule_id,
)

FORMAT = 1
MAX_RULES = 500
MAX_DEPTH = 5
MAX_CONDITIONS = 32
MAX_SET_VALUES = 10_000
MAX_TEXT = 256
MAX_LIST_ENTRIES = 1_000_000
RULE_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
REASON_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,47}")

FieldType = Literal["number", "text", "flag", "entry_mode"]
_OPERATORS: Mapping[FieldType, tuple[str, ...]] = {
    "number": ("==", "!=", "<", "<=", ">", ">=", "in", "not_in"),
    "text": ("==", "!=", "in", "not_in", "starts_with"),
    "entry_mode": ("==", "!=", "in", "not_in"),
    "flag": ("==", "!="),
}
_COMPARE: Mapping[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda value, values: value in values,
    "not_in": lambda value, values: value not in values,
    "starts_with": lambda value, prefix: value.startswith(prefix),
}
# The transaction's fields a rule may read: their position in `Transaction` and type.
_TRANSACTION_FIELDS: Mapping[str, tuple[int, FieldType]] = {
    "amount": (Transaction._fields.index("amount"), "number"),
    "currency": (Transaction._fields.index("currency"), "text"),
    "country": (Transaction._fields.index("country"), "text"),
    "mcc": (Transaction._fields.index("mcc"), "number"),
    "entry_mode": (Transaction._fields.index("entry_mode"), "entry_mode"),
    "card_present": (Transaction._fields.index("card_present"), "flag"),
    "merchant_id": (Transaction._fields.index("merchant_id"), "text"),
    "terminal_id": (Transaction._fields.index("terminal_id"), "text"),
    "card_id": (Transaction._fields.index("card_id"), "text"),
}
FEATURE_PREFIX = "features."


class RuleError(ValueError):
    """A rule or list document that must not be published or loaded; says which and why."""


def parse_document(text: str, *, toml: bool, what: str) -> dict[str, Any]:
    """The object in `text`, TOML or JSON; RuleError naming `what` when it is not one."""
    try:
        document = tomllib.loads(text) if toml else json.loads(text)
    except (ValueError, RecursionError) as error:
        raise RuleError(f"{what}: not valid {'TOML' if toml else 'JSON'}: {error}") from None
    if not isinstance(document, dict):
        raise RuleError(f"{what}: the top level must be a table (object)")
    return document


def field_names(feature_names: Sequence[str]) -> list[str]:
    """Every field a rule may read, as rules name them."""
    return [
        *_TRANSACTION_FIELDS,
        "card_bin",
        "score",
        *(FEATURE_PREFIX + name for name in feature_names),
        *(list_rule_id(name, kind) for name in LIST_NAMES for kind in LIST_KINDS),
    ]


def compile_rules(
    document: Mapping[str, Any], version: str, feature_names: Sequence[str]
) -> RuleSet:
    """The rule set `document` describes, compiled; RuleError for the first problem."""
    _only_keys(document, {"format", "rules"}, "rule set")
    if document.get("format", FORMAT) != FORMAT:
        raise RuleError(f"rule set: format must be {FORMAT}")
    rules = document.get("rules", [])
    if not isinstance(rules, list):
        raise RuleError("rule set: 'rules' must be a list of rules")
    if len(rules) > MAX_RULES:
        raise RuleError(f"rule set: {len(rules)} rules, more than {MAX_RULES}")
    features = {name: index for index, name in enumerate(feature_names)}
    compiled: list[CompiledRule] = []
    seen: set[str] = set()
    for position, rule in enumerate(rules):
        made = _compile_rule(rule, position, version, features)
        if made.rule_id in seen:
            raise RuleError(f"rule {made.rule_id!r}: the id is used twice")
        seen.add(made.rule_id)
        compiled.append(made)
    return RuleSet(version, compiled)


def _compile_rule(
    rule: object, position: int, version: str, features: Mapping[str, int]
) -> CompiledRule:
    name = f"rule #{position + 1}"
    if not isinstance(rule, dict):
        raise RuleError(f"{name}: must be a table (object)")
    rule_id = rule.get("id")
    if not isinstance(rule_id, str) or not RULE_ID.fullmatch(rule_id):
        raise RuleError(f"{name} id: must be 1-64 of a-z 0-9 _ . - (starting a-z or 0-9)")
    name = f"rule {rule_id!r}"
    _only_keys(rule, {"id", "action", "reason_code", "description", "when"}, name)
    action = rule.get("action")
    if action not in RULE_ACTIONS:
        raise RuleError(f"{name} action: must be one of {', '.join(RULE_ACTIONS)}")
    code = rule.get("reason_code")
    if not isinstance(code, str) or not REASON_CODE.fullmatch(code):
        raise RuleError(f"{name} reason_code: must be 1-48 of A-Z 0-9 _ (starting A-Z)")
    description = rule.get("description", "")
    if not isinstance(description, str) or len(description) > 1000:
        raise RuleError(f"{name} description: must be text of 1000 characters at most")
    if "when" not in rule:
        raise RuleError(f"{name}: 'when' (its condition) is missing")
    builder = _Builder(name, features)
    predicate = builder.condition(rule["when"], "when", 0)
    checked_action: RuleAction = action
    decision: Decision = ACTION_DECISIONS[checked_action]
    verdict = Verdict(rule_id, version, decision, Reason(code, f"rule:{rule_id}", 0.0))
    return CompiledRule(
        rule_id,
        checked_action,
        predicate,
        verdict,
        reads_score=builder.reads_score,
        reads_features=builder.reads_features,
        reads_bin=builder.reads_bin,
    )


class _Builder:
    """Compiles one rule's condition tree, noting which inputs it reads."""

    def __init__(self, rule: str, features: Mapping[str, int]) -> None:
        self.rule = rule
        self.features = features
        self.conditions = 0
        self.reads_score = False
        self.reads_features = False
        self.reads_bin = False

    def fail(self, path: str, problem: str) -> RuleError:
        return RuleError(f"{self.rule} {path}: {problem}")

    def condition(self, node: object, path: str, depth: int) -> Predicate:
        if depth > MAX_DEPTH:
            raise self.fail(path, f"conditions nest deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict):
            raise self.fail(
                path, "a condition must be a table: {field, op, value}, all, any or not"
            )
        if "field" in node:
            _only_keys(node, {"field", "op", "value"}, f"{self.rule} {path}")
            self.conditions += 1
            if self.conditions > MAX_CONDITIONS:
                raise self.fail(path, f"more than {MAX_CONDITIONS} comparisons in one rule")
            return self.comparison(node, path)
        if len(node) != 1:
            raise self.fail(path, "a condition is one of {field, op, value}, all, any or not")
        ((key, inner),) = node.items()
        if key == "not":
            negated = self.condition(inner, f"{path}.not", depth + 1)
            return lambda tx, f, s, b, lists: not negated(tx, f, s, b, lists)
        if key not in ("all", "any"):
            raise self.fail(path, f"unknown condition {key!r}: use field/op/value, all, any or not")
        if not isinstance(inner, list) or not inner:
            raise self.fail(f"{path}.{key}", "must be a non-empty list of conditions")
        parts = [
            self.condition(item, f"{path}.{key}[{index}]", depth + 1)
            for index, item in enumerate(inner)
        ]
        return _every(parts) if key == "all" else _some(parts)

    def comparison(self, node: Mapping[str, Any], path: str) -> Predicate:
        field = node["field"]
        if not isinstance(field, str):
            raise self.fail(f"{path}.field", "must be a field name")
        if "op" not in node or "value" not in node:
            raise self.fail(path, "a comparison needs field, op and value")
        op = node["op"]
        source, field_type = self.source(field, f"{path}.field")
        if not isinstance(op, str) or op not in _OPERATORS[field_type]:
            raise self.fail(
                f"{path}.op",
                f"{field} ({field_type}) takes {', '.join(_OPERATORS[field_type])}, not {op!r}",
            )
        value = _checked_value(
            field, field_type, op, node["value"], lambda p: self.fail(f"{path}.value", p)
        )
        compare = _COMPARE[op]
        return source(compare, value)

    def source(
        self, field: str, path: str
    ) -> tuple[Callable[[Callable[[Any, Any], bool], Any], Predicate], FieldType]:
        """How to read `field`, as a maker of predicates given a comparison and a value."""
        if field in _TRANSACTION_FIELDS:
            index, field_type = _TRANSACTION_FIELDS[field]
            return (lambda cmp, v: lambda tx, f, s, b, lists: cmp(tx[index], v)), field_type
        if field.startswith(FEATURE_PREFIX) and field[len(FEATURE_PREFIX) :] in self.features:
            column = self.features[field[len(FEATURE_PREFIX) :]]
            self.reads_features = True

            def feature(cmp: Callable[[Any, Any], bool], v: Any) -> Predicate:
                return lambda tx, f, s, b, lists: cmp(f[column], v)  # type: ignore[index]

            return feature, "number"
        if field == "score":
            self.reads_score = True
            return (lambda cmp, v: lambda tx, f, s, b, lists: cmp(s, v)), "number"
        if field == "card_bin":
            self.reads_bin = True
            return (lambda cmp, v: lambda tx, f, s, b, lists: cmp(b, v)), "text"
        for name in LIST_NAMES:
            for kind in LIST_KINDS:
                if field == list_rule_id(name, kind):
                    return _membership(self, name, kind), "flag"
        raise self.fail(
            path,
            f"unknown field {field!r}: transaction fields ({', '.join(_TRANSACTION_FIELDS)}), "
            f"card_bin, score, {FEATURE_PREFIX}<feature name>, block_list.<kind> or "
            f"allow_list.<kind> (kinds: {', '.join(LIST_KINDS)})",
        )


def _membership(
    builder: _Builder, name: Literal["block", "allow"], kind: ListKind
) -> Callable[[Callable[[Any, Any], bool], Any], Predicate]:
    if kind == "bin":
        builder.reads_bin = True

    def make(cmp: Callable[[Any, Any], bool], v: Any) -> Predicate:
        return lambda tx, f, s, b, lists: cmp(lists.holds(name, kind, tx, b), v)

    return make


def _every(parts: Sequence[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda tx, f, s, b, lists: first(tx, f, s, b, lists) and second(tx, f, s, b, lists)
    held = tuple(parts)

    # A plain loop, not all() over a generator: no generator object per call on the hot path.
    def every(
        tx: Transaction, f: Sequence[float] | None, s: float | None, b: str, lists: Lists
    ) -> bool:
        for part in held:  # noqa: SIM110
            if not part(tx, f, s, b, lists):
                return False
        return True

    return every


def _some(parts: Sequence[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    held = tuple(parts)

    def some(
        tx: Transaction, f: Sequence[float] | None, s: float | None, b: str, lists: Lists
    ) -> bool:
        for part in held:  # noqa: SIM110
            if part(tx, f, s, b, lists):
                return True
        return False

    return some


def _checked_value(
    field: str, field_type: FieldType, op: str, value: object, fail: Callable[[str], RuleError]
) -> object:
    """`value` as the comparison uses it (a frozenset for in/not_in, an EntryMode for an
    entry mode), once it is of `field`'s type."""
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise fail(f"{op} takes a non-empty list of values")
        if len(value) > MAX_SET_VALUES:
            raise fail(f"more than {MAX_SET_VALUES} values")
        return frozenset(_scalar(field, field_type, item, fail) for item in value)
    scalar = _scalar(field, field_type, value, fail)
    if op == "starts_with" and not scalar:
        raise fail("starts_with takes a non-empty prefix")
    return scalar


def _scalar(
    field: str, field_type: FieldType, value: object, fail: Callable[[str], RuleError]
) -> object:
    if field_type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"{field} is a number, not {_shown(value)}")
        if not math.isfinite(value):
            raise fail(f"{field} compares with finite numbers only")
        return value
    if field_type == "flag":
        if not isinstance(value, bool):
            raise fail(f"{field} takes true or false, not {_shown(value)}")
        return value
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise fail(f"{field} is text (at most {MAX_TEXT} characters), not {_shown(value)}")
    if field_type == "entry_mode":
        try:
            return EntryMode[value.upper()]
        except KeyError:
            raise fail(
                f"entry_mode is one of {', '.join(mode.name for mode in EntryMode)}, not {value!r}"
            ) from None
    return value


def _shown(value: object) -> str:
    """A value in an error message, cut short: it may be a whole table someone pasted."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RuleError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def compile_lists(document: Mapping[str, Any], version: str) -> Lists:
    """The lists `document` holds (`{"format": 1, "block": {kind: {value: entry}}, "allow":
    ...}`); RuleError for the first problem."""
    _only_keys(document, {"format", *LIST_NAMES}, "lists")
    if document.get("format", FORMAT) != FORMAT:
        raise RuleError(f"lists: format must be {FORMAT}")
    parsed: dict[str, dict[ListKind, dict[str, ListEntry]]] = {}
    for name in LIST_NAMES:
        kinds = document.get(name, {})
        if not isinstance(kinds, dict):
            raise RuleError(f"lists {name}: must be a table of kinds")
        _only_keys(kinds, set(LIST_KINDS), f"lists {name}")
        parsed[name] = {}
        for kind, entries in kinds.items():
            if not isinstance(entries, dict) or len(entries) > MAX_LIST_ENTRIES:
                raise RuleError(
                    f"lists {name}.{kind}: must be a table of at most {MAX_LIST_ENTRIES} entries"
                )
            parsed[name][kind] = {
                key: _list_entry(f"lists {name}.{kind}[{key!r}]", kind, key, entry)
                for key, entry in entries.items()
            }
    return Lists(version, parsed["block"], parsed["allow"])


def check_list_value(kind: ListKind, value: str) -> str | None:
    """Why `value` cannot be a `kind` list entry, or None when it can."""
    if not value or len(value) > MAX_TEXT:
        return f"a {kind} value is 1 to {MAX_TEXT} characters"
    if kind == "bin" and not (value.isascii() and value.isdigit() and 6 <= len(value) <= 8):
        return "a BIN is 6 to 8 digits"
    return None


def _list_entry(where: str, kind: str, key: str, entry: object) -> ListEntry:
    problem = check_list_value(kind, key)  # type: ignore[arg-type]
    if problem is not None:
        raise RuleError(f"{where}: {problem}")
    if not isinstance(entry, dict):
        raise RuleError(f"{where}: must be a table (reason, added_by, added_at, expires_at)")
    _only_keys(entry, {"reason", "added_by", "added_at", "expires_at"}, where)
    reason, added_by = entry.get("reason"), entry.get("added_by", "")
    added_at, expires_at = entry.get("added_at", 0.0), entry.get("expires_at")
    if not isinstance(reason, str) or not reason or not isinstance(added_by, str):
        raise RuleError(f"{where}: reason (non-empty text) and added_by (text) are required")
    for label, moment in (("added_at", added_at), ("expires_at", expires_at)):
        if moment is not None and (isinstance(moment, bool) or not isinstance(moment, int | float)):
            raise RuleError(f"{where} {label}: must be Unix seconds")
    return ListEntry(
        reason, added_by, float(added_at), None if expires_at is None else float(expires_at)
    )
