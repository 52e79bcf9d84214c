"""`fraud-train registry` as a user runs it: real processes on a real registry."""

from __future__ import annotations

import shutil
from pathlib import Path

from service.model.registry import Registry
from tests.conftest import TrainedModel
from tests.training.cli.fraud_train import run
from tests.training.second_version import SecondVersion


def test_registry_promote_list_and_rollback(
    trained_model: TrainedModel, second_version: SecondVersion, tmp_path: Path
):
    """A second version promoted by hand, listed, then rolled back to the first."""
    # The first version is the session's champion and the second the session's second train
    # beside it, published by the same training code; a `train` of this test's own would
    # add a minute and check nothing of `registry`.
    registry = Path(shutil.copytree(second_version.registry, tmp_path / "models"))
    first, second = trained_model.version, second_version.version
    assert Registry(registry).alias("champion") == first
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
