"""`fraud-train rules ...` as an analyst uses it, in this process on real files: publish
behind the backtest's decline-rate gate (or --force), shadow and promote, rollback, show,
the backtest report, and bad input exiting 2 with a message naming the problem."""

from __future__ import annotations

import json
import shutil
from itertools import islice
from pathlib import Path

import pytest

from service.model.registry import CHALLENGER, CHAMPION
from service.model.rule_registry import RuleRegistry
from tests.conftest import TrainedModel
from tests.training.cli.fraud_train import exit_code

ROWS = 300
EVERYTHING = """
[[rules]]
id = "all_of_it"
action = "decline"
reason_code = "EVERYTHING"
when = { field = "amount", op = ">", value = 0 }
"""
NARROW = """
[[rules]]
id = "big_not_present"
action = "decline"
reason_code = "LARGE_CARD_NOT_PRESENT"
description = "the issue's example, with a threshold this small history reaches"
when = { all = [
  { field = "amount", op = ">", value = 150 },
  { field = "card_present", op = "==", value = false },
] }

[[rules]]
id = "risky_abroad"
action = "review"
reason_code = "SCORE_ABROAD"
when = { all = [
  { field = "score", op = ">", value = 0.3 },
  { field = "features.country_differs_from_card_home", op = "==", value = 1.0 },
] }
"""


@pytest.fixture
def workspace(trained_model: TrainedModel, tmp_path: Path) -> dict[str, Path]:
    """A copy of the trained registry, a short history, and the two rule files."""
    registry = Path(shutil.copytree(trained_model.registry, tmp_path / "models"))
    history = tmp_path / "history.csv"
    with trained_model.history.open() as source:
        history.write_text("".join(islice(source, ROWS + 1)))
    (tmp_path / "everything.toml").write_text(EVERYTHING)
    (tmp_path / "narrow.toml").write_text(NARROW)
    return {
        "registry": registry,
        "history": history,
        "config": trained_model.config,
        "everything": tmp_path / "everything.toml",
        "narrow": tmp_path / "narrow.toml",
    }


def _rules(command: str, *args: str | Path, at: dict[str, Path]) -> int:
    where = ["--registry", str(at["registry"]), "--config", str(at["config"])]
    return exit_code(["rules", command, *map(str, args), *where])


def test_publish_is_gated_by_the_backtest_decline_rate_unless_forced(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Declining everything is refused (and the refusal audited); --force publishes it; a
    narrow set passes the gate; shadow, promote, rollback and show move and tell the aliases."""
    rules = RuleRegistry(workspace["registry"], "rules")
    data = ("--data", workspace["history"])
    by = ("--by", "ana", "--reason", "attack of 10:00")
    everything, narrow = workspace["everything"], workspace["narrow"]
    assert _rules("publish", everything, *data, *by, at=workspace) == 2
    assert "above rules_max_decline_rate" in capsys.readouterr().err
    assert rules.alias(CHAMPION) is None
    assert [entry.action for entry in rules.history()] == ["refuse"]
    assert _rules("publish", everything, "--force", *by, at=workspace) == 0
    forced = capsys.readouterr().out.split()[-1]
    assert _rules("publish", narrow, *data, *by, at=workspace) == 0
    narrow_version = capsys.readouterr().out.split()[-1]
    assert rules.alias(CHAMPION) == narrow_version != forced
    assert _rules("publish", everything, "--shadow", "--force", *by, at=workspace) == 0
    shadow = capsys.readouterr().out.split()[-1]
    assert (rules.alias(CHAMPION), rules.alias(CHALLENGER)) == (narrow_version, shadow)
    assert _rules("promote", *by, at=workspace) == 0
    assert rules.alias(CHAMPION) == shadow
    assert _rules("rollback", *by, at=workspace) == 0
    assert rules.alias(CHAMPION) == narrow_version
    capsys.readouterr()
    assert _rules("show", at=workspace) == 0
    shown = capsys.readouterr().out
    assert f'"champion": "{narrow_version}"' in shown
    assert "rollback" in shown
    assert "by ana: attack of 10:00" in shown


def test_backtest_reports_each_rule_the_whole_set_and_the_current_one(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Per rule: matched, decided, frauds, precision, recall, declined amount; the whole set
    against the current one; the JSON form says the same."""
    args = ("--data", workspace["history"], "--rules", workspace["narrow"])
    assert _rules("backtest", *args, "--json", at=workspace) == 0
    report = json.loads(capsys.readouterr().out)
    assert [rule["rule"] for rule in report["rules"]] == ["big_not_present", "risky_abroad"]
    assert report["history"]["transactions"] == ROWS
    declining = report["rules"][0]
    assert declining["decided"] > 0, "the rule hits nothing here: the test proves nothing"
    assert declining["declined_amount"] > 150 * declining["decided"]
    assert report["whole_set"]["rule_decline_rate"] == round(declining["decided"] / ROWS, 6)
    assert report["current_set"]["decided"] == 0
    assert report["changed_answers"] <= report["whole_set"]["decided"]  # only where rules decide
    assert _rules("backtest", *args, at=workspace) == 0
    table = capsys.readouterr().out
    assert f"big_not_present              decline  {declining['matched']:>8}" in table
    assert "answers changed against the current set" in table


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "cannot read", id="missing-file"),
        pytest.param("[[rules]\nid=", "not valid TOML", id="not-toml"),
        pytest.param(
            '[[rules]]\nid="x"\naction="decline"\nreason_code="X"\n'
            'when={field="amout", op=">", value=1}',
            "rule 'x' when.field: unknown field 'amout'",
            id="unknown-field",
        ),
        pytest.param(
            '[[rules]]\nid="x"\naction="decline"\nreason_code="X"\n'
            'when={field="card_present", op="==", value="no"}',
            "rule 'x' when.value: card_present takes true or false, not 'no'",
            id="wrong-type",
        ),
        pytest.param(
            '[[rules]]\nid="x"\naction="explode"\nreason_code="X"\nwhen={}',
            "rule 'x' action: must be one of decline, review, allow",
            id="bad-action",
        ),
    ],
)
def test_bad_rule_files_exit_2_naming_the_problem(
    workspace: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    message: str,
) -> None:
    """validate, publish and backtest all refuse the file with the same message."""
    path = tmp_path / "bad.toml"
    if content is not None:
        path.write_text(content)
    assert exit_code(["rules", "validate", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert _rules("publish", path, "--force", "--reason", "r", at=workspace) == 2
    assert _rules("backtest", "--data", workspace["history"], "--rules", path, at=workspace) == 2
    assert message in capsys.readouterr().err
    assert RuleRegistry(workspace["registry"], "rules").versions() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "bin", "--value", "12ab56"], "a BIN is 6 to 8 digits"),
        (["--kind", "merchant", "--value", "m-4111111111111111"], "must not hold a card number"),
        (["--kind", "card", "--value", "c1", "--expires", "soon"], "is not an ISO 8601 time"),
    ],
)
def test_bad_list_changes_exit_2_naming_the_problem(
    workspace: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    """Nothing is published for a bad value or expiry."""
    change = ["add", "--list", "block", *args, "--reason", "stolen"]
    assert exit_code(["rules", "list", *change, "--registry", str(workspace["registry"])]) == 2
    assert message in capsys.readouterr().err
    assert RuleRegistry(workspace["registry"], "lists").versions() == []


def test_removing_an_unlisted_value_exits_2(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A remove of what is not listed says so."""
    change = ["remove", "--list", "allow", "--kind", "country", "--value", "FR", "--reason", "r"]
    assert exit_code(["rules", "list", *change, "--registry", str(workspace["registry"])]) == 2
    assert "'FR' is not on the allow list (country)" in capsys.readouterr().err
