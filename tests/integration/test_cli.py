"""The ``mailoauth`` command, run in-process (``main([...])``) and once as a process.

Every command runs against loopback only: the demo's own sandbox, a
:class:`~mailoauth.testing.sandbox.MailSandbox` for ``check``, and a
:class:`~mailoauth.testing.oauth_server.FakeOAuthServer` for ``login`` and ``token``,
with the test acting as the browser.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailoauth.cli import login, main
from mailoauth.cli.profiles import Profile, load_profiles, profiles_path, save_profile
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens import FileTokenStore, StoredCredential
from tests.integration.cli_device import login_with_device_code


def test_demo_subprocess_transcript() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailoauth.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in (
        "✓ TOKEN",
        "sent 'Hello from mailoauth'",
        "over STARTTLS (OAUTHBEARER)",
        "✓ IMAP",
        "✓ POP3",
        "(expiring)",
        "rejected → refreshed → retried → OK",
        "✓ DONE",
    ):
        assert needle in out
    assert out.count("✓ POLL") == 5
    assert proc.stderr == ""
    # Tokens are shown as six characters and an ellipsis, never whole.
    assert re.search(r"at-[\w-]{3}…", out)
    assert not re.search(r"(at|rt)-[\w-]{4,}", out)


def test_demo_in_process_office365(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--personality", "office365"]) == 0
    out = capsys.readouterr().out
    assert "rejected → refreshed → retried → OK" in out
    assert out.count("POLL") == 5


# -- check -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[MailSandbox]:
    with MailSandbox(personality=Personality.GMAIL) as box:
        yield box


def check_args(box: MailSandbox, protocol: str, security: str, *extra: str) -> list[str]:
    ports = {
        "smtp": (box.smtp.tls_port, box.smtp.starttls_port),
        "imap": (box.imap.tls_port, box.imap.starttls_port),
        "pop3": (box.pop3.tls_port, box.pop3.starttls_port),
    }[protocol]
    port = ports[0] if security == "ssl" else ports[1]
    return [
        "check", protocol, "127.0.0.1", "--port", str(port), "--security", security,
        "--cafile", str(box.ca.files.ca), "--timeout", "5", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "security", "operation"),
    [("imap", "ssl", "SELECT INBOX"), ("pop3", "starttls", "STAT"), ("smtp", "starttls", "NOOP")],
)
def test_check_ok(
    sandbox: MailSandbox,
    capsys: pytest.CaptureFixture[str],
    protocol: str,
    security: str,
    operation: str,
) -> None:
    user = sandbox.user(f"check-{protocol}@example.test")
    token = user.access_token()
    argv = check_args(sandbox, protocol, security, "--user", user.username, "--token", token)
    assert main(argv) == 0
    out = capsys.readouterr().out
    for label in ("CONNECT", "TLS", "CAPS", "TOKEN", "AUTH", "OP"):
        assert re.search(rf"✓ {label}\s", out), label
    assert "TLSv1.3" in out and "XOAUTH2" in out and operation in out
    assert "all steps passed" in out and token not in out


def test_check_wrong_user_is_diagnosed(
    sandbox: MailSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    token = sandbox.user("alice-check@example.test").access_token()
    argv = check_args(sandbox, "imap", "ssl", "--user", "mallory@example.test", "--token", token)
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "✗ AUTH" in out and "server reply: NO [AUTHENTICATIONFAILED]" in out
    assert "error challenge: status=400" in out
    assert "Diagnosis:" in out and "https://mail.google.com/" in out
    assert token not in out


def test_check_without_the_ca_suggests_cafile(
    sandbox: MailSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "check", "smtp", "127.0.0.1", "--port", str(sandbox.smtp.tls_port),
        "--security", "ssl", "--user", "a@example.test", "--token", "at-whatever-token",
    ]  # fmt: skip
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "✗ TLS" in out and "--cafile" in out


def test_check_store_key_with_revoked_grant(
    sandbox: MailSandbox, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    user = sandbox.user("revoked@example.test")
    store = tmp_path / "tokens.json"
    save_profile(
        store,
        Profile("work", "oauth2", sandbox.oauth.token_url, "cli-test", username=user.username),
    )
    asyncio.run(
        FileTokenStore(store).save("work", StoredCredential(refresh_token=user.refresh_token))
    )
    argv = check_args(sandbox, "pop3", "ssl", "--store", str(store), "--store-key", "work")
    assert main(argv) == 0
    assert "refreshed via the stored credential" in capsys.readouterr().out
    sandbox.oauth.revoke_user(user.username)
    asyncio.run(
        FileTokenStore(store).save("work", StoredCredential(refresh_token=user.refresh_token))
    )
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "✗ TOKEN" in out and "invalid_grant" in out and "mailoauth login" in out
    assert user.refresh_token not in out


# -- login -----------------------------------------------------------------------------


@pytest.fixture
def oauth() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.authorize_username = "me@example.test"
        yield server


def act_as_browser(visits: list[httpx.Response]) -> Callable[[str], bool]:
    """An ``open_browser`` that follows the authorization URL, as a browser would,
    from another thread: the authorization server redirects to the loopback URI."""

    def open_url(url: str) -> bool:
        def visit() -> None:
            visits.append(httpx.get(url, follow_redirects=True, timeout=10))

        threading.Thread(target=visit, daemon=True).start()
        return True

    return open_url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stored(store: Path, key: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(store.read_text())["credentials"][key]
    return entry


def test_login_authorization_code_with_pkce(
    oauth: FakeOAuthServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    visits: list[httpx.Response] = []
    monkeypatch.setattr(login, "open_browser", act_as_browser(visits))
    store = tmp_path / "config" / "tokens.json"
    argv = [
        "login", "oauth2", "--authorization-url", oauth.authorization_url,
        "--token-url", oauth.token_url, "--client-id", "cli-test",
        "--scope", "mail offline_access", "--store", str(store), "--timeout", "10",
        "--username", "me@example.test",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert visits[0].status_code == 200 and "Signed in." in visits[0].text
    assert visits[0].url.host == "127.0.0.1"
    assert "code_challenge_method=S256" in out and "✓ SAVED" in out
    credential = stored(store, "oauth2")
    assert credential["refresh_token"].startswith("rt-")
    assert credential["refresh_token"] not in out and credential["access_token"] not in out
    assert mode(store) == 0o600 and mode(profiles_path(store)) == 0o600
    form = oauth.token_forms[-1]
    assert form["grant_type"] == "authorization_code" and len(form["code_verifier"]) >= 43
    assert form["redirect_uri"].startswith("http://127.0.0.1:")
    profile = load_profiles(store)["oauth2"]
    assert (profile.token_url, profile.username) == (oauth.token_url, "me@example.test")


def test_login_google_no_browser_url_from_output(
    oauth: FakeOAuthServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    oauth.add_client("desktop-app", "desktop-secret")
    store = tmp_path / "tokens.json"
    argv = [
        "login", "google", "--client-id", "desktop-app", "--client-secret", "desktop-secret",
        "--authorization-url", oauth.authorization_url, "--token-url", oauth.token_url,
        "--store", str(store), "--no-browser", "--timeout", "10",
    ]  # fmt: skip
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    runner.start()
    printed = ""
    deadline = time.monotonic() + 10
    while "response_type=code" not in printed and time.monotonic() < deadline:
        time.sleep(0.02)
        printed += capsys.readouterr().out
    url = next(w for w in printed.split() if w.startswith(oauth.authorization_url))
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert query["scope"] == "https://mail.google.com/"
    assert httpx.get(url, follow_redirects=True, timeout=10).status_code == 200
    runner.join(10)
    assert result == [0]
    assert "desktop-secret" not in printed + capsys.readouterr().out
    assert stored(store, "google")["refresh_token"].startswith("rt-")
    assert load_profiles(store)["google"].client_secret == "desktop-secret"


def test_login_state_mismatch_is_refused(
    oauth: FakeOAuthServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def forged(url: str) -> bool:
        redirect = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["redirect_uri"]
        threading.Thread(
            target=lambda: httpx.get(redirect + "?code=stolen&state=forged", timeout=10),
            daemon=True,
        ).start()
        return True

    monkeypatch.setattr(login, "open_browser", forged)
    argv = [
        "login", "oauth2", "--authorization-url", oauth.authorization_url,
        "--token-url", oauth.token_url, "--client-id", "c", "--scope", "mail",
        "--store", str(tmp_path / "t.json"), "--timeout", "10",
    ]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "state does not match" in err and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()


def test_login_microsoft_device_code(
    oauth: FakeOAuthServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "tokens.json"
    argv = [
        "login", "microsoft", "--device", "--client-id", "public-client",
        "--authority", oauth.base_url, "--tenant", "contoso", "--store", str(store),
        "--timeout", "10",
    ]  # fmt: skip
    user_code = login_with_device_code(oauth, argv, "me@contoso.test")
    out = capsys.readouterr().out
    assert user_code in out and "✓ SAVED" in out
    assert stored(store, "microsoft")["refresh_token"].startswith("rt-")
    assert "offline_access" in (load_profiles(store)["microsoft"].scope or "")
    assert oauth.token_forms[-1]["grant_type"].endswith("device_code")


def test_login_saves_the_granted_scope_and_refresh_asks_for_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 16 item 2, as node-oidc-provider behaves: `offline_access` asked for but
    # not granted, and a refresh asking for more than was granted is invalid_scope.
    with FakeOAuthServer(
        rotate_refresh_tokens=True, grantable_scopes="mail", strict_refresh_scope=True
    ) as server:
        server.add_client("conf", "conf-secret")
        visits: list[httpx.Response] = []
        monkeypatch.setattr(login, "open_browser", act_as_browser(visits))
        store = tmp_path / "tokens.json"
        argv = [
            "login", "oauth2", "--issuer", server.issuer, "--client-id", "conf",
            "--client-secret", "conf-secret", "--client-auth", "basic",
            "--scope", "mail offline_access", "--auth-param", "prompt=consent",
            "--auth-param", "login_hint=me@example.test", "--store", str(store),
            "--timeout", "10", "--name", "work",
        ]  # fmt: skip
        assert main(argv) == 0
        out = capsys.readouterr().out
        url = next(w for w in out.split() if w.startswith(server.authorization_url))
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        assert query["prompt"] == "consent" and query["login_hint"] == "me@example.test"
        assert "granted scope: mail" in out
        profile = load_profiles(store)["work"]
        assert profile.granted_scope == "mail" and profile.scope == "mail offline_access"
        assert profile.client_auth == "basic" and profile.issuer == server.issuer
        assert profile.revocation_url == server.revocation_url
        assert stored(store, "work")["scope"] == "mail"
        code_form = server.token_forms[-1]
        assert code_form["grant_type"] == "authorization_code"
        assert "client_secret" not in code_form  # HTTP Basic, as asked
        assert main(["token", "refresh", "--store", str(store), "work"]) == 0
        assert server.token_forms[-1]["scope"] == "mail"
        assert "conf-secret" not in capsys.readouterr().out


def test_login_device_flow_of_a_confidential_client_authenticates_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 16 item 1: the device authorization request carries the client's secret.
    with FakeOAuthServer() as server:
        server.add_client("conf", "conf-secret")
        store = tmp_path / "tokens.json"
        argv = [
            "login", "oauth2", "--device", "--issuer", server.issuer, "--client-id", "conf",
            "--client-secret", "conf-secret", "--scope", "mail", "--store", str(store),
            "--timeout", "10",
        ]  # fmt: skip
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
        runner.start()
        deadline = time.monotonic() + 10
        while not server.pending_user_codes() and time.monotonic() < deadline:
            time.sleep(0.02)
        (user_code,) = server.pending_user_codes()
        server.approve_device(user_code, "me@example.test")
        runner.join(10)
        assert result == [0], capsys.readouterr().err
        assert server.device_forms[0]["client_secret"] == "conf-secret"
        assert stored(store, "oauth2")["refresh_token"].startswith("rt-")


def test_login_with_private_key_jwt_and_refresh_from_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "client.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.add_client("jwt-cli", None)
        server.add_jwt_key("jwt-cli", public)
        monkeypatch.setattr(login, "open_browser", act_as_browser([]))
        store = tmp_path / "tokens.json"
        argv = [
            "login", "oauth2", "--authorization-url", server.authorization_url,
            "--token-url", server.token_url, "--client-id", "jwt-cli", "--scope", "mail",
            "--client-auth", "private_key_jwt", "--private-key", str(pem), "--key-id", "k1",
            "--store", str(store), "--timeout", "10",
        ]  # fmt: skip
        assert main(argv) == 0
        assert server.token_forms[-1]["client_assertion"].count(".") == 2
        profile = load_profiles(store)["oauth2"]
        assert profile.private_key == str(pem) and profile.client_auth == "private_key_jwt"
        assert "PRIVATE KEY" not in profiles_path(store).read_text()
        assert main(["token", "refresh", "--store", str(store)]) == 0
        assert server.token_forms[-1]["grant_type"] == "refresh_token"
        assert server.token_forms[-1]["client_assertion"].count(".") == 2
        argv[argv.index("--private-key") : argv.index("--private-key") + 2] = []
        assert main(argv) == 1
        assert "--private-key" in capsys.readouterr().err


# -- token -----------------------------------------------------------------------------


def fake_jwt(claims: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': 'k1'})}.{part(claims)}.U0lHTkFUVVJFLXNlY3JldA"


def test_token_show_redacts_and_decodes_claims(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "tokens.json"
    access = fake_jwt(
        {
            "aud": "00000003-0000-0000-c000-000000000000",
            "scp": "Mail.Read User.Read",
            "upn": "me@contoso.com",
            "tid": "tenant-1",
            "exp": int(time.time()) + 3000,
        }
    )
    refresh_token = "0.AAAA-refresh-token-secret-value"
    save_profile(
        store,
        Profile("microsoft", "microsoft", "https://login.example/token", "app-1",
                client_secret="client-secret-value", username="me@contoso.com"),
    )  # fmt: skip
    asyncio.run(
        FileTokenStore(store).save(
            "microsoft", StoredCredential(refresh_token=refresh_token, access_token=access)
        )
    )
    assert main(["token", "show", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    for secret in (access, refresh_token, "client-secret-value", access.split(".")[2]):
        assert secret not in out
    assert "0.AAAA…" in out and "stored (not shown)" in out
    assert "Mail.Read User.Read" in out and "me@contoso.com" in out and "kid=k1" in out
    assert "Microsoft Graph" in out  # the pre-flight warning
    assert main(["token", "show", "--store", str(store), "nothing"]) == 1
    assert "no credential 'nothing'" in capsys.readouterr().err


def test_token_refresh_saves_the_rotated_refresh_token(
    oauth: FakeOAuthServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "tokens.json"
    first = oauth.issue_refresh_token("me@example.test")
    save_profile(store, Profile("work", "oauth2", oauth.token_url, "cli-test", scope="mail"))
    asyncio.run(FileTokenStore(store).save("work", StoredCredential(refresh_token=first)))
    assert main(["token", "refresh", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    second = stored(store, "work")["refresh_token"]
    assert second != first and second.startswith("rt-")
    assert "rotated" in out and first not in out and second not in out
    assert stored(store, "work")["access_token"].startswith("at-")
    oauth.revoke(second)
    assert main(["token", "refresh", "--store", str(store), "work"]) == 1
    out = capsys.readouterr().out
    assert "invalid_grant" in out and "Diagnosis:" in out


# -- the command itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["demo"],
        ["login"],
        ["login", "google"],
        ["login", "microsoft"],
        ["login", "oauth2"],
        ["token"],
        ["token", "show"],
        ["token", "refresh"],
        ["check"],
    ],
)
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mailoauth" in capsys.readouterr().out


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "imap"])
    assert exit_info.value.code == 2


def test_errors_are_one_paragraph_and_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "refresh", "--store", str(tmp_path / "none.json"), "missing"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("mailoauth: error: no stored credential 'missing'")
    assert "Traceback" not in err and "--debug" in err
    assert main(["--debug", *argv]) == 1
    assert "Traceback" in capsys.readouterr().err
