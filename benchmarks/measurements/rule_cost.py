"""What lists and 50 typical analyst rules cost per request, and the same rules in CEL.

    python -m benchmarks.measurements.rule_cost [--requests 20000]
        [--registry DIR --transactions 20000 --pairs 3]

1. In process, the rule book alone (`service.core.rules.RuleBook.decide`, as compiled by
   `service.core.rule_compiler`): lists only, the 50 rules only, both; on requests that hit
   nothing, so every rule is evaluated (the dearest case: a hit stops the walk).
2. The same 50 rules in Google's Common Expression Language, when its bindings are
   importable (they are not a project dependency: run this module with a throwaway
   virtualenv that has `common-expression-language` and `cel-python` and sees the project,
   see benchmarks/RESULTS.md): per request, the activation map built from the transaction,
   score and features, then either the 50 programs (given the map, or a `cel.Context`
   made once per request, which the bindings convert once), or one program chaining the
   50 conditions and returning the first rule that holds.
3. With `--registry` (a champion model), the whole scoring path in process
   (`benchmarks.measurements.scoring_path`) on a copy of the registry with and without the
   50 rules and the lists published, `--pairs` interleaved pairs: the CPU a server pays per
   answer for them, apart from gRPC.
"""

from __future__ import annotations

import argparse
import importlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.core.domain import EntryMode, Transaction
from service.core.rule_compiler import compile_lists, compile_rules
from service.core.rules import Lists, RuleBook, RuleSet
from service.features.engine import FEATURE_NAMES

RULES = 50
Rule = dict[str, Any]


def typical_rules(count: int = RULES) -> list[Rule]:
    """`count` rules of the shapes analysts write: amount by channel and country, score
    bands, velocity features, merchant categories, entry modes, with all/any/not."""
    made: list[Rule] = []
    countries = ["DE", "ES", "IT", "NL", "BE", "PT", "PL", "GB", "US", "BR"]
    for number in range(count):
        shape = number % 5
        limit = 2_000 + 500 * number
        if shape == 0:
            when: Rule = {"all": [
                {"field": "amount", "op": ">", "value": limit},
                {"field": "card_present", "op": "==", "value": False},
            ]}  # fmt: skip
        elif shape == 1:
            when = {"all": [
                {"field": "score", "op": ">", "value": 0.3 + number / 200},
                {"field": "country", "op": "in", "value": countries[number % 7 : number % 7 + 3]},
            ]}  # fmt: skip
        elif shape == 2:
            when = {"any": [
                {"field": "features.card_tx_count_1h", "op": ">=", "value": 20 + number},
                {"all": [
                    {"field": "features.amount_zscore_30d", "op": ">", "value": 6.0 + number / 10},
                    {"field": "amount", "op": ">", "value": limit},
                ]},
            ]}  # fmt: skip
        elif shape == 3:
            when = {"all": [
                {"field": "mcc", "op": "in", "value": [4829, 6051, 6211, 7995, 5967 + number]},
                {"field": "amount", "op": ">=", "value": limit / 4},
                {"not": {"field": "currency", "op": "==", "value": "EUR"}},
            ]}  # fmt: skip
        else:
            when = {"all": [
                {"field": "entry_mode", "op": "in", "value": ["manual", "magstripe"]},
                {"field": "features.country_differs_from_card_home", "op": "==", "value": 1.0},
                {"field": "amount", "op": ">", "value": limit / 2},
            ]}  # fmt: skip
        action = ("decline", "review", "review", "decline", "allow")[shape]
        made.append({"id": f"rule-{number:02d}", "action": action,
                     "reason_code": f"RULE_{number:02d}", "when": when})  # fmt: skip
    return made


def typical_lists(seed: int = 0) -> dict[str, Any]:
    """Block lists of 10,000 cards, 1,000 merchants and terminals, 200 BINs, 3 countries;
    allow lists of 1,000 cards and 100 merchants."""
    pick = random.Random(seed)
    entry = {"reason": "bench", "added_by": "bench", "added_at": 0.0}

    def values(prefix: str, count: int) -> dict[str, Any]:
        return {f"{prefix}{pick.getrandbits(64):016x}": entry for _ in range(count)}

    bins = {str(400_000 + pick.randrange(99_999)): entry for _ in range(200)}
    return {
        "format": 1,
        "block": {
            "card": values("tok_", 10_000),
            "merchant": values("m-", 1_000),
            "terminal": values("t-", 1_000),
            "bin": bins,
            "country": dict.fromkeys(("KP", "IR", "SY"), entry),
        },
        "allow": {"card": values("tok_", 1_000), "merchant": values("m-", 100)},
    }


def quiet_requests(count: int, seed: int = 1) -> list[tuple[Transaction, list[float], float]]:
    """Requests no list or rule holds for: ordinary card-present amounts at home."""
    pick = random.Random(seed)
    made = []
    for number in range(count):
        tx = Transaction(
            transaction_id=f"tx-{number}",
            timestamp=1_704_067_200.0 + number,
            card_id=f"tok_card{number % 5_000}",
            terminal_id=f"term-{number % 3_000}",
            amount=round(pick.uniform(1.0, 400.0), 2),
            merchant_id=f"merchant-{number % 200}",
            mcc=5411,
            entry_mode=EntryMode.CHIP,
            currency="EUR",
            country="FR",
            card_present=True,
        )
        features = [pick.uniform(0.0, 3.0) for _ in FEATURE_NAMES]
        made.append((tx, features, pick.uniform(0.0, 0.25)))
    return made


def rule_book_cost(requests: int) -> dict[str, float]:
    """Mean CPU µs per request of `RuleBook.decide`: lists only, rules only, both."""
    rules = compile_rules({"format": 1, "rules": typical_rules()}, "bench", FEATURE_NAMES)
    lists = compile_lists(typical_lists(), "bench")
    batch = quiet_requests(requests)
    books = {
        "nothing": RuleBook(RuleSet.empty(), Lists.empty()),
        "lists": RuleBook(RuleSet.empty(), lists),
        "rules": RuleBook(rules, Lists.empty()),
        "rules_and_lists": RuleBook(rules, lists),
    }
    figures = {name: _cpu_per_call(batch, _deciding(book)) for name, book in books.items()}
    figures["per_rule"] = (figures["rules"] - figures["nothing"]) / RULES
    return figures


def _deciding(book: RuleBook) -> Callable[[Transaction, list[float], float], object]:
    decide = book.decide
    return lambda tx, features, score: decide(tx, features, score, "45671234")


def _cpu_per_call(
    batch: Sequence[tuple[Transaction, list[float], float]],
    call: Callable[[Transaction, list[float], float], object],
) -> float:
    for tx, features, score in batch[:1_000]:
        call(tx, features, score)
    started = time.process_time()
    for tx, features, score in batch:
        if call(tx, features, score) is not None:
            raise AssertionError("a quiet request was decided: the measurement is not the dearest")
    return round((time.process_time() - started) / len(batch) * 1e6, 2)


def cel_text(node: Rule) -> str:
    """A rule condition of the project's schema as a CEL expression over the activation."""
    if "all" in node or "any" in node:
        joiner = " && " if "all" in node else " || "
        parts: list[Rule] = node["all"] if "all" in node else node["any"]
        return "(" + joiner.join(cel_text(part) for part in parts) + ")"
    if "not" in node:
        return f"!({cel_text(node['not'])})"
    field = node["field"].replace("features.", "f_")
    value = node["value"]
    if field == "entry_mode":
        value = [EntryMode[v.upper()].value for v in value] if isinstance(value, list) else value
    shown = repr(value).replace("True", "true").replace("False", "false").replace("'", '"')
    if node["op"] == "not_in":
        return f"!({field} in {shown})"
    if field in ("amount", "score") or field.startswith("f_"):
        shown = shown if "." in shown or isinstance(value, list) else f"{shown}.0"
        if isinstance(value, list):
            shown = "[" + ", ".join(f"{float(v)}" for v in value) + "]"
    return f"{field} {node['op']} {shown}"


def _activation(tx: Transaction, features: list[float], score: float) -> dict[str, Any]:
    """What a CEL binding needs per request: every readable value, by name."""
    context: dict[str, Any] = {
        "amount": tx.amount,
        "currency": tx.currency,
        "country": tx.country,
        "mcc": tx.mcc,
        "entry_mode": int(tx.entry_mode),
        "card_present": tx.card_present,
        "merchant_id": tx.merchant_id,
        "terminal_id": tx.terminal_id,
        "score": score,
    }
    for name, value in zip(FEATURE_NAMES, features, strict=True):
        context["f_" + name] = value
    return context


def cel_cost(requests: int) -> dict[str, float] | None:
    """Mean CPU µs per request of the 50 rules in the CEL bindings, when importable."""
    try:
        cel = importlib.import_module("cel")
    except ImportError:
        return None
    texts = [cel_text(rule["when"]) for rule in typical_rules()]
    programs = [cel.compile(text) for text in texts]
    chained = cel.compile(
        " : ".join(f"{text} ? {index}" for index, text in enumerate(texts)) + " : -1"
    )
    batch = quiet_requests(requests)

    def each(tx: Transaction, f: list[float], s: float) -> object:
        context = _activation(tx, f, s)
        for program in programs:
            if program.execute(context):
                return program
        return None

    def each_shared_context(tx: Transaction, f: list[float], s: float) -> object:
        context = cel.Context(_activation(tx, f, s))
        for program in programs:
            if program.execute(context):
                return program
        return None

    def chain(tx: Transaction, f: list[float], s: float) -> object:
        return None if chained.execute(_activation(tx, f, s)) == -1 else True

    return {
        "activation_only": _cpu_per_call(batch, lambda tx, f, s: _activation(tx, f, s) and None),
        "50_programs": _cpu_per_call(batch, each),
        "50_programs_one_context": _cpu_per_call(batch, each_shared_context),
        "one_chained_program": _cpu_per_call(batch, chain),
    }


def celpy_cost(requests: int) -> dict[str, float] | None:
    """The same with cel-python (pure Python), on fewer requests: it is slow."""
    try:
        celpy = importlib.import_module("celpy")
    except ImportError:
        return None
    environment = celpy.Environment()
    runners = [
        environment.program(environment.compile(cel_text(rule["when"]))) for rule in typical_rules()
    ]
    batch = quiet_requests(requests)

    def each(tx: Transaction, f: list[float], s: float) -> object:
        context = celpy.json_to_cel(_activation(tx, f, s))
        for runner in runners:
            if runner.evaluate(context):
                return runner
        return None

    return {"50_programs": _cpu_per_call(batch, each)}


def scoring_path_cost(registry: Path, transactions: int, pairs: int) -> list[tuple[float, float]]:
    """CPU µs per transaction of the scoring path without, then with, rules and lists."""
    from benchmarks.measurements.scoring_path import measure
    from service.model.rule_writer import publish

    results = []
    with tempfile.TemporaryDirectory() as directory:
        bare = Path(directory) / "bare"
        ruled = Path(directory) / "ruled"
        shutil.copytree(registry, bare, ignore=shutil.ignore_patterns("rules", "lists"))
        shutil.copytree(bare, ruled)
        document = {"format": 1, "rules": typical_rules()}
        publish(ruled, "rules", document, feature_names=FEATURE_NAMES, by="bench", reason="cost")
        lists = typical_lists()
        publish(ruled, "lists", lists, feature_names=FEATURE_NAMES, by="bench", reason="cost")
        for _ in range(pairs):
            without = measure(bare, transactions, 2_000, rules=True).cpu_seconds
            with_rules = measure(ruled, transactions, 2_000, rules=True).cpu_seconds
            results.append(
                (round(without / transactions * 1e6, 1), round(with_rules / transactions * 1e6, 1))
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--celpy-requests", type=int, default=1_000)
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    print(f"rule book, CPU µs per request: {rule_book_cost(args.requests)}")
    cel = cel_cost(args.requests)
    print(f"CEL (common-expression-language), CPU µs per request: {cel or 'not installed'}")
    celpy = celpy_cost(args.celpy_requests)
    print(f"CEL (cel-python), CPU µs per request: {celpy or 'not installed'}")
    if args.registry is not None:
        for without, with_rules in scoring_path_cost(args.registry, args.transactions, args.pairs):
            print(
                f"scoring path CPU µs/transaction: without rules {without}, with 50 rules and "
                f"lists {with_rules} (+{with_rules - without:.1f})"
            )


if __name__ == "__main__":
    main()
