"""Tests for benchmarks.measurements.rule_cost: its rules and lists are what the server
compiles, its requests are the dearest case (nothing holds, every rule runs), and its CEL
text says what the rules say."""

from __future__ import annotations

from benchmarks.measurements.rule_cost import (
    RULES,
    cel_text,
    quiet_requests,
    rule_book_cost,
    typical_lists,
    typical_rules,
)
from service.core.rule_compiler import compile_lists, compile_rules
from service.core.rules import RuleBook
from service.features.engine import FEATURE_NAMES


def test_the_rules_compile_and_no_quiet_request_is_decided() -> None:
    """50 rules of every action; lists of every kind on the block side; no hit."""
    rules = compile_rules({"rules": typical_rules()}, "bench", FEATURE_NAMES)
    lists = compile_lists(typical_lists(), "bench")
    assert len(rules.rules) == RULES
    assert {rule.action for rule in rules.rules} == {"decline", "review", "allow"}
    assert all(lists.block[kind] for kind in lists.block)
    book = RuleBook(rules, lists)
    assert all(book.decide(tx, f, s, "45671234") is None for tx, f, s in quiet_requests(500))


def test_cel_text_keeps_precedence_and_types() -> None:
    """`not` wraps its condition, numbers compare as doubles, entry modes as their numbers."""
    made = {rule["id"]: cel_text(rule["when"]) for rule in typical_rules(5)}
    assert made["rule-00"] == "(amount > 2000.0 && card_present == false)"
    assert made["rule-03"] == (
        '(mcc in [4829, 6051, 6211, 7995, 5970] && amount >= 875.0 && !(currency == "EUR"))'
    )
    assert made["rule-04"].startswith("(entry_mode in [4, 3] && ")


def test_the_rule_book_figures_name_each_book() -> None:
    """A short run reports the four books and the cost per rule."""
    figures = rule_book_cost(300)
    assert set(figures) == {"nothing", "lists", "rules", "rules_and_lists", "per_rule"}
    assert all(value >= 0 for value in figures.values())
