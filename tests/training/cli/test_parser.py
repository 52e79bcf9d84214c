"""Tests for training.cli.parser: every command documents itself."""

from __future__ import annotations

import pytest

from tests.training.cli.fraud_train import run
from training.cli.parser import build_parser


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]):
    """The installed command's --help runs; every command documents its options."""
    assert "simulate" in run("--help").stdout
    commands = ("simulate", "train", "evaluate", "backtest", "retrain", "config", "registry")
    for command in (*commands, "state", "state build"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*command.split(), "--help"])
        assert exited.value.code == 0
        assert "--" in capsys.readouterr().out
