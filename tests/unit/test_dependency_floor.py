"""The pins of ``nox -s lowest`` and of CI's second run come from pyproject.toml."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import mailoauth

ROOT = Path(mailoauth.__file__).parent.parent


@pytest.fixture(scope="module")
def noxfile() -> ModuleType:
    pytest.importorskip("nox")  # a dev tool: absent from the lowest-pins run
    spec = importlib.util.spec_from_file_location("noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("noxfile", module)
    spec.loader.exec_module(module)
    return module


def test_every_runtime_dependency_is_pinned_at_its_floor(noxfile: ModuleType) -> None:
    pins = {p.split("==")[0].split("[")[0].lower(): p.split("==")[1] for p in noxfile.lowest_pins()}
    for name in ("aiosmtplib", "aioimaplib", "httpx", "anyio", "trustme", "aiosmtpd"):
        assert name in pins
    for name in ("pytest", "pytest-asyncio", "hypothesis", "redis", "cryptography"):
        assert name in pins  # what the suite imports
    assert "import-linter" in pins  # tests/unit/test_import_contract.py runs it
    assert pins["python-socks"] == "3.0" and "socksio" in pins  # the proxy extra
    assert pins["keyring"] == "24.0"  # the keyring extra (KeyringTokenStore)
    assert pins["prometheus-client"] == "0.20.0"  # the metrics extra (mailoauth poll)
    assert pins["mkdocs"] == "1.6.0"  # the docs extra: test_docs_site.py builds the site
    assert not {"nox", "ruff", "mypy", "mailoauth"} & set(pins)
    assert pins["aiosmtplib"] == "5.1.3"  # the first release with _on_connection_lost


def test_a_requirement_without_a_floor_is_refused(noxfile: ModuleType, tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "mailoauth"\ndependencies = ["httpx>=0.27", "anyio"]\n'
        "[project.optional-dependencies]\n"
        "sandbox = []\ntesting = []\nredis = []\ncrypto = []\nkeyring = []\nproxy = []\n"
        "metrics = []\ndocs = []\n"
        'dev = ["mailoauth[testing]", "ruff"]\n'
    )
    with pytest.raises(ValueError, match="'anyio' has no lower bound"):
        noxfile.lowest_pins(pyproject)


def test_extras_and_markers_are_kept_and_dropped(noxfile: ModuleType, tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "mailoauth"\n'
        'dependencies = ["httpx[http2]>=0.27,<1", "tomli>=2; python_version < \'3.11\'"]\n'
        "[project.optional-dependencies]\n"
        "sandbox = []\ntesting = []\nredis = []\ncrypto = []\nkeyring = []\nproxy = []\n"
        "metrics = []\ndocs = []\n"
        'dev = ["nox>=2024.4"]\n'
    )
    assert noxfile.lowest_pins(pyproject) == [
        "httpx[http2]==0.27",
        "tomli==2; python_version < '3.11'",
    ]


def test_a_production_install_needs_four_packages() -> None:
    """``pip install mailoauth``: aiosmtplib, aioimaplib, httpx and anyio; the sandbox's
    trustme and aiosmtpd come with the ``sandbox`` extra, which ``testing`` and ``dev``
    include."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[<>=\[;]", r)[0] for r in project["dependencies"]}
    assert names == {"aiosmtplib", "aioimaplib", "httpx", "anyio"}
    extras = project["optional-dependencies"]
    assert {re.split(r"[<>=]", r)[0] for r in extras["sandbox"]} == {"trustme", "aiosmtpd"}
    assert "mailoauth[sandbox]" in extras["testing"]
    assert any(r.startswith("mailoauth[") and "testing" in r for r in extras["dev"])
