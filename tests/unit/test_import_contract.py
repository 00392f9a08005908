"""The layers hold (docs/architecture.md): the sans-IO modules import alone, and the
import-linter contract in pyproject.toml passes."""

from __future__ import annotations

import json
import subprocess
import sys

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
    "module", ["mailoauth.pop3.protocol", "mailoauth.sasl", "mailoauth", "mailoauth.errors"]
)
def test_sans_io_modules_import_without_network_libraries(module: str) -> None:
    assert _imported(module) == [], f"importing {module} loads the network libraries"


def test_the_probe_sees_a_network_library_when_one_is_imported() -> None:
    # The check above could pass by mistake (a wrong module list, a silent probe).
    assert "httpx" in _imported("mailoauth.tokens.endpoint")
    assert "aioimaplib" in _imported("mailoauth.imap.client")
