"""The retraining image (deploy/training.Dockerfile), checked without a container engine as
the serving image is (tests/deploy/test_image.py): its lock (requirements/train.lock, made
by scripts/lock) matches pyproject.toml's dependencies and train extra, pins each with
hashes, and holds every package of the serving lock at the serving lock's version, so a
model is trained with the libraries that serve it; everything `training/` and `service/`
import comes from it; the Dockerfile pins its base, installs by hash, copies only the two
packages and the lock, and runs `fraud-train` unprivileged."""

from __future__ import annotations

import pytest

from tests.deploy.image_checks import (
    LOCK,
    PYPROJECT,
    SERVICE,
    TRAIN_LOCK,
    TRAINING,
    TRAINING_DOCKERFILE,
    TRAINING_DOCKERIGNORE,
    TRAINING_IMAGE,
    Pin,
    dockerfile_problems,
    dockerignore_problems,
    parse_lock,
    project_dependencies,
    stale_lock_problems,
    third_party_imports,
    unhashed_pins,
    unlocked_imports,
    unsatisfied_requirements,
)


def _pins(text: str) -> dict[str, Pin]:
    pins, not_pinned = parse_lock(text)
    assert not_pinned == []
    return pins


@pytest.fixture(scope="module")
def lock_text() -> str:
    return TRAIN_LOCK.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pins(lock_text: str) -> dict[str, Pin]:
    return _pins(lock_text)


@pytest.fixture(scope="module")
def dependencies() -> list[str]:
    return project_dependencies(PYPROJECT.read_text(encoding="utf-8"), "train")


def test_the_lock_was_made_from_the_dependencies_and_the_train_extra(
    lock_text: str, dependencies: list[str]
) -> None:
    assert stale_lock_problems(lock_text, dependencies) == []
    serving_only = project_dependencies(PYPROJECT.read_text(encoding="utf-8"))
    assert stale_lock_problems(lock_text, serving_only)  # the extra is part of the digest


def test_every_dependency_is_pinned_within_its_specifier_with_hashes(
    dependencies: list[str], pins: dict[str, Pin]
) -> None:
    assert {"lightgbm", "onnxmltools", "pandas", "dask", "onnxruntime"} <= pins.keys()
    assert unsatisfied_requirements(dependencies, pins) == []
    assert unhashed_pins(pins) == []


def test_the_server_s_packages_are_trained_with_at_the_server_s_versions(
    pins: dict[str, Pin],
) -> None:
    serving = _pins(LOCK.read_text(encoding="utf-8"))
    assert {name: pins[name].version for name in serving if name in pins} == {
        name: pin.version for name, pin in serving.items()
    }
    assert serving.keys() <= pins.keys()


def test_everything_training_and_service_import_comes_from_the_lock(
    pins: dict[str, Pin],
) -> None:
    own = frozenset({"service", "training"})
    imports = third_party_imports(TRAINING, own) | third_party_imports(SERVICE, own)
    assert {"lightgbm", "pandas", "onnxmltools", "grpc"} <= {m.split(".")[0] for m in imports}
    assert unlocked_imports(imports, pins) == []
    without_pandas = {name: pin for name, pin in pins.items() if name != "pandas"}
    assert any(p.startswith("pandas") for p in unlocked_imports(imports, without_pandas))


def test_the_dockerfile_runs_fraud_train_from_a_pinned_base_and_the_lock_only() -> None:
    text = TRAINING_DOCKERFILE.read_text(encoding="utf-8")
    assert dockerfile_problems(text, TRAINING_IMAGE) == []
    copies_benchmarks = text.replace(
        "COPY training training\n", "COPY training training\nCOPY benchmarks benchmarks\n"
    )
    assert copies_benchmarks != text
    assert any(
        "COPY benchmarks" in problem
        for problem in dockerfile_problems(copies_benchmarks, TRAINING_IMAGE)
    )
    as_root = text.replace("USER fraud\n", "")
    assert any("runs as root" in p for p in dockerfile_problems(as_root, TRAINING_IMAGE))


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    text = TRAINING_DOCKERIGNORE.read_text(encoding="utf-8")
    assert dockerignore_problems(text, TRAINING_IMAGE) == []
    assert dockerignore_problems(text + "!benchmarks\n", TRAINING_IMAGE)
