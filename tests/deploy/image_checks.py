"""What makes the images reproducible, as functions of the files' text that return the
problems they find (none: []), so that tests can give them a broken copy too: a lock
(requirements/serve.lock, train.lock) against pyproject.toml, the SBOM, the imports of the
packages an image holds, its Dockerfile and build context (.dockerignore)."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements" / "serve.lock"
SBOM = ROOT / "requirements" / "serve.cdx.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVICE = ROOT / "service"
TRAINING = ROOT / "training"
TRAIN_LOCK = ROOT / "requirements" / "train.lock"
TRAINING_DOCKERFILE = ROOT / "deploy" / "training.Dockerfile"
TRAINING_DOCKERIGNORE = ROOT / "deploy" / "training.Dockerfile.dockerignore"

LOCK_IN_IMAGE = "requirements/serve.lock"
# All the runtime stage may take from the build context: the server's package and the lock.
RUNTIME_SOURCES = frozenset({"service", LOCK_IN_IMAGE})


@dataclass(frozen=True)
class ImageRecipe:
    """What an image's last stage may take from the build context, and how it runs."""

    sources: frozenset[str]
    lock: str
    entry_point: tuple[str, ...]
    health_check: bool  # a server: Docker's HEALTHCHECK through service.healthcheck


SERVING_IMAGE = ImageRecipe(RUNTIME_SOURCES, LOCK_IN_IMAGE, ("python", "-m", "service"), True)
TRAINING_IMAGE = ImageRecipe(
    frozenset({"service", "training", "requirements/train.lock"}),
    "requirements/train.lock",
    ("python", "-m", "training.cli"),
    health_check=False,
)
# The image's interpreter and platform (scripts/lock resolves for them), for markers.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}
DIGEST_HEADER = re.compile(r"^# dependencies-sha256: ([0-9a-f]{64})$", re.MULTILINE)
PINNED_IMAGE = re.compile(r"^\S+@sha256:[0-9a-f]{64}$")


# --- The lock -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    hashes: tuple[str, ...]


def project_dependencies(pyproject_text: str, *extras: str) -> list[str]:
    """[project].dependencies, and those of the named extras."""
    project = tomllib.loads(pyproject_text)["project"]
    dependencies: list[str] = list(project["dependencies"])
    for extra in extras:
        dependencies += project["optional-dependencies"][extra]
    return dependencies


def dependency_digest(dependencies: list[str]) -> str:
    """scripts/lock's digest of the dependency list: sorted, one a line, sha256."""
    return hashlib.sha256("\n".join(sorted(dependencies)).encode()).hexdigest()


def parse_lock(text: str) -> tuple[dict[str, Pin], list[str]]:
    """The lock's pins by normalised name, and its lines that are not an exact pin."""
    pins: dict[str, Pin] = {}
    problems: list[str] = []
    for line in _logical_lines(text):
        requirement_text, *hash_options = re.split(r"\s+--hash=", line)
        requirement = Requirement(requirement_text.strip())
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            problems.append(f"{requirement_text.strip()}: not pinned to one version")
            continue
        [specifier] = specifiers
        name = canonicalize_name(requirement.name)
        pins[name] = Pin(name, specifier.version, tuple(h.strip() for h in hash_options))
    return pins, problems


def _logical_lines(text: str) -> list[str]:
    """Requirement lines with their continuations joined, comments left out."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def stale_lock_problems(lock_text: str, dependencies: list[str]) -> list[str]:
    """The lock's recorded digest against the dependency list's."""
    found = DIGEST_HEADER.search(lock_text)
    if found is None:
        return ["the lock has no '# dependencies-sha256:' line: run scripts/lock"]
    if found.group(1) != dependency_digest(dependencies):
        return ["the lock was made from other dependencies than pyproject.toml's: run scripts/lock"]
    return []


def unsatisfied_requirements(dependencies: list[str], pins: dict[str, Pin]) -> list[str]:
    """Each dependency pinned within its specifier, and the requirements of the extras it
    asks for (redis[hiredis]: hiredis) pinned too."""
    problems: list[str] = []
    for text in dependencies:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{text}: not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{text}: the lock pins {pin.version}")
        problems += [
            f"{text}: its extra's requirement {extra_requirement} is not in the lock"
            for extra_requirement in _extra_requirements(requirement)
            if canonicalize_name(Requirement(extra_requirement).name) not in pins
        ]
    return problems


def _extra_requirements(requirement: Requirement) -> list[str]:
    """What the requirement's extras add, from the installed distribution's metadata."""
    if not requirement.extras:
        return []
    added: list[str] = []
    for text in metadata.requires(requirement.name) or []:
        marker = Requirement(text).marker
        if marker is None:
            continue  # not an extra's
        for extra in requirement.extras:
            environment = IMAGE_ENVIRONMENT | {"extra": extra}
            if not marker.evaluate({"extra": ""} | IMAGE_ENVIRONMENT) and marker.evaluate(
                environment
            ):
                added.append(text)
    return added


def unhashed_pins(pins: dict[str, Pin]) -> list[str]:
    return [
        f"{pin.name}=={pin.version}: no --hash=sha256:"
        for pin in pins.values()
        if not any(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes)
    ]


# --- The SBOM -------------------------------------------------------------------------------


def sbom_problems(sbom: dict[str, Any], pins: dict[str, Pin]) -> list[str]:
    """The SBOM's components are exactly the lock's packages at the lock's versions."""
    if sbom.get("bomFormat") != "CycloneDX":
        return ["not a CycloneDX document"]
    listed: dict[str, str] = {}
    for component in sbom.get("components", []):
        name = canonicalize_name(component["name"])
        if component.get("purl") != f"pkg:pypi/{component['name']}@{component['version']}":
            return [f"{name}: its purl {component.get('purl')!r} is not a PyPI package's"]
        listed[name] = component["version"]
    locked = {pin.name: pin.version for pin in pins.values()}
    problems = [f"{name}=={version}: in the lock, not in the SBOM"
                for name, version in locked.items() if listed.get(name) != version]  # fmt: skip
    problems += [f"{name}=={version}: in the SBOM, not in the lock"
                 for name, version in listed.items() if locked.get(name) != version]  # fmt: skip
    return problems


def read_sbom(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


# --- What service/ imports ------------------------------------------------------------------


def third_party_imports(
    package: Path, own: frozenset[str] = frozenset({"service"})
) -> dict[str, Path]:
    """Every absolute import of a module outside the standard library and the `own`
    packages, in any .py file under `package` (at any depth, conditional or not), with a
    file importing it (relative to the package's parent)."""
    imports: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in own and top not in sys.stdlib_module_names:
                    imports.setdefault(module, path.relative_to(package.parent))
    return imports


def unlocked_imports(imports: dict[str, Path], pins: dict[str, Pin]) -> list[str]:
    """Imports whose distribution (as installed here) is not in the lock: the image, which
    holds only the lock's packages, would fail on them."""
    problems: list[str] = []
    for module, path in sorted(imports.items()):
        providers = _distributions_providing(module)
        if not providers & pins.keys():
            where = ", ".join(sorted(providers)) or "no installed distribution"
            problems.append(f"{module} ({path}): from {where}")
    return problems


def _distributions_providing(module: str) -> set[str]:
    top = module.partition(".")[0]
    candidates = _top_level_owners().get(top, [])
    if len(candidates) > 1:  # a namespace package (google.*): the one with the module's files
        prefix = module.replace(".", "/") + "/"
        candidates = [
            name
            for name in candidates
            if any(str(file).startswith(prefix) for file in metadata.files(name) or [])
        ]
    return {canonicalize_name(name) for name in candidates}


@cache
def _top_level_owners() -> dict[str, list[str]]:
    return {top: sorted(set(names)) for top, names in metadata.packages_distributions().items()}


# --- The Dockerfile -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuations joined; comments (and parser directives) left out."""
    instructions = []
    for line in _logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_problems(text: str, recipe: ImageRecipe = SERVING_IMAGE) -> list[str]:
    """Floating base images anywhere; in the runtime (last) stage: anything copied but the
    image's sources (for the server, the lock and `service/`), a pip install without the
    lock's hashes, for a server no HEALTHCHECK through service.healthcheck, running as
    root, another entry point."""
    problems = [
        f"parser directive {line!r}: its image is not pinned by digest"
        for line in text.splitlines()
        if re.match(r"#\s*syntax\s*=", line) and not PINNED_IMAGE.match(line.partition("=")[2])
    ]
    stages: list[list[Instruction]] = []
    names: set[str] = set()
    for instruction in dockerfile_instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            image = words[0]
            if image.lower() not in names and not PINNED_IMAGE.match(image):
                problems.append(f"FROM {image}: not pinned by digest (@sha256:...)")
            if len(words) == 3 and words[1].upper() == "AS":
                names.add(words[2].lower())
            stages.append([])
        elif stages:
            stages[-1].append(instruction)
    if not stages:
        return [*problems, "no FROM"]
    return problems + _runtime_stage_problems(stages[-1], recipe)


def _runtime_stage_problems(stage: list[Instruction], image: ImageRecipe) -> list[str]:
    problems: list[str] = []
    copied: set[str] = set()
    for instruction in stage:
        if instruction.keyword == "ADD":
            problems.append(f"ADD {instruction.arguments}: the runtime stage only COPYs")
        if instruction.keyword != "COPY":
            continue
        words = _words(instruction.arguments)
        if any(w.startswith("--from") for w in words):
            problems.append(f"COPY {instruction.arguments}: from another stage or image")
        sources = [w.removeprefix("./").rstrip("/") for w in words[:-1] if not w.startswith("--")]
        copied |= set(sources)
        problems += [f"COPY {source}: the image takes only {', '.join(sorted(image.sources))}"
                     for source in sources if source not in image.sources]  # fmt: skip
    problems += [f"the runtime stage does not COPY {source}"
                 for source in sorted(image.sources - copied)]  # fmt: skip

    installs = [i.arguments for i in stage if i.keyword == "RUN" and "pip install" in i.arguments]
    if not installs:
        problems.append("no pip install of the lock")
    for command in installs:
        for option in ("--require-hashes", "--no-deps", f"-r {image.lock}"):
            if option not in command:
                problems.append(f"a pip install without {option}")

    checks = [i.arguments for i in stage if i.keyword == "HEALTHCHECK"]
    if image.health_check and (not checks or "python -m service.healthcheck" not in checks[-1]):
        problems.append("no HEALTHCHECK running python -m service.healthcheck")
    users = [i.arguments.partition(":")[0] for i in stage if i.keyword == "USER"]
    if not users or users[-1] in {"root", "0"}:
        problems.append(f"runs as root (USER: {users[-1] if users else 'none'})")
    entry_points = [i.arguments for i in stage if i.keyword == "ENTRYPOINT"]
    if not entry_points or _words(entry_points[-1]) != list(image.entry_point):
        problems.append(f"the ENTRYPOINT is not {' '.join(image.entry_point)}")
    return problems


def _words(arguments: str) -> list[str]:
    """An instruction's arguments, in JSON (exec) form or shell form."""
    if arguments.startswith("["):
        words: list[str] = json.loads(arguments)
        return words
    return arguments.split()


def dockerignore_problems(text: str, image: ImageRecipe = SERVING_IMAGE) -> list[str]:
    """The build context: everything left out, then exactly the image's sources let in."""
    patterns = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    if not patterns or patterns[0] != "*":
        return ["does not start by leaving everything out ('*')"]
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    if admitted != image.sources:
        return [f"lets in {sorted(admitted)}, not {sorted(image.sources)}"]
    return []
