"""Tests for service.core.rules and rule_compiler: the rule language, its safety, its types,
the precedence of lists and rules, and the scorer deciding with them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from service.core.card_tokens import CardTokenizer
from service.core.domain import Decision, DecisionSource, EntryMode, FallbackReason, Transaction
from service.core.rule_compiler import RuleError, compile_lists, compile_rules, parse_document
from service.core.rules import RuleBook
from service.core.scoring import FallbackPolicy, Scorer
from service.core.validation import ScoringLimits
from service.features import FeatureEngine
from service.features.config import FeatureConfig
from service.features.engine import FEATURE_NAMES
from service.model.registry import CHAMPION
from service.model.rule_registry import CONTENT_FILE, RuleRegistry
from service.model.rule_store import RuleStore
from service.model.rule_writer import change_list, publish
from tests.factories import raw_transaction

TOKENIZER = CardTokenizer(b"test key")
PAN = "4111111111111111"
BIG_CNP = {
    "id": "big_cnp_eur",
    "action": "decline",
    "reason_code": "LARGE_CARD_NOT_PRESENT",
    "when": {
        "all": [
            {"field": "amount", "op": ">", "value": 5000},
            {"field": "currency", "op": "==", "value": "EUR"},
            {"field": "card_present", "op": "==", "value": False},
        ]
    },
}
NIGHT_REVIEW = {
    "id": "ecommerce_busy_card",
    "action": "review",
    "reason_code": "BUSY_CARD_ONLINE",
    "when": {
        "all": [
            {"field": "entry_mode", "op": "in", "value": ["ecommerce", "MANUAL"]},
            {"field": "features.card_tx_count_1h", "op": ">=", "value": 3},
        ]
    },
}
VIP = {
    "id": "vip_merchant",
    "action": "allow",
    "reason_code": "VIP_MERCHANT",
    "when": {"field": "merchant_id", "op": "in", "value": ["m-vip"]},
}
HIGH_SCORE_ABROAD = {
    "id": "score_abroad",
    "action": "review",
    "reason_code": "SCORE_ABROAD",
    "when": {
        "all": [
            {"field": "score", "op": ">", "value": 0.3},
            {"field": "features.country_differs_from_card_home", "op": "==", "value": 1},
        ]
    },
}


def _tx(**changes: Any) -> Transaction:
    tx = Transaction("t1", 1.7e9, "card-1", "term-1", 10.0, "m-1", 5411, EntryMode.CHIP, "EUR",
                     "FR", True)  # fmt: skip
    return tx._replace(**changes)


def _features(**values: float) -> list[float]:
    row = [0.0] * len(FEATURE_NAMES)
    for name, value in values.items():
        row[FEATURE_NAMES.index(name)] = value
    return row


def _rules(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"format": 1, "rules": list(rules)}


def _lists(**by_list: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entry = {"reason": "seen in an attack", "added_by": "ana", "added_at": 0.0}
    return {
        "format": 1,
        **{
            name: {kind: {value: entry | extra for value, extra in values.items()}
                   for kind, values in kinds.items()}
            for name, kinds in by_list.items()
        },
    }  # fmt: skip


def test_precedence_block_then_allow_then_decline_review_allow_rules() -> None:
    rules = compile_rules(
        _rules(VIP, NIGHT_REVIEW, BIG_CNP, HIGH_SCORE_ABROAD), "r1", FEATURE_NAMES
    )
    lists = compile_lists(
        _lists(block={"terminal": {"term-bad": {}}}, allow={"merchant": {"m-friend": {}}}), "l1"
    )
    book = RuleBook(rules, lists)
    big_cnp = _tx(amount=6000.0, card_present=False)
    busy = _features(card_tx_count_1h=3)

    def decided(tx: Transaction, features: Sequence[float] | None, score: float | None) -> str:
        verdict = book.decide(tx, features, score, "")
        return "" if verdict is None else f"{verdict.rule_id}@{verdict.version}"

    assert decided(big_cnp._replace(terminal_id="term-bad"), busy, 0.9) == "block_list.terminal@l1"
    assert decided(big_cnp._replace(merchant_id="m-friend"), busy, 0.9) == "allow_list.merchant@l1"
    # Decline before review, review before allow, whatever the file order.
    assert (
        decided(big_cnp._replace(merchant_id="m-vip", entry_mode=EntryMode.ECOMMERCE), busy, 0.9)
        == "big_cnp_eur@r1"
    )
    assert (
        decided(_tx(merchant_id="m-vip", entry_mode=EntryMode.MANUAL), busy, 0.1)
        == "ecommerce_busy_card@r1"
    )
    assert decided(_tx(merchant_id="m-vip"), busy, 0.1) == "vip_merchant@r1"
    assert decided(_tx(), _features(country_differs_from_card_home=1), 0.31) == "score_abroad@r1"
    assert decided(_tx(), _features(country_differs_from_card_home=1), 0.3) == ""
    # No score (fallback): score rules are skipped, the others still decide; no features
    # (deadline, clock skew): only lists and transaction-only rules.
    assert decided(_tx(), _features(country_differs_from_card_home=1), None) == ""
    assert decided(_tx(entry_mode=EntryMode.MANUAL), busy, None) == "ecommerce_busy_card@r1"
    assert decided(_tx(entry_mode=EntryMode.MANUAL), None, None) == ""
    assert decided(big_cnp, None, None) == "big_cnp_eur@r1"
    # Unknown card_present is neither present nor not present for == false.
    assert decided(big_cnp._replace(card_present=None), busy, 0.1) == ""


def test_list_entries_expire_at_event_time_and_bins_match_6_to_8_digits() -> None:
    lists = compile_lists(
        _lists(block={"card": {"card-1": {"expires_at": 100.0}}, "bin": {"411111": {}}}), "l1"
    )
    book = RuleBook(compile_rules(_rules(), "", FEATURE_NAMES), lists)
    assert book.decide(_tx(timestamp=99.0), None, None, "") is not None
    assert book.decide(_tx(timestamp=100.0), None, None, "") is None
    assert book.decide(_tx(timestamp=100.0), None, None, "41111111") is not None
    assert book.decide(_tx(timestamp=100.0), None, None, "41111211") is None
    verdict = book.decide(_tx(timestamp=100.0), None, None, "41111111")
    assert verdict is not None
    assert verdict.reason.code == "BLOCK_LIST_BIN"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"field": "amount", "op": ">", "value": "5000"}, "amount is a number, not '5000'"),
        ({"field": "amount", "op": "starts_with", "value": 5}, "amount (number) takes"),
        ({"field": "card_present", "op": "==", "value": "no"}, "card_present takes true or false"),
        ({"field": "amount", "op": ">", "value": True}, "amount is a number, not True"),
        ({"field": "entry_mode", "op": "==", "value": "teleport"}, "entry_mode is one of"),
        ({"field": "features.no_such", "op": ">", "value": 1}, "unknown field 'features.no_such'"),
        ({"field": "currency", "op": "in", "value": []}, "in takes a non-empty list"),
        ({"field": "amount", "op": ">", "value": float("inf")}, "finite numbers only"),
        ({"field": "amount", "op": ">"}, "a comparison needs field, op and value"),
        ({"sometimes": []}, "unknown condition 'sometimes'"),
    ],
)
def test_type_and_name_errors_name_the_rule_and_the_part(
    rule: dict[str, Any], problem: str
) -> None:
    with pytest.raises(RuleError) as raised:
        compile_rules(_rules(BIG_CNP, {**VIP, "id": "bad_one", "when": rule}), "", FEATURE_NAMES)
    assert "rule 'bad_one' when" in str(raised.value)
    assert problem in str(raised.value)


def test_rule_set_errors() -> None:
    with pytest.raises(RuleError, match="rule 'big_cnp_eur': the id is used twice"):
        compile_rules(_rules(BIG_CNP, BIG_CNP), "", FEATURE_NAMES)
    with pytest.raises(RuleError, match="rule 'x' action: must be one of decline, review, allow"):
        compile_rules(_rules({**BIG_CNP, "id": "x", "action": "approve"}), "", FEATURE_NAMES)
    with pytest.raises(RuleError, match="reason_code: must be 1-48 of A-Z"):
        compile_rules(_rules({**BIG_CNP, "reason_code": "lower"}), "", FEATURE_NAMES)
    with pytest.raises(RuleError, match="not valid TOML"):
        parse_document("[[rules]\nid = 'x'", toml=True, what="rules.toml")
    with pytest.raises(RuleError, match="a BIN is 6 to 8 digits"):
        compile_lists(_lists(block={"bin": {"41": {}}}), "")


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"field": "amount", "op": ">", "value": 1}
    for _ in range(depth):
        node = {"not": node}
    return node


@pytest.mark.parametrize(
    ("attempt", "problem"),
    [
        # Reading a file, importing a module, reaching Python objects: names are looked up
        # in a fixed catalogue and table, never evaluated.
        ({"field": "open('/etc/passwd').read()", "op": "==", "value": ""}, "unknown field"),
        ({"field": "__import__('os').system('id')", "op": "==", "value": 0}, "unknown field"),
        ({"field": "amount.__class__.__mro__", "op": "==", "value": 0}, "unknown field"),
        ({"field": "amount", "op": "__import__", "value": "os"}, "takes ==, !=, <"),
        ({"field": "amount", "op": "eval", "value": "1"}, "takes ==, !=, <"),
        ({"field": "currency", "op": "==", "value": {"__reduce__": "os.system"}}, "is text"),
        # Looping forever: the language has no loop, no recursion and no reference; a
        # condition nested without end is refused at a fixed depth.
        ({"field": "amount", "op": "while", "value": True}, "takes ==, !=, <"),
        (_nested(10_000), "conditions nest deeper than 5 levels"),
        ({"all": [{"field": "amount", "op": ">", "value": 1}] * 1000}, "more than 32 comparisons"),
    ],
)
def test_no_expression_can_read_files_import_modules_or_loop(
    attempt: dict[str, Any], problem: str, tmp_path: Path
) -> None:
    """Each attempt, written into a rule file as an analyst would, is refused at publish."""
    rule = {"id": "evil", "action": "allow", "reason_code": "EVIL", "when": attempt}
    with pytest.raises(RuleError, match=problem):
        publish(tmp_path, "rules", _rules(rule), feature_names=FEATURE_NAMES, by="t", reason="t")
    assert RuleRegistry(tmp_path, "rules").versions() == []


def test_a_deeply_nested_json_file_is_refused_not_crashed() -> None:
    text = '{"rules": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(RuleError, match="not valid JSON"):
        parse_document(text, toml=False, what="rules.json")


def test_scorer_decides_by_rules_and_lists_model_or_not(tmp_path: Path) -> None:
    """No model loaded here: the fallback decides unless a list or transaction rule does,
    and the answer names the rule, its version and its reason code."""
    publish(tmp_path, "rules", _rules(BIG_CNP, HIGH_SCORE_ABROAD), feature_names=FEATURE_NAMES,
            by="ana", reason="attack of 10:00")  # fmt: skip
    change_list(tmp_path, name="block", kind="card", value=PAN, add=True, by="ana",
                reason="stolen", card_token=TOKENIZER.token)  # fmt: skip
    store = RuleStore(tmp_path, FEATURE_NAMES)
    report = store.refresh()
    assert [change.kind for change in report.changes] == ["rules", "lists"]
    assert report.refusals == []
    scorer: Scorer[Any] = Scorer(
        FeatureEngine(FeatureConfig()),
        _NoModel(),
        tokenizer=TOKENIZER,
        limits=ScoringLimits(),
        fallback=FallbackPolicy(),
        rules=store,
    )
    blocked = scorer.score(raw_transaction(1, card_id=PAN))
    assert (blocked.decision, blocked.source, blocked.rule_id) == (
        Decision.DECLINE, DecisionSource.RULE, "block_list.card"
    )  # fmt: skip
    assert blocked.rules_version == store.versions["lists"]
    assert blocked.fallback_reason is FallbackReason.MODEL_UNAVAILABLE
    assert [reason.code for reason in blocked.reasons] == ["BLOCK_LIST_CARD"]
    big = scorer.score(raw_transaction(2, amount_minor=600_000, card_present=False))
    assert (big.rule_id, big.reasons[0].code) == ("big_cnp_eur", "LARGE_CARD_NOT_PRESENT")
    plain = scorer.score(raw_transaction(3))
    assert (plain.source, plain.rule_id) == (DecisionSource.FALLBACK, "")
    # The lists file holds the token, never the card number.
    lists_dir = RuleRegistry(tmp_path, "lists").versions_dir
    stored = "".join(path.read_text() for path in lists_dir.glob(f"*/{CONTENT_FILE}"))
    assert PAN not in stored
    assert TOKENIZER.token(PAN) in stored


def test_a_broken_rule_set_is_refused_at_load_and_the_old_one_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = publish(tmp_path, "rules", _rules(BIG_CNP), feature_names=FEATURE_NAMES, by="a",
                   reason="first")  # fmt: skip
    store = RuleStore(tmp_path, FEATURE_NAMES)
    store.refresh()
    registry = RuleRegistry(tmp_path, "rules")
    # A set written past the publish check (another tool, an older release): the server
    # compiles it again and refuses it.
    broken = dict(BIG_CNP, id="typo", when={"field": "amout", "op": ">", "value": 1})
    with monkeypatch.context() as patched:
        patched.setattr("service.model.rule_writer.check_document", lambda *args: None)
        bad = publish(tmp_path, "rules", _rules(broken), feature_names=FEATURE_NAMES, by="a",
                      reason="second")  # fmt: skip
    report = store.refresh()
    (refusal,) = report.refusals
    assert (refusal.version, refusal.reason) == (bad, "invalid_rule")
    assert "rule 'typo' when.field: unknown field 'amout'" in refusal.detail
    assert store.versions["rules"] == good
    assert registry.alias(CHAMPION) == bad
    assert store.refresh().refusals == []  # refused once, not at every poll
    # A version whose content changed after publishing does not verify.
    other = publish(tmp_path, "rules", _rules(VIP), feature_names=FEATURE_NAMES, by="a",
                    reason="third")  # fmt: skip
    (registry.versions_dir / other / CONTENT_FILE).write_text(json.dumps(_rules(BIG_CNP)))
    (refusal,) = store.refresh().refusals
    assert (refusal.version, refusal.reason) == (other, "checksum")
    assert store.versions["rules"] == good


@dataclasses.dataclass
class _NoModel:
    current: None = None
