"""The Prometheus files in deploy/: promtool accepts the alert rules and the scrape config,
the rules pass their unit tests on synthetic series (deploy/prometheus/alerts_test.yml), and
every alert is unit-tested and documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
DOCS = ROOT / "docs" / "observability.md"
PROMTOOL_TIMEOUT = 60.0


def promtool(*arguments: str) -> str:
    """promtool's output for `arguments`; fails the test, with the output, on an error."""
    executable = shutil.which("promtool")
    assert executable is not None, "promtool is not on PATH: run scripts/install-prometheus"
    result = subprocess.run(
        [executable, *arguments],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(encoding="utf-8"), re.MULTILINE)


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` finds every alert of alerts.yml and no problem."""
    output = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_promtool_accepts_the_scrape_config_with_its_rule_file() -> None:
    """`promtool check config` accepts prometheus.yml and the rule file it loads."""
    output = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in output
    assert "is valid prometheus config file syntax" in output


def test_alert_rules_pass_their_unit_tests() -> None:
    """Each rule fires on the synthetic series meant to trigger it and not on the others."""
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_is_unit_tested_and_documented() -> None:
    """Every alert fires in some unit test and has a section, its runbook, in the docs."""
    tests = RULE_TESTS.read_text(encoding="utf-8")
    sections = set(re.findall(r"^### (\w+)$", DOCS.read_text(encoding="utf-8"), re.MULTILINE))
    names = alert_names()
    assert len(names) >= 9
    for name in names:
        assert re.search(rf"alertname: {name}\n\s+exp_alerts:", tests), f"{name} never fires"
        assert name in sections, f"{name} has no section in {DOCS.name}"
