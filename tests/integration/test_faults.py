"""Faults between the clients and real Dovecot/Postfix, injected by a proxy.

Every fault must end in a typed mailoauth error within a bounded time (client
timeout 2 s, an outer guard of 15 s so that a hang fails the test), and lose nothing:
an SMTP message cut off is never reported as sent, a POP3 session cut off deletes
nothing. Plaintext ports (with ``allow_insecure_auth``) are used where the proxy has to
see a command to cut at it; the STARTTLS ports where the fault is about TLS.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from mailoauth.errors import (
    ConnectionLostError,
    MailConnectionError,
    MailOAuthError,
    MailTimeoutError,
    TLSError,
)
from mailoauth.imap.client import ImapClient
from mailoauth.pop3 import Pop3Client
from mailoauth.sasl import create_mechanism
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SendResult, SmtpClient
from mailoauth.testing.faultproxy import Fault, FaultProxy
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

T = TypeVar("T")
TIMEOUT = 2.0
GUARD = 15.0
LOCAL = "127.0.0.1"


def new_user() -> str:
    return f"f{uuid.uuid4().hex[:10]}@example.test"


async def guarded(awaitable: Awaitable[T]) -> T:
    """Fail the test (instead of hanging it) if the client does not finish in time."""
    return await asyncio.wait_for(awaitable, GUARD)


def secret_forms(user: str, token: str, port: int) -> list[bytes]:
    """The token and the base64 initial responses that carry it."""
    forms = [token.encode()]
    for name in ("XOAUTH2", "OAUTHBEARER"):
        mech = create_mechanism(name, user, token, host=LOCAL, port=port)
        forms.append(mech.initial_response_b64())
    forms.append(base64.b64encode(token.encode()))
    return forms


def assert_nothing_secret(proxy: FaultProxy, user: str, token: str) -> None:
    sent = proxy.client_bytes
    for form in secret_forms(user, token, proxy.port):
        assert form not in sent


@pytest_asyncio.fixture
async def proxy_for(mail_servers: MailServers) -> AsyncIterator[Any]:
    proxies: list[FaultProxy] = []

    async def make(port: int) -> FaultProxy:
        proxy = FaultProxy(LOCAL, port)
        await proxy.__aenter__()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.aclose()


def _client(
    cls: type[Any],
    servers: MailServers,
    port: int,
    user: str,
    token: str,
    security: SecurityOptions,
) -> Any:
    return cls(
        LOCAL,
        port,
        user,
        token,
        security,
        ssl_context=servers.client_context(),
        timeout=TIMEOUT,
        allow_insecure_auth=security is SecurityOptions.NONE,
    )


imap = functools.partial(_client, ImapClient)
pop3 = functools.partial(_client, Pop3Client)
smtp = functools.partial(_client, SmtpClient)


async def append_messages(servers: MailServers, user: str, count: int, size: int = 2000) -> None:
    async with ImapClient(
        LOCAL,
        servers.dovecot.imaps_port,
        user,
        servers.token(user),
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=servers.client_context(),
    ) as client:
        for n in range(count):
            body = (f"line {n} " * (size // 8)).encode()
            await client.append(f"Subject: m{n}\r\n\r\n".encode() + body + b"\r\nEND\r\n")


# -- connection reset at every stage ----------------------------------------------------

CLIENTS = {"imap": imap, "pop3": pop3, "smtp": smtp}


def plain_port(servers: MailServers, protocol: str) -> int:
    return {
        "imap": servers.dovecot.imap_port,
        "pop3": servers.dovecot.pop3_port,
        "smtp": servers.postfix.no_starttls_port,
    }[protocol]


def starttls_port(servers: MailServers, protocol: str) -> int:
    return {
        "imap": servers.dovecot.imap_port,
        "pop3": servers.dovecot.pop3_port,
        "smtp": servers.postfix.submission_port,
    }[protocol]


STARTTLS_VERB = {"imap": b"STARTTLS", "pop3": b"STLS", "smtp": b"STARTTLS"}
AUTH_VERB = {"imap": b"AUTHENTICATE", "pop3": b"AUTH ", "smtp": b"AUTH "}
PROTOCOLS = ["imap", "pop3", "smtp"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stage", ["mid-greeting", "after-greeting", "starttls", "auth"])
async def test_reset_at_every_stage_is_a_connection_error(
    mail_servers: MailServers, proxy_for: Any, protocol: str, stage: str
) -> None:
    user = new_user()
    token = mail_servers.token(user)
    tls_stage = stage == "starttls"
    port = (
        starttls_port(mail_servers, protocol) if tls_stage else plain_port(mail_servers, protocol)
    )
    proxy: FaultProxy = await proxy_for(port)
    first_command = {"imap": b"CAPABILITY", "pop3": b"CAPA", "smtp": b"EHLO"}[protocol]
    fault = {
        "mid-greeting": Fault(reset_after_server_bytes=3),
        "after-greeting": Fault(reset_on_client=first_command),
        "starttls": Fault(reset_on_client=STARTTLS_VERB[protocol]),
        "auth": Fault(reset_on_client=AUTH_VERB[protocol]),
    }[stage]
    if protocol == "imap" and stage == "after-greeting":
        # Dovecot's greeting carries the capabilities: the first command is AUTHENTICATE.
        fault = Fault(reset_on_server=b"\r\n")
    proxy.script(fault)
    security = SecurityOptions.SSL_EXPLICIT if tls_stage else SecurityOptions.NONE
    client = CLIENTS[protocol](mail_servers, proxy.port, user, token, security)
    started = asyncio.get_running_loop().time()
    with pytest.raises(MailConnectionError):
        await guarded(client.connect())
    assert asyncio.get_running_loop().time() - started < TIMEOUT + 1
    assert proxy.connections[0].was_reset
    assert not getattr(client, "connected", False)
    await client.aclose()


async def test_imap_reset_mid_fetch_twice_is_connection_lost(
    mail_servers: MailServers, proxy_for: Any
) -> None:
    user = new_user()
    await append_messages(mail_servers, user, 1, size=200_000)
    proxy: FaultProxy = await proxy_for(mail_servers.dovecot.imap_port)
    cut = Fault(reset_on_server=b"BODY[] {", extra_bytes=50_000)
    proxy.script(cut, cut)  # the session, then the one retry's session
    async with imap(
        mail_servers, proxy.port, user, mail_servers.token(user), SecurityOptions.NONE
    ) as client:
        await client.select()
        (uid,) = await client.uid_search("ALL")
        # The first session is cut in FETCH; the retry's session is cut too.
        with pytest.raises(ConnectionLostError):
            await guarded(client.fetch_raw([uid]))
    assert sum(c.was_reset for c in proxy.connections) == 2


async def test_imap_reset_mid_fetch_once_is_retried_with_the_whole_message(
    mail_servers: MailServers, proxy_for: Any
) -> None:
    user = new_user()
    await append_messages(mail_servers, user, 1, size=200_000)
    proxy: FaultProxy = await proxy_for(mail_servers.dovecot.imap_port)
    async with imap(
        mail_servers, proxy.port, user, mail_servers.token(user), SecurityOptions.NONE
    ) as client:
        await client.select()
        (uid,) = await client.uid_search("ALL")
        expected = (await client.fetch_raw([uid]))[uid]
        await client.aclose()
        proxy.script(Fault(reset_on_server=b"BODY[] {", extra_bytes=50_000))
        await client.connect()
        await client.select()
        got = await guarded(client.fetch_raw([uid]))
    assert got[uid] == expected  # never a truncated message
    assert proxy.connections[1].was_reset and client.reconnects == 1


async def test_pop3_reset_mid_retr_after_dele_deletes_nothing(
    mail_servers: MailServers, proxy_for: Any
) -> None:
    user = new_user()
    await append_messages(mail_servers, user, 3, size=100_000)
    proxy: FaultProxy = await proxy_for(mail_servers.dovecot.pop3_port)
    proxy.script(Fault(reset_on_server=b"Subject: m1", extra_bytes=20_000))
    token = mail_servers.token(user)
    with pytest.raises(ConnectionLostError):
        async with pop3(mail_servers, proxy.port, user, token, SecurityOptions.NONE) as client:
            before = await client.stat()
            assert before.count == 3
            await client.delete(1)
            await guarded(client.retrieve(2))
    assert proxy.connections[0].was_reset
    async with pop3(mail_servers, proxy.port, user, token, SecurityOptions.NONE) as client:
        after = await client.stat()
    assert after.count == 3  # DELE never took effect: no QUIT was sent


@pytest.mark.parametrize("pipelining", [True, False], ids=["BDAT", "DATA"])
async def test_smtp_reset_mid_data_is_never_reported_sent(
    mail_servers: MailServers, proxy_for: Any, pipelining: bool
) -> None:
    user = new_user()
    token = mail_servers.token(user)
    proxy: FaultProxy = await proxy_for(mail_servers.postfix.no_starttls_port)
    marker = uuid.uuid4().hex
    body = b"Subject: cut " + marker.encode() + b"\r\n\r\n" + b"x" * 200_000 + b"\r\nMIDDLE\r\n"
    body += b"y" * 200_000 + b"\r\n"
    proxy.script(Fault(reset_on_client=b"MIDDLE"))
    result: SendResult | None = None
    async with smtp(mail_servers, proxy.port, user, token, SecurityOptions.NONE) as client:
        client.pipelining = pipelining  # Postfix offers PIPELINING and CHUNKING: BDAT
        with pytest.raises(ConnectionLostError):
            result = await guarded(client.sendmail(user, [user], body))
    assert result is None
    assert proxy.connections[0].was_reset
    # The cut came inside the message: after DATA's 354, or after the envelope's
    # replies (a large message waits for them before its BDAT).
    server_bytes = bytes(proxy.connections[0].server_bytes)
    assert server_bytes.endswith(
        b"354 End data with <CR><LF>.<CR><LF>\r\n" if not pipelining else b"250 2.1.5 Ok\r\n"
    )
    # The server never saw the final dot: nothing may arrive.
    await asyncio.sleep(1.0)
    async with ImapClient(
        LOCAL,
        mail_servers.dovecot.imaps_port,
        user,
        mail_servers.token(user),
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=mail_servers.client_context(),
    ) as reader:
        await reader.select()
        assert await reader.uid_search("SUBJECT", marker) == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["BDAT", "DATA"])
async def test_smtp_stall_after_final_dot_times_out_without_success(
    mail_servers: MailServers, proxy_for: Any, pipelining: bool
) -> None:
    user = new_user()
    token = mail_servers.token(user)
    proxy: FaultProxy = await proxy_for(mail_servers.postfix.no_starttls_port)
    # The end of the message: the final dot (DATA), or its last bytes (BDAT n LAST).
    proxy.script(Fault(stall_on_client=b"body\r\n" if pipelining else b"\r\n.\r\n"))
    async with smtp(mail_servers, proxy.port, user, token, SecurityOptions.NONE) as client:
        client.pipelining = pipelining
        with pytest.raises(MailTimeoutError):
            await guarded(client.sendmail(user, [user], b"Subject: s\r\n\r\nbody\r\n"))
    await guarded(proxy.connections[0].closed.wait())


# -- a server that stops answering -------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stage", ["greeting", "auth", "command"])
async def test_server_that_stops_answering_times_out_and_is_closed(
    mail_servers: MailServers, proxy_for: Any, protocol: str, stage: str
) -> None:
    user = new_user()
    token = mail_servers.token(user)
    proxy: FaultProxy = await proxy_for(plain_port(mail_servers, protocol))
    command = {"imap": b"NOOP", "pop3": b"NOOP", "smtp": b"NOOP"}[protocol]
    fault = {
        "greeting": Fault(stall_on_server=b"\r\n"),
        "auth": Fault(stall_on_client=AUTH_VERB[protocol]),
        "command": Fault(stall_on_client=command),
    }[stage]
    proxy.script(fault)
    client = CLIENTS[protocol](mail_servers, proxy.port, user, token, SecurityOptions.NONE)
    started = asyncio.get_running_loop().time()
    with pytest.raises(MailTimeoutError):
        await guarded(client.connect())
        await guarded(client.noop())
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 2 * TIMEOUT + 1
    await guarded(proxy.connections[0].closed.wait())  # the client closed its socket
    await client.aclose()


# -- STARTTLS stripped, responses injected before the handshake --------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("security", [SecurityOptions.SSL_EXPLICIT, SecurityOptions.AUTO])
async def test_stripped_starttls_is_refused_and_no_token_crosses_in_plaintext(
    mail_servers: MailServers, proxy_for: Any, protocol: str, security: SecurityOptions
) -> None:
    user = new_user()
    token = mail_servers.token(user)
    proxy: FaultProxy = await proxy_for(starttls_port(mail_servers, protocol))
    proxy.script(Fault(strip_starttls=True))
    client = CLIENTS[protocol](mail_servers, proxy.port, user, token, security)
    with pytest.raises(TLSError, match=r"STARTTLS|STLS"):
        await guarded(client.connect())
    await client.aclose()
    server_said = bytes(proxy.connections[0].server_bytes)
    assert b"STARTTLS" in server_said or b"STLS" in server_said  # the server did offer it
    assert_nothing_secret(proxy, user, token)
    assert not proxy.connections[0].was_reset


GO_AHEAD = {
    "imap": (b"Begin TLS", b"* CAPABILITY IMAP4rev1 AUTH=INJECTED\r\n"),
    "pop3": (b"Begin TLS", b"+OK injected\r\n"),
    "smtp": (b"Ready to start TLS", b"250-AUTH INJECTED\r\n250 OK\r\n"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_response_injected_before_the_handshake_is_discarded(
    mail_servers: MailServers, proxy_for: Any, protocol: str
) -> None:
    user = new_user()
    token = mail_servers.token(user)
    proxy: FaultProxy = await proxy_for(starttls_port(mail_servers, protocol))
    proxy.script(Fault(inject_after_server=GO_AHEAD[protocol]))
    client = CLIENTS[protocol](mail_servers, proxy.port, user, token, SecurityOptions.SSL_EXPLICIT)
    try:
        await guarded(client.connect())
    except TLSError:
        pass  # the injected bytes reached the handshake: refused, also fine
    else:
        try:
            await guarded(client.noop())
            if protocol == "imap":
                assert "AUTH=INJECTED" not in await client.capabilities()
            elif protocol == "smtp":
                assert "injected" not in client._smtp.server_auth_methods
        finally:
            await client.aclose()
    assert proxy.connections[0].injected
    assert_nothing_secret(proxy, user, token)


async def test_every_fault_error_is_a_mailoauth_error() -> None:
    # The hierarchy the tests above rely on: the stdlib types callers catch.
    assert issubclass(ConnectionLostError, ConnectionError)
    assert issubclass(MailTimeoutError, TimeoutError)
    assert issubclass(TLSError, MailOAuthError)
