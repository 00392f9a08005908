"""A server that echoes the AUTH line must not put the token into errors or logs.

Scripted SMTP, IMAP and POP3 servers on loopback reject every AUTH, quoting what they
were sent: in the final reply, or inside the base64 JSON of an error challenge. The
client is given a different token on each attempt (so the retry is exercised too). The
error the client raises (its whole chain, str and repr) and every DEBUG record must
hold neither token: raw, base64, or inside a longer base64 text.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from mailoauth.errors import AuthenticationError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3 import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.faultproxy import Reply, ScriptedServer
from mailoauth.tokens.access_token import AccessToken

pytestmark = pytest.mark.asyncio

USER = "echo@example.test"
_B64_RUN = re.compile(r"[A-Za-z0-9+/]{12,}")


class TwoTokens:
    """A provider handing out a new token on every call."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        token = f"at-echo-{len(self.issued)}-{'k7Q2xZ9w' * 6}"
        self.issued.append(token)
        return AccessToken(token)


def leaked(text: str, secrets: list[str]) -> str | None:
    """The first secret found in ``text``, raw or inside any base64 run."""
    for secret in secrets:
        if secret in text:
            return secret
        for run in _B64_RUN.findall(text):
            for skip in range(4):
                chunk = run[skip:]
                chunk = chunk[: len(chunk) - len(chunk) % 4]
                try:
                    decoded = base64.b64decode(chunk).decode("latin-1")
                except (binascii.Error, ValueError):
                    continue
                if secret in decoded:
                    return secret
    return None


def challenge(echo: bytes) -> bytes:
    body = {"status": "401", "schemes": "bearer", "scope": echo.decode(), "echo": echo.decode()}
    return base64.b64encode(json.dumps(body).encode())


class Echo:
    """The scripted dialogue of one protocol; ``mode`` is "reply" or "challenge"."""

    def __init__(self, protocol: str, mode: str) -> None:
        self.protocol, self.mode = protocol, mode
        self.auth_line = b""  # the AUTH line awaiting its final reply (challenge mode)
        self.tag = b""

    def greeting(self) -> bytes:
        return {
            "smtp": b"220 echo ESMTP\r\n",
            "imap": b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] echo\r\n",
            "pop3": b"+OK echo\r\n",
        }[self.protocol]

    def final(self, echo: bytes) -> bytes:
        return {
            "smtp": b"535 5.7.8 rejected: " + echo + b"\r\n",
            "imap": self.tag + b" NO [AUTHENTICATIONFAILED] you sent: " + echo + b"\r\n",
            "pop3": b"-ERR [AUTH] you sent: " + echo + b"\r\n",
        }[self.protocol]

    def answer(self, raw: bytes) -> Reply:
        line = raw.rstrip(b"\r\n")
        if self.auth_line:  # the client's answer to our error challenge
            echo, self.auth_line = self.auth_line, b""
            return self.final(echo + b" / " + line)
        words = line.split(b" ")
        verb = (words[1] if self.protocol == "imap" and len(words) > 1 else words[0]).upper()
        if self.protocol == "imap":
            self.tag = words[0]
        if verb in (b"AUTH", b"AUTHENTICATE"):
            if self.mode == "reply":
                return self.final(line)
            self.auth_line = line
            prefix = {"smtp": b"334 ", "imap": b"+ ", "pop3": b"+ "}[self.protocol]
            return prefix + challenge(line) + b"\r\n"
        return {
            b"EHLO": b"250-echo\r\n250 AUTH XOAUTH2\r\n",
            b"CAPA": b"+OK\r\nSASL XOAUTH2\r\n.\r\n",
            b"CAPABILITY": b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n"
            + self.tag
            + b" OK done\r\n",
            b"LOGOUT": b"* BYE bye\r\n" + self.tag + b" OK bye\r\n",
            b"QUIT": b"221 bye\r\n" if self.protocol == "smtp" else b"+OK bye\r\n",
        }.get(verb, b"250 ok\r\n" if self.protocol == "smtp" else self.tag + b" OK done\r\n")


CLIENTS: dict[str, Callable[..., Any]] = {
    "smtp": SmtpClient,
    "imap": ImapClient,
    "pop3": Pop3Client,
}


@pytest.mark.parametrize("mode", ["reply", "challenge"])
@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3"])
async def test_an_echoed_token_reaches_no_error_and_no_log(
    protocol: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = Echo(protocol, mode)
    tokens = TwoTokens()
    async with ScriptedServer(script.greeting(), script.answer) as server:
        client = CLIENTS[protocol](
            "127.0.0.1",
            server.port,
            USER,
            tokens,
            SecurityOptions.NONE,
            allow_insecure_auth=True,
            timeout=5.0,
            mechanism="XOAUTH2",
        )
        with pytest.raises(AuthenticationError) as info:
            await client.connect()
        await client.aclose()
    assert len(tokens.issued) == 2  # rejected, refreshed, rejected again
    # The server did echo both initial responses (the test is not vacuous) ...
    for token in tokens.issued:
        assert leaked(server.received.decode("latin-1"), [token]) == token
    error = info.value
    texts: list[str] = []
    exc: BaseException | None = error
    while exc is not None:
        texts += [str(exc), repr(exc), repr(vars(exc))]
        exc = exc.__cause__ or exc.__context__
    if error.challenge is not None:
        texts.append(repr(error.challenge))
    assert leaked("\n".join(texts), tokens.issued) is None, "a token is in the error"
    for record in caplog.records:
        found = leaked(record.getMessage(), tokens.issued)
        assert found is None, f"a token is in a {record.levelname} record of {record.name}"
    # ... and the echo is in the error and the log, scrubbed.
    assert "<redacted>" in str(error) or "<redacted>" in (
        error.challenge.describe() if error.challenge else ""
    )
    assert any("<redacted>" in r.getMessage() for r in caplog.records)
