"""`fraud-train registry` as a user runs it: real processes on a real registry."""

from __future__ import annotations

import shutil
from pathlib import Path

from service.model.registry import Registry
from tests.conftest import TrainedModel
from tests.training.cli.fraud_train import run


def test_registry_promote_list_and_rollback(trained_model: TrainedModel, tmp_path: Path):
    """A second version promoted by hand, listed, then rolled back to the first."""
    # The first version is the session's champion, published by the same training code;
    # a second `train` of its own would add a minute and check nothing of `registry`.
    registry = Path(shutil.copytree(trained_model.registry, tmp_path / "models"))
    first = trained_model.version
    assert Registry(registry).alias("champion") == first
    second = run(
        "train", "--data", trained_model.history, "--registry", registry,
        "--config", trained_model.config, "--no-promote",
    ).stdout.strip()  # fmt: skip
    assert first != second
    run("registry", "promote", second, "--registry", registry)
    listing = run("registry", "list", "--registry", registry).stdout
    assert first in listing
    assert second in listing
    run("registry", "promote", first, "--alias", "challenger", "--registry", registry)
    promoted = run("registry", "promote", "challenger", "--registry", registry)
    assert first in promoted.stderr + promoted.stdout
    assert Registry(registry).alias("champion") == first
    run("registry", "promote", second, "--registry", registry)
    rolled = run("registry", "rollback", "--registry", registry, "--reason", "bad canary")
    assert rolled.stdout.strip() == first
    assert Registry(registry).alias("champion") == first
    assert any(entry.reason == "bad canary" for entry in Registry(registry).history())
