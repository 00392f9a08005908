"""``mailoauth check`` against a server whose every line carries terminal escapes.

The command runs as a process (``python -m mailoauth.cli``), as a user would run it,
against scripted SMTP/IMAP/POP3 servers on loopback whose greeting, capabilities and
AUTH rejection try to set the terminal title, clear the screen, recolour text, and
draw a fake ``✓ AUTH`` line (with CR, LF inside a multi-line reply, NEL and CSI). What
reaches the terminal (stdout and stderr, also with ``--debug``) must hold no control
character but the line ends, and no line the server drew.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import pytest

from mailoauth._util.text import TERMINAL_UNSAFE
from mailoauth.testing.faultproxy import Reply, ScriptedServer

pytestmark = pytest.mark.asyncio

ESC = "\x1b]0;owned\x07\x1b[2J\x1b[H\x1b[32m"  # title, clear screen, home, green
FAKE = "✓ AUTH    authenticated as boss@example.test"


def hostile(prefix: str) -> bytes:
    """A line's text that tries everything: escapes, a CR overwrite, NEL, CSI."""
    return f"{prefix}{ESC}\r{FAKE}\x85{FAKE}\x9b2J\u202e".encode()


GREETING = {
    "smtp": b"220-" + hostile("hi ") + b"\r\n220 " + hostile("") + b"\r\n",
    "imap": b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] " + hostile("") + b"\r\n",
    "pop3": b"+OK " + hostile("") + b"\r\n",
}


def answer(protocol: str) -> Callable[[bytes], Reply]:
    last_tag = [b"*"]

    def reply(raw: bytes) -> Reply:
        words = raw.rstrip(b"\r\n").split(b" ")
        if protocol == "imap" and len(words) == 1:  # the response after our "+ "
            return last_tag[0] + b" NO " + hostile("") + b"\r\n"
        tag, verb = (words[0], words[1]) if protocol == "imap" else (b"", words[0])
        last_tag[0] = tag
        verb = verb.upper()
        if protocol == "smtp":
            if verb == b"EHLO":
                return b"250-" + hostile("") + b"\r\n250 AUTH XOAUTH2\r\n"
            if verb == b"AUTH":
                # A multi-line reply: aiosmtplib joins its lines with "\n".
                return b"535-" + hostile("") + b"\r\n535 5.7.8 " + hostile("") + b"\r\n"
            return b"221 " + hostile("") + b"\r\n" if verb == b"QUIT" else b"250 ok\r\n"
        if protocol == "pop3":
            if verb == b"CAPA":
                return b"+OK\r\nSASL XOAUTH2\r\n" + hostile("X-") + b"\r\n.\r\n"
            if verb == b"AUTH":
                return b"-ERR [AUTH] " + hostile("") + b"\r\n"
            return b"+OK " + hostile("") + b"\r\n"
        if verb == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\n" + tag + b" OK done\r\n"
        if verb == b"AUTHENTICATE":
            return b"+ \r\n" if len(words) == 3 else tag + b" NO " + hostile("") + b"\r\n"
        if verb == b"LOGOUT":
            return b"* BYE " + hostile("") + b"\r\n" + tag + b" OK bye\r\n"
        return tag + b" OK done\r\n"

    return reply


async def run_check(protocol: str, port: int, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailoauth.cli",
        *extra,
        "check",
        protocol,
        "127.0.0.1",
        "--port",
        str(port),
        "--security",
        "none",
        "--user",
        "u@example.test",
        "--token",
        "at-hostile-0123456789abcdef",
        "--mechanism",
        "XOAUTH2",
        "--timeout",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8"), err.decode("utf-8")


def assert_inert(text: str) -> None:
    unsafe = sorted({f"U+{ord(c):04X}" for c in text if c in TERMINAL_UNSAFE and c != "\n"})
    assert unsafe == [], f"control characters reached the terminal: {unsafe}\n{text}"
    for line in text.splitlines():
        assert not line.lstrip().startswith("✓ AUTH"), f"the server drew a line: {line!r}"


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3"])
async def test_check_shows_hostile_server_text_escaped(protocol: str, debug: bool) -> None:
    async with ScriptedServer(GREETING[protocol], answer(protocol)) as server:
        status, out, err = await run_check(protocol, server.port, *(["--debug"] if debug else []))
    assert status == 1, out + err  # the token is rejected
    assert_inert(out)
    assert_inert(err)
    # The server's text is there, shown for what it is.
    assert "\\x1b]0;owned\\x07" in out
    assert f"\\r{FAKE}\\x85" in out
