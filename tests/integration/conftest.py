"""Real mail servers on loopback for the integration tests.

Session-scoped fixtures, started once (about half a second for all of them):

- ``test_ca``: :class:`~mailoauth.testing.certs.TestCA`; ``test_ca.client_context()``
  trusts the servers' certificate for ``localhost`` / ``127.0.0.1``.
- ``oauth_server``: :class:`~mailoauth.testing.oauth_server.FakeOAuthServer`, the
  token introspection endpoint that Dovecot (and through it Postfix) asks.
- ``dovecot``: :class:`~mailoauth.testing.dovecot.DovecotServer` (IMAP, POP3, LMTP).
- ``postfix``: :class:`~mailoauth.testing.postfix.PostfixServer` (submission).
- ``mail_servers``: all of the above in one :class:`MailServers`.

Tests that use ``dovecot``, ``postfix`` or ``mail_servers`` are marked ``realserver``
automatically. Without Dovecot or Postfix installed (or without root) they are skipped,
unless ``CI`` is set: then they fail, because CI must run them.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from mailoauth.testing.certs import TestCA
from mailoauth.testing.dovecot import DovecotServer
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.postfix import PostfixServer

# node-oidc-provider (tests/oidc) and Dovecot/Postfix introspecting at it.
from tests.integration.oidc import (  # noqa: F401
    _oidc_secrets_scanned,
    oidc_mail_servers,
    oidc_server,
)

# Enough for the 1,000-concurrent-sessions tests; processes start only on demand.
MAX_SESSIONS = 1200
REAL_SERVER_FIXTURES = frozenset(
    {"dovecot", "postfix", "mail_servers", "oidc_server", "oidc_mail_servers"}
)
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally; fail under CI, where every real-server test must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so real-server tests may not be skipped)")
    pytest.skip(reason)


def require_real_servers() -> None:
    """Skip (or, in CI, fail) unless Dovecot and Postfix can be run here."""
    missing = [name for name in ("dovecot", "postfix") if not shutil.which(name, path=SBIN_PATH)]
    if missing:
        skip_or_fail(f"not installed: {', '.join(missing)} (apt-get install, see .ci/run)")
    if os.geteuid() != 0:
        skip_or_fail("real Dovecot/Postfix test servers need root")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realserver)


@dataclass(frozen=True)
class MailServers:
    """Everything a client test needs to reach the real servers."""

    ca: TestCA
    oauth: FakeOAuthServer
    dovecot: DovecotServer
    postfix: PostfixServer

    @property
    def host(self) -> str:
        return self.dovecot.host

    def token(self, username: str) -> str:
        """A fresh access token that the servers accept for ``username``."""
        return self.oauth.issue_access_token(username)

    def client_context(self) -> ssl.SSLContext:
        return self.ca.client_context()


@pytest.fixture(scope="session")
def servers_root() -> Iterator[Path]:
    """A short, world-traversable directory for the servers' files and sockets.

    Not pytest's tmp_path: that lives under a 0700 directory the service users cannot
    enter, and unix socket paths must stay under 108 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="mo-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def test_ca(servers_root: Path) -> TestCA:
    return TestCA(servers_root / "ca")


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot(
    servers_root: Path, test_ca: TestCA, oauth_server: FakeOAuthServer
) -> Iterator[DovecotServer]:
    require_real_servers()
    server = DovecotServer(
        oauth_server.introspection_url,
        test_ca.files,
        directory=servers_root / "dc",
        max_sessions=MAX_SESSIONS,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def postfix(servers_root: Path, test_ca: TestCA, dovecot: DovecotServer) -> Iterator[PostfixServer]:
    require_real_servers()
    server = PostfixServer(
        test_ca.files,
        dovecot.auth_socket,
        dovecot.lmtp_socket,
        directory=servers_root / "pf",
        max_sessions=MAX_SESSIONS,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def mail_servers(
    test_ca: TestCA,
    oauth_server: FakeOAuthServer,
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> MailServers:
    return MailServers(test_ca, oauth_server, dovecot, postfix)
