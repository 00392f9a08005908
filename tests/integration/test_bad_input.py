"""Control characters in every user-supplied field are refused before anything is sent:
CR, LF and NUL, and also the SASL separator ``\x01`` and NEL ``\x85`` (one guard,
mailoauth/_util/text.py, refuses all of C0, DEL, C1 and U+2028/9).

Each client talks to the real servers through a recording proxy (plaintext ports on
loopback, so the recorded bytes can be read): after a refused call, not one more byte
has crossed, and the session still works.
"""

from __future__ import annotations

import asyncio
import email.message
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from mailoauth.errors import ConfigurationError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3 import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.faultproxy import FaultProxy
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

BAD = ["\r", "\n", "\x00", "\r\n", "\x01", "\x85"]
INJECTED = "x{bad}A999 DELETE INBOX"  # what an injection would look like
LOCAL = "127.0.0.1"


def new_user() -> str:
    return f"b{uuid.uuid4().hex[:10]}@example.test"


def poison(bad: str) -> str:
    return INJECTED.format(bad=bad)


@pytest_asyncio.fixture
async def proxy_to(mail_servers: MailServers) -> AsyncIterator[Callable[[int], Any]]:
    proxies: list[FaultProxy] = []

    async def make(port: int) -> FaultProxy:
        proxy = FaultProxy(LOCAL, port)
        await proxy.__aenter__()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.aclose()


async def assert_refused_silently(proxy: FaultProxy, call: Awaitable[Any]) -> None:
    before = len(proxy.client_bytes)
    with pytest.raises(ConfigurationError):
        await asyncio.wait_for(call, 10)
    await asyncio.sleep(0.05)
    after = proxy.client_bytes
    assert len(after) == before, after[before:]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("cls", [ImapClient, Pop3Client, SmtpClient])
async def test_username_is_refused_at_construction(cls: type[Any], bad: str) -> None:
    with pytest.raises(ConfigurationError):
        cls(LOCAL, 143, f"user{bad}@example.test", "at-x", SecurityOptions.SSL_EXPLICIT)


IMAP_CALLS: dict[str, Callable[[ImapClient, str], Awaitable[Any]]] = {
    "select": lambda c, v: c.select(v),
    "examine": lambda c, v: c.examine(v),
    "status": lambda c, v: c.status(v),
    "status item": lambda c, v: c.status("INBOX", ["MESSAGES", v]),
    "list reference": lambda c, v: c.list_folders(v),
    "list pattern": lambda c, v: c.list_folders("", v),
    "search": lambda c, v: c.uid_search("SUBJECT", v),
    "append mailbox": lambda c, v: c.append(b"Subject: x\r\n\r\nx\r\n", v),
    "append flag": lambda c, v: c.append(b"Subject: x\r\n\r\nx\r\n", flags=[v]),
    "add flag": lambda c, v: c.add_flags([1], [v]),
    "remove flag": lambda c, v: c.remove_flags([1], [v]),
    "copy": lambda c, v: c.copy([1], v),
    "move": lambda c, v: c.move([1], v),
}


@pytest.mark.parametrize("bad", BAD)
async def test_imap_fields_are_refused_before_sending(
    mail_servers: MailServers, proxy_to: Any, bad: str
) -> None:
    user = new_user()
    proxy: FaultProxy = await proxy_to(mail_servers.dovecot.imap_port)
    async with ImapClient(
        LOCAL,
        proxy.port,
        user,
        mail_servers.token(user),
        SecurityOptions.NONE,
        allow_insecure_auth=True,
    ) as client:
        await client.append(b"Subject: one\r\n\r\nbody\r\n")
        await client.select()
        for name, call in IMAP_CALLS.items():
            try:
                await assert_refused_silently(proxy, call(client, poison(bad)))
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
        assert len(await client.uid_search("ALL")) == 1  # the session is unharmed
    assert b"DELETE" not in proxy.client_bytes


@pytest.mark.parametrize("bad", BAD)
async def test_smtp_addresses_are_refused_before_sending(
    mail_servers: MailServers, proxy_to: Any, bad: str
) -> None:
    user = new_user()
    proxy: FaultProxy = await proxy_to(mail_servers.postfix.no_starttls_port)
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, user, "hi"
    msg.set_content("hi\n")
    evil = f"{user}{bad}RCPT TO:<victim@example.test>"
    async with SmtpClient(
        LOCAL,
        proxy.port,
        user,
        mail_servers.token(user),
        SecurityOptions.NONE,
        allow_insecure_auth=True,
    ) as client:
        body = b"Subject: x\r\n\r\nx\r\n"
        await assert_refused_silently(proxy, client.sendmail(evil, [user], body))
        await assert_refused_silently(proxy, client.sendmail(user, [user, evil], body))
        await assert_refused_silently(proxy, client.sendmail(user, evil, body))
        await assert_refused_silently(proxy, client.send_message(msg, sender=evil))
        await assert_refused_silently(proxy, client.send_message(msg, recipients=[evil]))
        result = await client.send_message(msg)  # the session is unharmed
        assert result.refused == {}
    assert b"victim" not in proxy.client_bytes


@pytest.mark.parametrize("bad", [*BAD, 0, -1, "1\r\nDELE 2", True])
async def test_pop3_arguments_are_refused_before_sending(
    mail_servers: MailServers, proxy_to: Any, bad: Any
) -> None:
    user = new_user()
    proxy: FaultProxy = await proxy_to(mail_servers.dovecot.pop3_port)
    async with Pop3Client(
        LOCAL,
        proxy.port,
        user,
        mail_servers.token(user),
        SecurityOptions.NONE,
        allow_insecure_auth=True,
    ) as client:
        for call in (client.retrieve, client.delete, lambda n: client.top(n, 0)):
            await assert_refused_silently(proxy, call(bad))
        await client.stat()  # the session is unharmed
    assert b"DELE" not in proxy.client_bytes
