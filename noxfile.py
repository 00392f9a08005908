"""Developer sessions: ``nox -s tests lint typecheck bench docs``, and ``lowest`` / ``newest``.

``lowest`` runs the suite with every direct dependency at the lower bound pyproject.toml
declares (:func:`lowest_pins` reads them from there: nothing is copied by hand), and
``newest`` with everything upgraded to its newest release: the declared ranges are
the tested ones, at both ends. CI (.ci/run) runs the default install (the newest) and
then the lowest pins in a second virtualenv.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox itself may run on 3.10
    import tomli as tomllib

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
ROOT = Path(__file__).parent
#: The extras whose requirements ``lowest`` pins at their floors, besides the runtime
#: dependencies: what the suite imports (the sandbox's trustme and aiosmtpd, pytest,
#: pytest-asyncio, hypothesis, redis, cryptography, import-linter) and the documentation
#: site's builders (tests/unit/test_docs_site.py builds it).
LOWEST_EXTRAS = (
    "sandbox",
    "testing",
    "redis",
    "crypto",
    "keyring",
    "proxy",
    "docs",
    "metrics",
    "dev",
)
#: Tools in those extras that do not take part in a test run (lint, type check, the
#: session runner): they stay at their newest, where lint and typecheck run them.
NOT_IN_TEST_RUN = frozenset({"nox", "ruff", "mypy"})
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")
_FLOOR = re.compile(r"(?:>=|==|~=)\s*([0-9][0-9A-Za-z.+!-]*)")


def lowest_pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==floor`` for every direct requirement in ``pyproject`` (runtime and
    :data:`LOWEST_EXTRAS`, less :data:`NOT_IN_TEST_RUN` and the project itself).

    Raises ``ValueError`` for a requirement without a lower bound: an unbounded range
    is one that no session tests at its low end.
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in LOWEST_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    pins: dict[str, str] = {}
    for requirement in requirements:
        text, _, marker = requirement.partition(";")
        match = _REQUIREMENT.match(text)
        if match is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        name, extras, spec = match.groups()
        key = name.lower().replace("_", "-")
        if key == project["name"] or key in NOT_IN_TEST_RUN:
            continue
        floor = _FLOOR.search(spec)
        if floor is None:
            raise ValueError(f"{requirement!r} has no lower bound; declare one (>=X)")
        pin = f"{name}{extras or ''}=={floor.group(1)}" + (f";{marker}" if marker else "")
        if pins.setdefault(key, pin) != pin:
            raise ValueError(f"{name} is declared with two floors: {pins[key]} and {pin}")
    return sorted(pins.values())


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite, exactly as README and .ci/run run it."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the layer contract (lint-imports reads
    [tool.importlinter] in pyproject.toml; see docs/architecture.md)."""
    session.install("ruff>=0.6", "import-linter>=2.1", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports", "--config", "pyproject.toml")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "mailoauth", "tests")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmarks in benchmarks/, side by side; see benchmarks/README.md."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site, strictly: any warning (a broken link or cross-reference,
    a page missing from the nav, a docstring griffe cannot read) fails. ``nox -s docs --
    serve`` serves it on http://127.0.0.1:8000 instead."""
    # mkdocstrings formats the signatures with ruff when it is there.
    session.install("-e", ".[docs]", "ruff>=0.6")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python=PYTHON)
def lowest(session: nox.Session) -> None:
    """The suite with every direct dependency at its declared lower bound."""
    session.install(*lowest_pins())
    session.install("--no-deps", "-e", ".")
    session.run("python", "-m", "pip", "check")  # the floors must fit together
    session.run("python", "-m", "pip", "freeze")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def newest(session: nox.Session) -> None:
    """The suite with everything upgraded to its newest release."""
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[dev]")
    session.run("python", "-m", "pip", "freeze")
    session.run("python", "-m", "pytest", "-q", *session.posargs)
