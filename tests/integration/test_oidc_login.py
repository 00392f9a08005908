"""``mailoauth login oauth2`` as a real subprocess against node-oidc-provider.

The test is the user: it reads the URL (or the device code) the command prints, signs
in with :class:`~tests.integration.oidc.Browser`, and, for the authorization-code
flow, visits the loopback redirect the command listens on. Then ``mailoauth token
refresh`` uses what ``login`` saved, as a user would the next day.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailoauth.cli.profiles import load_profiles
from tests.integration.oidc import (
    BASIC,
    MAIL_SCOPE,
    POST,
    PUBLIC,
    Browser,
    Client,
    OidcProvider,
    jwt_client,
    jwt_client_key,
)

SCOPE = f"openid {MAIL_SCOPE} offline_access"
PROCESS_TIMEOUT = 60.0
"""Seconds a ``mailoauth`` subprocess may run here, all in all."""
URL_LINE = re.compile(r"^\s+(http://\S+/auth\?\S+)$")
DEVICE_LINE = re.compile(r"open (http://\S+) and enter the code (\S+)")
EVERY_CLIENT = [
    pytest.param(POST, id="post"),
    pytest.param(BASIC, id="basic"),
    pytest.param(jwt_client(), id="private_key_jwt"),
    pytest.param(PUBLIC, id="public"),
]
AUTH_METHOD = {
    "client_secret_post": "post",
    "client_secret_basic": "basic",
    "private_key_jwt": "private_key_jwt",
}


class Cli:
    """``python -m mailoauth.cli ARGS`` with its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailoauth.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """The first stdout line matching ``pattern``; fails if the process ends first."""
        while True:
            try:
                line = self._queue.get(timeout=PROCESS_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no line like {pattern.pattern!r}: {self.lines}") from None
            if line is None:
                raise AssertionError(
                    f"mailoauth exited ({self.proc.wait()}) before printing {pattern.pattern!r}:"
                    f"\n{self.output()}"
                )
            self.lines.append(line)
            match = pattern.search(line)
            if match:
                return match

    def finish(self) -> int:
        """Wait for the exit status (bounded); drains the rest of stdout."""
        status = self.proc.wait(timeout=PROCESS_TIMEOUT)
        while (line := self._queue.get(timeout=PROCESS_TIMEOUT)) is not None:
            self.lines.append(line)
        return status

    def output(self) -> str:
        assert self.proc.stderr is not None
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=PROCESS_TIMEOUT)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def run() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for cli in started:
        cli.kill()


def client_args(client: Client, keys: Path | None = None) -> list[str]:
    """The client options of ``login``; a ``private_key_jwt`` client's key is written
    to a file under ``keys`` (``--private-key``)."""
    args = ["--client-id", client.client_id]
    if client.client_secret is not None:
        args += ["--client-secret", client.client_secret]
    if client.auth_method in AUTH_METHOD:
        args += ["--client-auth", AUTH_METHOD[client.auth_method]]
    if client.auth_method == "private_key_jwt":
        assert keys is not None
        pem = keys / "client-key.pem"
        pem.write_text(jwt_client_key())
        pem.chmod(0o600)
        args += ["--private-key", str(pem)]
    return args


def endpoint_args(server: OidcProvider, *, device: bool) -> list[str]:
    args = ["--token-url", server.token_url]
    if device:
        return [*args, "--device", "--device-authorization-url", server.device_authorization_url]
    return [*args, "--authorization-url", server.authorization_url]


def login_with_browser(
    run: list[Cli], server: OidcProvider, user: str, *args: str
) -> tuple[Cli, int]:
    """``login oauth2 ARGS --no-browser``; the test signs ``user`` in."""
    cli = Cli("login", "oauth2", "--no-browser", "--timeout", "30", *args)
    run.append(cli)
    url = cli.wait_for(URL_LINE).group(1)
    with Browser(server, user) as browser:
        redirect = browser.sign_in(url)
    assert redirect.startswith("http://127.0.0.1:")
    page = httpx.get(redirect, timeout=10)
    assert page.status_code == 200 and "Signed in." in page.text
    return cli, cli.finish()


def login_with_device(
    run: list[Cli], server: OidcProvider, user: str, *args: str
) -> tuple[Cli, int]:
    cli = Cli("login", "oauth2", "--timeout", "30", *args)
    run.append(cli)
    uri, code = cli.wait_for(DEVICE_LINE).groups()
    with Browser(server, user) as browser:
        assert "device-signed-in" in browser.enter_device_code(uri, code)
    return cli, cli.finish()


def saved(store: Path, key: str = "oauth2") -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(store.read_text())["credentials"][key]
    return entry


def refresh(store: Path, key: str = "oauth2") -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mailoauth.cli", "token", "refresh", key, "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"},
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("client", EVERY_CLIENT)
def test_login_pkce_then_refresh(
    oidc_server: OidcProvider, run: list[Cli], store: Path, client: Client
) -> None:
    """The authorization-code flow with PKCE, each client authentication method; then
    the saved credential refreshes (and the rotated refresh token is saved)."""
    user = f"cli-{client.client_id}@example.test"
    cli, status = login_with_browser(
        run,
        oidc_server,
        user,
        *endpoint_args(oidc_server, device=False),
        *client_args(client, store.parent),
        "--scope",
        SCOPE,
        "--auth-param",
        "prompt=consent",
        "--store",
        str(store),
    )
    assert status == 0, cli.output()
    first = saved(store)
    # prompt=consent reached the server: offline_access was granted (the access token's
    # scope is the mail resource's alone; the refresh token carries the grant's).
    granted = oidc_server.introspect_as(client, first["refresh_token"], "refresh_token")
    assert "offline_access" in granted["scope"].split()
    status, out = refresh(store)
    assert status == 0, out
    assert saved(store)["refresh_token"] != first["refresh_token"]  # rotated, and kept


def test_item2_login_without_consent_then_refresh(
    oidc_server: OidcProvider, run: list[Cli], store: Path
) -> None:
    """Issue 16 item 2: without ``prompt=consent`` the server grants no
    ``offline_access`` (and says so). The credential that ``login`` saved must refresh:
    the refresh asks for the granted scope, not the requested one (``invalid_scope``)."""
    cli, status = login_with_browser(
        run,
        oidc_server,
        "cli-item2@example.test",
        *endpoint_args(oidc_server, device=False),
        *client_args(POST),
        "--scope",
        SCOPE,
        "--store",
        str(store),
    )
    assert status == 0, cli.output()
    granted = oidc_server.introspect_as(POST, saved(store)["refresh_token"], "refresh_token")
    assert "offline_access" not in granted["scope"].split()
    for _ in range(2):
        status, out = refresh(store)
        assert status == 0, out


@pytest.mark.parametrize("client", EVERY_CLIENT)
def test_item1_login_device_with_client_secret(
    oidc_server: OidcProvider, run: list[Cli], store: Path, client: Client
) -> None:
    """Issue 16 item 1: ``login oauth2 --device --client-secret`` works for a
    confidential client (it authenticates at the device authorization endpoint)."""
    cli, status = login_with_device(
        run,
        oidc_server,
        f"cli-device-{client.client_id}@example.test",
        *endpoint_args(oidc_server, device=True),
        *client_args(client, store.parent),
        "--scope",
        SCOPE,
        "--store",
        str(store),
    )
    assert status == 0, cli.output()
    assert saved(store)["refresh_token"]
    status, out = refresh(store)
    assert status == 0, out


def test_login_from_the_issuer_alone(
    oidc_server: OidcProvider, run: list[Cli], store: Path
) -> None:
    """``--issuer``: the endpoints come from the discovery document."""
    cli, status = login_with_browser(
        run,
        oidc_server,
        "cli-issuer@example.test",
        "--issuer",
        oidc_server.issuer,
        *client_args(BASIC),
        "--scope",
        SCOPE,
        "--store",
        str(store),
    )
    assert status == 0, cli.output()
    status, out = refresh(store)
    assert status == 0, out
    assert load_profiles(store)["oauth2"].token_url == oidc_server.token_url


def test_login_device_from_the_issuer_alone(
    oidc_server: OidcProvider, run: list[Cli], store: Path
) -> None:
    cli, status = login_with_device(
        run,
        oidc_server,
        "cli-issuer-device@example.test",
        "--issuer",
        oidc_server.issuer,
        "--device",
        *client_args(POST),
        "--scope",
        SCOPE,
        "--store",
        str(store),
    )
    assert status == 0, cli.output()


def test_login_denied_by_the_user(oidc_server: OidcProvider, run: list[Cli], store: Path) -> None:
    cli = Cli(
        "login",
        "oauth2",
        "--no-browser",
        "--timeout",
        "30",
        *endpoint_args(oidc_server, device=False),
        *client_args(POST),
        "--scope",
        SCOPE,
        "--store",
        str(store),
    )
    run.append(cli)
    url = cli.wait_for(URL_LINE).group(1)
    with Browser(oidc_server, "cli-denier@example.test", deny=True) as browser:
        redirect = browser.sign_in(url)
    assert "error=access_denied" in redirect
    httpx.get(redirect, timeout=10)
    status = cli.finish()
    assert status != 0
    assert "access_denied" in cli.output()
    assert not store.exists() or "oauth2" not in store.read_text()
