"""Fails when a lock file no longer satisfies the ranges it was made from (CI runs it).

Each declared requirement (pyproject.toml's dependencies, its `test`, `bench` and `docs` extras and
build requirements, deploy/requirements-check.in, requirements/tools.in) must be pinned in its lock file,
and the pinned version must lie in the declared range. `bash scripts/lock` repairs a failure; pip
itself refuses a lock that misses a transitive dependency or a hash (`--require-hashes`).

Usage: python scripts/check_lock.py   (with `packaging` importable, as in the test venv)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", re.MULTILINE)


def pins(lock: Path) -> dict[str, Version]:
    return {canonicalize_name(name): Version(version) for name, version in _PIN.findall(lock.read_text())}


def requirements_in(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def problems(declared: list[str], lock: Path) -> list[str]:
    pinned = pins(lock)
    found = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            found.append(f"{lock.relative_to(ROOT)}: {requirement.name} is not pinned (declared {text!r})")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{lock.relative_to(ROOT)}: {requirement.name}=={version} is outside {text!r}")
    return found


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = project["project"]["dependencies"] + project["build-system"]["requires"]
    test = runtime + project["project"]["optional-dependencies"]["test"]
    locks = ROOT / "requirements"
    found = [
        *problems(runtime, locks / "runtime.txt"),
        *problems(test, locks / "test.txt"),
        *problems(test + project["project"]["optional-dependencies"]["bench"], locks / "bench.txt"),
        *problems(runtime + project["project"]["optional-dependencies"]["docs"], locks / "docs.txt"),
        *problems(requirements_in(ROOT / "deploy/requirements-check.in"), locks / "deploy-check.txt"),
        *problems(requirements_in(locks / "tools.in"), locks / "tools.txt"),
    ]
    for problem in found:
        sys.stderr.write(f"stale lock: {problem}\n")
    if found:
        sys.stderr.write("run `bash scripts/lock` and the whole suite, then commit requirements/\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
