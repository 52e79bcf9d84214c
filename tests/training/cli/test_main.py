"""`fraud-train`'s exit codes for bad input and failed gates, as a user meets them: real
processes, real files."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from service.model.registry import Registry
from service.named_errors import imported_errors
from tests.training.cli.fraud_train import run
from training.cli.main import BAD_INPUT, GATE_FAILED
from training.simulation.history_files import write_transactions
from training.simulation.params import SimulationParams
from training.simulation.simulate import simulate


def test_failed_gate_exits_3_and_publishes_nothing(small_config: Path, tmp_path: Path):
    """An unreachable metric floor fails the gate with its name and shortfall; no artifact."""
    # The gate judges a fitted model whatever its size: 100 cards' 11,392 transactions (AUC
    # about 0.92) replay and fit in half the CPU of the session's 400 cards.
    history = tmp_path / "history.csv"
    cards = SimulationParams(customers=100, terminals=200, days=60, seed=11)
    write_transactions(simulate(cards), history)
    config = tmp_path / "strict.toml"
    config.write_text(small_config.read_text().replace("min_auc_roc = 0.6", "min_auc_roc = 0.9999"))
    registry = tmp_path / "models"
    result = run(
        "train", "--data", history, "--registry", registry, "--config", config, check=False
    )
    assert result.returncode == 3
    assert "floor:auc_roc" in result.stderr
    assert "short by" in result.stderr
    assert Registry(registry).versions() == []


def test_bad_row_exits_2_naming_row_and_column(tmp_path: Path):
    """A negative amount stops training with the row and column, before any work is done."""
    data = tmp_path / "bad.csv"
    data.write_text(
        "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud\n"
        "a,2024-01-01T10:00:00Z,card1,t1,10.00,0\n"
        "b,2024-01-01T10:05:00Z,card1,t1,-3.50,0\n"
    )
    result = run("train", "--data", data, "--registry", tmp_path / "models", check=False)
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert "amount" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_exits_2_naming_the_setting(tmp_path: Path, small_history: Path):
    """An invalid setting is refused with its dotted name."""
    config = tmp_path / "bad.toml"
    config.write_text("[booster]\nlearning_rate = -1\n")
    result = run("train", "--data", small_history, "--config", config, check=False)
    assert result.returncode == 2
    assert "booster.learning_rate" in result.stderr


@pytest.mark.parametrize("module", ["training.cli", "training.cli.main"])
def test_runs_as_a_python_module(module: str) -> None:
    """`python -m training.cli` (and `.main`, as scripts and tests start it) runs the
    command line."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "simulate" in result.stdout


def test_every_error_class_main_names_exists_and_is_an_exception() -> None:
    """main names the classes it turns into exit codes rather than importing them: a class
    moved or renamed must fail here, not turn bad input into a traceback."""
    names = [*BAD_INPUT, GATE_FAILED]
    for module in {name.partition(":")[0] for name in names}:
        importlib.import_module(module)

    classes = imported_errors(names)

    assert len(classes) == len(names)
    assert all(issubclass(cls, Exception) for cls in classes)


_PARSE_ONLY = """
import sys
from training.cli.parser import build_parser
build_parser().parse_args(["registry", "list", "--registry", "models"])
heavy = ("pandas", "sklearn", "distributed", "dask", "lightgbm", "onnx", "matplotlib")
print(",".join(name for name in heavy if name in sys.modules))
"""


def test_parsing_a_command_line_imports_no_data_or_model_library() -> None:
    """Each command imports what it runs when it runs: `fraud-train --help` took 5 s of
    CPU on the 2-core box when the parser brought pandas, sklearn and distributed."""
    result = _in_a_fresh_process(_PARSE_ONLY)

    assert result.stdout.strip() == ""


_BAD_CONFIG_TRAIN = """
import sys
from training.cli.main import main
code = main(["train", "--data", sys.argv[1], "--config", sys.argv[2]])
print(code, ",".join(name for name in ("pandas", "lightgbm") if name in sys.modules))
"""


def test_a_bad_setting_is_refused_before_the_pipeline_is_imported(
    tmp_path: Path, small_history: Path
) -> None:
    """A typo in the config costs a second, not the seconds of the pipeline's imports."""
    config = tmp_path / "bad.toml"
    config.write_text("[booster]\nlearning_rate = -1\n")

    result = _in_a_fresh_process(_BAD_CONFIG_TRAIN, small_history, config)

    assert result.stdout.split("\n")[-2] == "2 ", result.stdout
    assert "booster.learning_rate" in result.stderr


_BAD_ROW_TRAIN = """
import sys
from training.cli.main import main
code = main(["train", "--data", sys.argv[1], "--registry", sys.argv[2]])
loaded = ("training.model_build.pipeline", "dask", "distributed")
print(code, ",".join(name for name in loaded if name in sys.modules))
"""


def test_train_without_a_cluster_imports_no_dask(tmp_path: Path) -> None:
    """`train` without `--dask` runs its pipeline with neither Dask nor distributed imported:
    they cost every plain train about 1.5 s of CPU when the pipeline imported its cluster
    path at the top. The history's bad row stops the run once the pipeline is at work."""
    data = tmp_path / "bad.csv"
    data.write_text(
        "transaction_id,timestamp,card_id,terminal_id,amount,is_fraud\n"
        "a,2024-01-01T10:00:00Z,card1,t1,-3.50,0\n"
    )

    result = _in_a_fresh_process(_BAD_ROW_TRAIN, data, tmp_path / "models")

    assert result.stdout.split("\n")[-2] == "2 training.model_build.pipeline", result.stdout
    assert "amount" in result.stderr


_RETRAIN_IMPORTS = """
import sys
import training.retraining.retrain
heavy = ("lightgbm", "onnx", "matplotlib", "sklearn")
print(",".join(name for name in heavy if name in sys.modules))
"""


def test_a_retrain_imports_no_model_library_before_it_fits() -> None:
    """`fraud-train retrain` loads LightGBM, onnx and matplotlib when it fits, compares and
    publishes: one that declines for want of new fraud reports spent about 2.5 s of CPU on
    them when the candidate and report modules imported them at the top."""
    result = _in_a_fresh_process(_RETRAIN_IMPORTS)

    assert result.stdout.strip() == ""


def _in_a_fresh_process(script: str, *arguments: Path) -> subprocess.CompletedProcess[str]:
    """`script` run by a fresh interpreter with `arguments`, which must exit 0: what it
    imports is what the code under test imports, nothing this test session loaded."""
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result
