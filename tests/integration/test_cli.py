"""The ``mailoauth`` command, run in-process (``main([...])``) and once as a process.

Every command runs against loopback only: the demo's own sandbox, a
:class:`~mailoauth.testing.sandbox.MailSandbox` for ``check``, and a
:class:`~mailoauth.testing.oauth_server.FakeOAuthServer` for ``login`` and ``token``,
with the test acting as the browser.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mailoauth.cli import main


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
