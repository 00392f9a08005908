"""The layers hold (docs/architecture.md): the sans-IO modules import alone, and the
import-linter contract in pyproject.toml passes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NETWORK_LIBRARIES = ("aiosmtplib", "aioimaplib", "httpx", "anyio")

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {libraries!r})))
"""


def _imported(module: str) -> list[str]:
    """The network-library modules a fresh interpreter has loaded after importing
    ``module`` (a subprocess: this one has imported everything already)."""
    code = _PROBE.format(module=module, libraries=set(NETWORK_LIBRARIES))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    "module",
    [
        "mailoauth.pop3.protocol",
        "mailoauth.smtp.replies",
        "mailoauth.sasl",
        "mailoauth",
        "mailoauth.errors",
    ],
)
def test_sans_io_modules_import_without_network_libraries(module: str) -> None:
    assert _imported(module) == [], f"importing {module} loads the network libraries"


def test_the_probe_sees_a_network_library_when_one_is_imported() -> None:
    # The check above could pass by mistake (a wrong module list, a silent probe).
    assert "httpx" in _imported("mailoauth.tokens.endpoint")
    assert "aioimaplib" in _imported("mailoauth.imap.client")


# -- the import-linter contract ([tool.importlinter] in pyproject.toml) ----------------

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("importlinter")
    command = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    return subprocess.run(
        [str(command), "--no-cache", "--config", "pyproject.toml"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contract_is_kept() -> None:
    result = _lint_imports(ROOT)
    broken = result.stdout[result.stdout.find("Broken contracts") :]
    assert result.returncode == 0, f"lint-imports: a layer rule is broken:\n{broken}"
    assert "0 broken" in result.stdout


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package and pyproject.toml, to break on purpose."""
    shutil.copytree(
        ROOT / "mailoauth", tmp_path / "mailoauth", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


#: One import per rule, each breaking it: (module, the import added, the contract it
#: breaks, the chain import-linter reports).
_BREAKAGES = [
    (
        "smtp/client.py",
        "import mailoauth.testing.sandbox",
        "No library module imports the testing",
        "mailoauth.smtp.client -> mailoauth.testing.sandbox",
    ),
    (
        "tokens/endpoint.py",
        "import mailoauth._core.connection",
        "The layers",
        "mailoauth.tokens.endpoint -> mailoauth._core.connection",
    ),
    (
        "sasl.py",
        "import anyio",
        "The sans-IO modules import no network library",
        "mailoauth.sasl -> anyio",
    ),
    (
        "_core/auth.py",
        "import aiosmtpd",
        "No library module imports the testing",
        "mailoauth._core.auth -> aiosmtpd",
    ),
    (
        "poll/_imap.py",
        "import mailoauth.poll._pop3",
        "the IMAP and POP3 poll watchers",
        "mailoauth.poll._imap -> mailoauth.poll._pop3",
    ),
]


def test_each_broken_rule_fails_naming_its_contract_and_the_import(package_copy: Path) -> None:
    for module, line, _, _ in _BREAKAGES:
        path = package_copy / "mailoauth" / module
        text = path.read_text(encoding="utf-8")
        path.write_text(f"{text}\n{line}  # noqa\n", encoding="utf-8")
    result = _lint_imports(package_copy, pythonpath=package_copy)
    assert result.returncode != 0
    broken = result.stdout[result.stdout.find("Broken contracts") :]
    for _, _, contract, chain in _BREAKAGES:
        assert contract in broken, (contract, broken)
        assert chain in broken, (chain, broken)


# -- a production install: the four runtime dependencies, without the sandbox extra -----

_WITHOUT_SANDBOX = """
import sys
sys.modules["trustme"] = None  # as if the sandbox extra were not installed
sys.modules["aiosmtpd"] = None
from mailoauth.cli import main
status = main({argv!r})
import mailoauth, mailoauth.tokens, mailoauth.poll
for package in (mailoauth, mailoauth.tokens, mailoauth.poll):
    for name in package.__all__:
        getattr(package, name)
print("status", status)
"""


def _run_without_sandbox(argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = _WITHOUT_SANDBOX.format(argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_demo_without_the_sandbox_extra_names_the_install_command() -> None:
    result = _run_without_sandbox(["demo"])
    assert "status 1" in result.stdout, result.stderr
    message = " ".join(result.stderr.split())  # one paragraph, wrapped for a terminal
    assert "(trustme is not installed): pip install 'mailoauth[sandbox]'" in message
    assert "Traceback" not in message


def test_the_library_and_the_command_work_without_the_sandbox_extra() -> None:
    # The command's parser loads every subcommand; then every public name is loaded.
    result = _run_without_sandbox(["token", "show", "--store", "/nonexistent/tokens.json"])
    assert "status 0" in result.stdout, result.stderr


_PYTEST_WITHOUT_EXTRA = """
import sys

class Hide:  # as if the testing extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {missing!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Hide())
import pytest
sys.exit(pytest.main(["-p", "no:cacheprovider", "-p", "no:asyncio", {path!r}]))
"""


@pytest.mark.parametrize("missing", [["trustme", "aiosmtpd"]])
def test_pytest_starts_in_a_production_install(tmp_path: Path, missing: list[str]) -> None:
    """The pytest11 entry point is registered by every install; without the testing
    extra it must not stop the user's own test run with an ImportError."""
    test_file = tmp_path / "test_users_own.py"
    test_file.write_text("def test_users_own():\n    assert True\n", encoding="utf-8")
    code = _PYTEST_WITHOUT_EXTRA.format(missing=missing, path=str(test_file))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    header = f"mailoauth: the pytest plugin is off ({', '.join(missing)} not installed)"
    assert header in result.stdout
    assert "pip install 'mailoauth[testing]'" in result.stdout


def test_the_entry_point_loads_the_plugin_when_the_extra_is_there() -> None:
    from mailoauth.testing import _pytest_entry

    assert _pytest_entry.MISSING == []
    assert _pytest_entry.pytest_plugins == ["mailoauth.testing.pytest_plugin"]


def test_docs_draw_the_layers_the_contract_checks() -> None:
    """docs/architecture.md states the layer order of [tool.importlinter] word for word."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    drawn = " > ".join(f"`{layer.replace('mailoauth.', '')}`" for layer in layers)
    docs = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert drawn.replace("|", "\\|") in docs, drawn
