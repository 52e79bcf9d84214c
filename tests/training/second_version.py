"""A second version of the session's model, published by the installed `fraud-train train`
beside the session's champion: one run that the tests of reproducible training, of the
`registry` commands, of signed publishing and of lineage each read, where each trained its
own (four trains of the same history, about 10 s of CPU each)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TrainedModel
from tests.training.cli.fraud_train import run


@dataclass(frozen=True)
class SecondVersion:
    registry: Path
    """A copy of the session's registry: its champion, and `version` published, not promoted.
    Shared: a test that changes a registry changes a copy of its own."""
    version: str
    public_key: str
    """The public key of the signing key `version` was published with."""


@pytest.fixture(scope="session")
def second_version(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> SecondVersion:
    """The session's history and config trained again by `fraud-train train --no-promote`,
    as a user runs it, with FRAUD_TRAIN_SIGNING_KEY set, where the session's champion serves."""
    root = tmp_path_factory.mktemp("second_version")
    registry = Path(shutil.copytree(trained_model.registry, root / "models"))
    keys = root / "keys"
    public_key = run("keys", "generate", "--out", keys, "--name", "release").stdout.strip()
    version = run(
        "train", "--data", trained_model.history, "--registry", registry,
        "--config", trained_model.config, "--no-promote",
        environment={"FRAUD_TRAIN_SIGNING_KEY": str(keys / "release.key")},
    ).stdout.strip()  # fmt: skip
    return SecondVersion(registry, version, public_key)
