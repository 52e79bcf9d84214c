"""The import contracts in pyproject.toml hold, and an import that breaks one fails them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(root)},
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The packages and pyproject.toml, copied so that one import can be broken."""
    for package in ("service", "training", "benchmarks"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_repository_keeps_every_contract() -> None:
    """The layers, the core's purity and the training/server boundary all hold today."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        (
            "service/core/scoring.py",
            "import service.model.store",
            "The server's layers import only the layers beneath them",
        ),
        (
            "service/core/validation.py",
            "import prometheus_client",
            "The scoring core loads no model, exports no metric and speaks no gRPC",
        ),
        (
            "service/model/artifact.py",
            "import training.registry.publishing",
            "The server never imports the training package",
        ),
        (
            "training/retraining/feedback.py",
            "import service.grpc_api.servicer",
            "Training uses the server's contracts",
        ),
    ],
)
def test_an_import_pointing_the_wrong_way_breaks_its_contract(
    tree_copy: Path, module: str, bad_import: str, contract: str
) -> None:
    """One added import makes lint-imports fail, naming the contract and the import."""
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{bad_import}  # noqa\n")
    result = _lint_imports(tree_copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split())
