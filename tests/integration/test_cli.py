"""The ``mailoauth`` command, run in-process (``main([...])``) and once as a process.

Every command runs against loopback only: the demo's own sandbox, a
:class:`~mailoauth.testing.sandbox.MailSandbox` for ``check``, and a
:class:`~mailoauth.testing.oauth_server.FakeOAuthServer` for ``login`` and ``token``,
with the test acting as the browser.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailoauth.cli import main
from mailoauth.cli.profiles import Profile, save_profile
from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens import FileTokenStore, StoredCredential


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
        "✓ SMTP   sent 'Hello from mailoauth'",
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
