"""Where errors are raised without a socket: misuse of a client that was never opened
(UsageError, the same for all three clients), and the auth loop's AuthenticationError
carrying host, port and retryable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosmtplib
import pytest

from mailoauth import ImapClient, Pop3Client, SecurityOptions, SmtpClient
from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    UsageError,
)
from mailoauth.sasl import Mechanism
from mailoauth.smtp.client import _map_smtp_errors
from mailoauth.tokens.manager import wrap_provider

pytestmark = pytest.mark.asyncio

S = SecurityOptions.SSL_IMPLICIT


def imap() -> ImapClient:
    return ImapClient("imap.example.test", 993, "u@example.test", "at", S)


def pop3() -> Pop3Client:
    return Pop3Client("pop.example.test", 995, "u@example.test", "at", S)


def smtp() -> SmtpClient:
    return SmtpClient("smtp.example.test", 465, "u@example.test", "at", S)


CALLS: dict[str, Callable[[], Awaitable[Any]]] = {
    "imap.select": lambda: imap().select(),
    "imap.examine": lambda: imap().examine(),
    "imap.status": lambda: imap().status(),
    "imap.list_folders": lambda: imap().list_folders(),
    "imap.capabilities": lambda: imap().capabilities(),
    "imap.noop": lambda: imap().noop(),
    "imap.uid_search": lambda: imap().uid_search("ALL"),
    "imap.fetch_raw": lambda: imap().fetch_raw([1]),
    "imap.add_flags": lambda: imap().add_flags([1], ["\\Seen"]),
    "imap.append": lambda: imap().append(b"Subject: x\r\n\r\nx\r\n"),
    "pop3.stat": lambda: pop3().stat(),
    "pop3.list": lambda: pop3().list(),
    "pop3.uidl": lambda: pop3().uidl(),
    "pop3.retrieve": lambda: pop3().retrieve(1),
    "pop3.delete": lambda: pop3().delete(1),
    "pop3.capabilities": lambda: pop3().capabilities(),
    "pop3.noop": lambda: pop3().noop(),
    "smtp.noop": lambda: smtp().noop(),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_command_before_connect_is_a_usage_error_naming_the_fix(call: str) -> None:
    with pytest.raises(UsageError) as info:
        await CALLS[call]()
    message = str(info.value)
    assert "connect()" in message and "async with" in message
    assert not info.value.retryable
    # Deprecated: still caught by the clause old code wrote (it was ConnectionLostError).
    assert isinstance(info.value, ConnectionLostError)
    assert not isinstance(info.value, ConfigurationError)


async def test_aclose_on_a_client_never_opened_is_quiet() -> None:
    for client in (imap(), pop3(), smtp()):
        await client.aclose()  # nothing to close: no error


class Refusing:
    def __init__(self, *, temporary: bool) -> None:
        self.temporary = temporary

    async def __call__(self, mech: Mechanism) -> SaslOutcome:
        return SaslOutcome(False, "NO [UNAVAILABLE] later", None, self.temporary)


@pytest.mark.parametrize("temporary", [True, False])
async def test_authentication_error_carries_host_port_and_retryable(temporary: bool) -> None:
    with pytest.raises(AuthenticationError) as info:
        await authenticate(
            tokens=wrap_provider("at-1"),
            username="u@example.test",
            host="imap.example.test",
            port=993,
            protocol="imap",
            mechanism="XOAUTH2",
            exchange=Refusing(temporary=temporary),
        )
    exc = info.value
    assert (exc.host, exc.port, exc.mechanism) == ("imap.example.test", 993, "XOAUTH2")
    assert exc.retryable is temporary and exc.temporary is temporary


async def test_mechanism_not_offered_carries_host_and_port() -> None:
    with pytest.raises(AuthenticationError) as info:
        choose_mechanism(["PLAIN"], None, "smtp", host="smtp.example.test", port=587)
    assert (info.value.host, info.value.port, info.value.retryable) == (
        "smtp.example.test",
        587,
        False,
    )


# SMTP: aiosmtplib's refusals become CommandErrors with the command, the codes and the
# server (mailoauth/smtp.py's _map_smtp_errors, the one place they are mapped).
SMTP_REFUSALS: list[tuple[Exception, str, int, str | None, bool]] = [
    (
        aiosmtplib.SMTPSenderRefused(553, "5.7.1 Sender not owned", "a@x"),
        "MAIL",
        553,
        "5.7.1",
        False,
    ),
    (aiosmtplib.SMTPDataError(452, "4.3.1 Insufficient storage"), "DATA", 452, "4.3.1", True),
    (aiosmtplib.SMTPDataError(554, "Transaction failed"), "DATA", 554, None, False),
    (aiosmtplib.SMTPHeloError(501, "5.5.4 Bad EHLO"), "EHLO", 501, "5.5.4", False),
    (aiosmtplib.SMTPResponseException(421, "4.7.0 Try later"), "", 421, "4.7.0", True),
]


@pytest.mark.parametrize(("refusal", "command", "code", "enhanced", "retryable"), SMTP_REFUSALS)
async def test_smtp_refusals_carry_their_command_and_codes(
    refusal: Exception, command: str, code: int, enhanced: str | None, retryable: bool
) -> None:
    with pytest.raises(CommandError) as info, _map_smtp_errors("smtp.example.test", 587):
        raise refusal
    exc = info.value
    assert (exc.command, exc.code, exc.enhanced_code) == (command, code, enhanced)
    assert (exc.host, exc.port, exc.retryable) == ("smtp.example.test", 587, retryable)
    assert f"refused {command or 'a command'}: {code}" in str(exc)
    assert exc.__cause__ is refusal


async def test_smtp_every_recipient_refused_takes_the_least_final_code() -> None:
    refusals = [
        aiosmtplib.SMTPRecipientRefused(550, "5.1.1 No such user", "a@x"),
        aiosmtplib.SMTPRecipientRefused(450, "4.2.0 Greylisted, come back later", "b@x"),
    ]
    with pytest.raises(CommandError) as info, _map_smtp_errors("smtp.example.test", 25):
        raise aiosmtplib.SMTPRecipientsRefused(refusals)
    exc = info.value
    assert (exc.command, exc.code, exc.enhanced_code) == ("RCPT", 450, "4.2.0")
    assert exc.retryable  # one recipient may still be reached later
    assert "a@x (550 5.1.1 No such user)" in exc.reply
