"""The serving image is reproducible, checked without a container engine: the lock
(requirements/serve.lock, made by scripts/lock) matches pyproject.toml's server dependencies
and pins each with hashes, the SBOM lists exactly the lock's packages, everything `service/`
imports comes from the lock (so an image of `service/` and the lock runs), and the
Dockerfile pins its base by digest, installs by hash and copies only what the server needs.
Each check is also given a broken input, to show that it can fail."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.image_checks import (
    DOCKERFILE,
    DOCKERIGNORE,
    LOCK,
    PYPROJECT,
    SBOM,
    SERVICE,
    Pin,
    dependency_digest,
    dockerfile_problems,
    dockerignore_problems,
    parse_lock,
    project_dependencies,
    read_sbom,
    sbom_problems,
    stale_lock_problems,
    third_party_imports,
    unhashed_pins,
    unlocked_imports,
    unsatisfied_requirements,
)


@pytest.fixture(scope="module")
def lock_text() -> str:
    return LOCK.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pins(lock_text: str) -> dict[str, Pin]:
    pins, not_pinned = parse_lock(lock_text)
    assert not_pinned == []
    return pins


@pytest.fixture(scope="module")
def dependencies() -> list[str]:
    return project_dependencies(PYPROJECT.read_text(encoding="utf-8"))


def _changed(text: str, old: str | re.Pattern[str], new: str) -> str:
    """`text` with `old` replaced; fails if there was nothing to replace, so that a broken
    input is never the good one by accident."""
    changed = old.sub(new, text) if isinstance(old, re.Pattern) else text.replace(old, new)
    assert changed != text, f"{old!r} not found"
    return changed


# --- The lock -------------------------------------------------------------------------------


def test_the_lock_was_made_from_pyproject_s_dependencies(
    lock_text: str, dependencies: list[str]
) -> None:
    """Fails after a change to [project].dependencies until scripts/lock runs again."""
    assert stale_lock_problems(lock_text, dependencies) == []


def test_a_changed_dependency_list_makes_the_lock_stale(
    lock_text: str, dependencies: list[str]
) -> None:
    assert stale_lock_problems(lock_text, [*dependencies, "pandas>=3"])
    assert stale_lock_problems(lock_text, [d for d in dependencies if not d.startswith("onnx")])
    assert stale_lock_problems(_changed(lock_text, "# dependencies-sha256:", "#"), dependencies)
    # The digest ignores order (and pyproject's comments), nothing else.
    assert stale_lock_problems(lock_text, list(reversed(dependencies))) == []
    assert dependency_digest(dependencies) != dependency_digest([*dependencies[1:], "numpy"])


def test_the_lock_holds_only_the_server_s_dependencies(pins: dict[str, Pin]) -> None:
    """The extras (train, bench, dev) stay out of the image."""
    assert {"grpcio", "onnxruntime", "onnx", "cryptography", "hiredis"} <= pins.keys()
    assert (
        not {"lightgbm", "pandas", "scikit-learn", "matplotlib", "psutil", "pytest"} & pins.keys()
    )


def test_every_server_dependency_is_pinned_within_its_specifier(
    dependencies: list[str], pins: dict[str, Pin]
) -> None:
    assert unsatisfied_requirements(dependencies, pins) == []


def test_a_dependency_missing_or_pinned_outside_its_specifier_is_found(
    dependencies: list[str], pins: dict[str, Pin]
) -> None:
    numpy = next(d for d in dependencies if d.startswith("numpy"))
    outside = [d if d != numpy else "numpy>=99" for d in dependencies]
    assert unsatisfied_requirements(outside, pins) == [
        "numpy>=99: the lock pins " + pins["numpy"].version
    ]
    assert unsatisfied_requirements(["requests>=2"], pins) == ["requests>=2: not in the lock"]
    without_hiredis = {name: pin for name, pin in pins.items() if name != "hiredis"}
    [problem] = unsatisfied_requirements(["redis[hiredis]>=8.2"], without_hiredis)
    assert "hiredis" in problem


def test_every_pin_carries_a_sha256_hash(pins: dict[str, Pin]) -> None:
    assert unhashed_pins(pins) == []


def test_a_pin_without_hashes_or_a_range_is_found(lock_text: str) -> None:
    numpy_hashes = re.compile(
        r"(?<=^numpy==)([\d.]+) \\\n(    --hash=\S+ \\\n)*    --hash=\S+\n", re.M
    )
    pins, not_pinned = parse_lock(_changed(lock_text, numpy_hashes, r"\1\n"))
    assert not_pinned == []
    assert unhashed_pins(pins) == [f"numpy=={pins['numpy'].version}: no --hash=sha256:"]
    _, not_pinned = parse_lock(_changed(lock_text, "\norjson==", "\norjson>="))
    assert len(not_pinned) == 1
    assert not_pinned[0].startswith("orjson>=")


# --- The SBOM -------------------------------------------------------------------------------


def test_the_sbom_lists_exactly_the_lock_s_packages(pins: dict[str, Pin]) -> None:
    sbom = read_sbom(SBOM)
    assert sbom["specVersion"].startswith("1.")
    assert sbom["metadata"]["component"]["name"] == "fraud-scoring"
    assert sbom_problems(sbom, pins) == []


def test_an_sbom_that_differs_from_the_lock_is_found(pins: dict[str, Pin]) -> None:
    sbom = read_sbom(SBOM)
    dropped = copy.deepcopy(sbom)
    gone = dropped["components"].pop()
    assert sbom_problems(dropped, pins) == [
        f"{gone['name']}=={gone['version']}: in the lock, not in the SBOM"
    ]
    moved = copy.deepcopy(sbom)
    component = moved["components"][0]
    component["version"] = "0.0.1"
    component["purl"] = f"pkg:pypi/{component['name']}@0.0.1"
    assert len(sbom_problems(moved, pins)) == 2  # the locked version missing, another listed
    assert sbom_problems(sbom, {**pins, "extra": Pin("extra", "1.0", ())}) == [
        "extra==1.0: in the lock, not in the SBOM"
    ]


# --- What service/ imports ------------------------------------------------------------------


def test_everything_service_imports_comes_from_the_lock(pins: dict[str, Pin]) -> None:
    """The image holds `service/` and the lock's packages only: every third-party module
    imported anywhere in `service/` must be one of them."""
    imports = third_party_imports(SERVICE)
    assert {"grpc", "onnxruntime", "numpy", "google.protobuf"} <= imports.keys()
    assert unlocked_imports(imports, pins) == []


def test_an_import_from_outside_the_lock_is_found(tmp_path: Path, pins: dict[str, Pin]) -> None:
    package = tmp_path / "service"
    (package / "model").mkdir(parents=True)
    (package / "model" / "late.py").write_text(
        "import json\nfrom . import sibling\nfrom service.core import domain\nimport grpc\n"
        "def load():\n    import pandas\n    import no_such_module_anywhere\n"
    )
    assert set(third_party_imports(package)) == {"grpc", "pandas", "no_such_module_anywhere"}
    assert unlocked_imports(third_party_imports(package), pins) == [
        "no_such_module_anywhere (service/model/late.py): from no installed distribution",
        "pandas (service/model/late.py): from pandas",
    ]


# --- The Dockerfile -------------------------------------------------------------------------


def test_the_dockerfile_builds_a_pinned_runtime_of_service_and_the_lock_only() -> None:
    """Base by digest; COPY of service/ and the lock only; pip with --require-hashes and
    --no-deps; a HEALTHCHECK through service.healthcheck; an unprivileged USER."""
    assert dockerfile_problems(DOCKERFILE.read_text(encoding="utf-8")) == []


_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")
_BROKEN_DOCKERFILES: dict[str, tuple[Callable[[str], str], str]] = {
    "floating-tag": (lambda t: _changed(t, _DIGEST, ""), "not pinned by digest"),
    "floating-build-stage": (
        lambda t: "FROM python:3.11-slim AS build\nRUN true\n" + t,
        "FROM python:3.11-slim: not pinned",
    ),
    "floating-syntax": (
        lambda t: "# syntax=docker/dockerfile:1\n" + t,
        "parser directive",
    ),
    "copies-training": (
        lambda t: _changed(
            t, "COPY service service\n", "COPY service service\nCOPY training training\n"
        ),
        "COPY training",
    ),
    "copies-everything": (lambda t: _changed(t, "COPY service service", "COPY . ."), "COPY ."),
    "copies-a-stage": (
        lambda t: _changed(
            t, "COPY service service", "COPY --from=build /wheels /wheels\nCOPY service service"
        ),
        "from another stage",
    ),
    "no-hashes": (lambda t: _changed(t, "--require-hashes ", ""), "without --require-hashes"),
    "resolves": (lambda t: _changed(t, "--no-deps", ""), "without --no-deps"),
    "no-healthcheck": (
        lambda t: _changed(t, re.compile(r"^HEALTHCHECK .*\\\n.*\n", re.M), ""),
        "no HEALTHCHECK",
    ),
    "root": (lambda t: _changed(t, "USER fraud", "USER root"), "runs as root"),
    "no-user": (lambda t: _changed(t, "USER fraud\n", ""), "runs as root"),
}


@pytest.mark.parametrize("broken", list(_BROKEN_DOCKERFILES))
def test_a_broken_dockerfile_is_found(broken: str) -> None:
    breaks, expected = _BROKEN_DOCKERFILES[broken]
    problems = dockerfile_problems(breaks(DOCKERFILE.read_text(encoding="utf-8")))
    assert any(expected in problem for problem in problems), problems


def test_the_build_context_holds_only_what_the_runtime_copies() -> None:
    """.dockerignore leaves out everything (the virtualenv, models, data, state) but
    `service/` and the lock."""
    text = DOCKERIGNORE.read_text(encoding="utf-8")
    assert dockerignore_problems(text) == []
    assert dockerignore_problems(text + "!training\n")
    assert dockerignore_problems(_changed(text, "*\n", ""))
