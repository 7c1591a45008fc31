"""Write requirements.txt, the Function App's pinned dependencies, from pyproject.toml.

Azure Functions (Flex Consumption) builds the app remotely from `requirements.txt`; it must
hold exactly what the app imports at run time: pyproject's `dependencies` (never the `dev`,
`spark` or `local` extras) and everything they need, each pinned to the version installed in
this venv, so the package built in Azure is the one the tests ran against.

    .venv/bin/python tools/requirements.py          # rewrite requirements.txt
    .venv/bin/python tools/requirements.py --check  # exit 1 when it disagrees with pyproject

The dependency closure is walked here by hand because pip-tools/uv would resolve again from an
index (this machine's is a local mirror), while what is wanted is the installed, tested set.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "# The Function App's run-time dependencies, pinned: generated from pyproject.toml by\n"
    "# `.venv/bin/python tools/requirements.py` (make requirements); do not edit by hand.\n"
)


def direct_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Installed name -> version of the roots and of everything they require (markers applied)."""
    pins: dict[str, str] = {}
    todo: list[tuple[Requirement, frozenset[str]]] = [(r, frozenset(r.extras)) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, extras = todo.pop()
        key = (canonicalize_name(req.name), extras)
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        pins[canonicalize_name(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                todo.append((sub, frozenset(sub.extras)))
    return pins


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def parse(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def disagreements(roots: list[Requirement], pins: dict[str, str]) -> list[str]:
    """What makes a requirements.txt wrong for this pyproject (empty: they agree)."""
    problems = []
    for req in roots:
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is a dependency in pyproject.toml but not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} does not satisfy pyproject's {req}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on a mismatch")
    args = parser.parse_args()
    target = ROOT / "requirements.txt"
    roots = direct_requirements()
    if args.check:
        problems = disagreements(roots, parse(target.read_text()))
        for problem in problems:
            print(f"requirements.txt: {problem}", file=sys.stderr)
        return 1 if problems else 0
    target.write_text(render(closure(roots)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
