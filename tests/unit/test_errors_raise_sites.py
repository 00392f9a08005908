"""Where errors are raised without a socket: misuse of a client that was never opened
(UsageError, the same for all three clients), and the auth loop's AuthenticationError
carrying host, port and retryable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mailoauth import ImapClient, Pop3Client, SecurityOptions, SmtpClient
from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth.errors import (
    AuthenticationError,
    ConfigurationError,
    UsageError,
)
from mailoauth.sasl import Mechanism
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
    assert not isinstance(info.value, ConnectionError | ConfigurationError)


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
