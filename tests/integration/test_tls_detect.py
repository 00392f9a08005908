"""SecurityOptions.AUTO finds implicit TLS on any port without sending plaintext, and
every protocol names the right SecurityOptions when the port speaks the other way
(issue 10, item 8).

The testing kit's servers listen on random ports, so "implicit TLS on a port not known
for it" is the normal case here. A FaultProxy in front records every byte the client
sent: before TLS is up, nothing but a TLS handshake record (first byte 0x16) may go out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

from mailoauth._core.connection import TLS_DETECT_WAIT, Connection
from mailoauth._core.dialer import RoutingDialer
from mailoauth._util.routing import Route
from mailoauth.errors import MailTimeoutError, TLSError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.faultproxy import FaultProxy, ScriptedServer
from mailoauth.testing.sandbox import MailSandbox
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

T = TypeVar("T")
GUARD = 20.0
PROTOCOLS = ["smtp", "imap", "pop3"]
CLIENTS: dict[str, type[Any]] = {"smtp": SmtpClient, "imap": ImapClient, "pop3": Pop3Client}
TLS_HANDSHAKE_RECORD = 0x16


async def guarded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, GUARD)


def client_for(
    box: MailSandbox, protocol: str, port: int, security: SecurityOptions, **options: Any
) -> Any:
    user = box.user(f"{protocol}-{security.name.lower()}-{port}@example.test")
    options.setdefault("timeout", 5.0)
    return CLIENTS[protocol](
        box.host, port, user.username, user.access_token(), security,
        ssl_context=box.ssl_context, **options,
    )  # fmt: skip


def nothing_plaintext(sent: bytes) -> bool:
    return not sent or sent[0] == TLS_HANDSHAKE_RECORD


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_auto_finds_implicit_tls_on_a_port_not_known_for_it(
    mailoauth_sandbox: MailSandbox, protocol: str
) -> None:
    box = mailoauth_sandbox
    async with FaultProxy(box.host, getattr(box, protocol).tls_port) as proxy:
        client = client_for(box, protocol, proxy.port, SecurityOptions.AUTO)
        async with client:
            await guarded(client.noop())
            assert client.plan.implicit_tls and not client.plan.starttls
        assert len(proxy.connections) == 1  # found on the first connection
        assert proxy.connections[0].client_bytes[0] == TLS_HANDSHAKE_RECORD


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_auto_on_a_starttls_port_uses_starttls(
    mailoauth_sandbox: MailSandbox, protocol: str
) -> None:
    box = mailoauth_sandbox
    async with FaultProxy(box.host, getattr(box, protocol).starttls_port) as proxy:
        client = client_for(box, protocol, proxy.port, SecurityOptions.AUTO)
        async with client:
            await guarded(client.noop())
            assert client.plan.starttls and not client.plan.implicit_tls
        assert len(proxy.connections) == 1
        assert proxy.connections[0].client_bytes[0] != TLS_HANDSHAKE_RECORD  # EHLO / CAPA


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_ssl_implicit_on_a_starttls_port_names_ssl_explicit(
    mailoauth_sandbox: MailSandbox, protocol: str
) -> None:
    box = mailoauth_sandbox
    async with FaultProxy(box.host, getattr(box, protocol).starttls_port) as proxy:
        client = client_for(box, protocol, proxy.port, SecurityOptions.SSL_IMPLICIT)
        with pytest.raises(TLSError, match=r"plaintext greeting .*SecurityOptions.SSL_EXPLICIT"):
            await guarded(client.connect())
        await client.aclose()
        assert nothing_plaintext(bytes(proxy.connections[0].client_bytes))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_ssl_explicit_on_an_implicit_tls_port_names_ssl_implicit(
    mailoauth_sandbox: MailSandbox, protocol: str
) -> None:
    box = mailoauth_sandbox
    port = getattr(box, protocol).tls_port
    client = client_for(box, protocol, port, SecurityOptions.SSL_EXPLICIT, timeout=0.5)
    with pytest.raises(MailTimeoutError, match=r"implicit TLS.*SecurityOptions.SSL_IMPLICIT"):
        await guarded(client.connect())
    await client.aclose()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_auto_on_a_well_known_tls_port_that_speaks_starttls_falls_back(
    mailoauth_sandbox: MailSandbox, protocol: str
) -> None:
    # AUTO on 993/995/465 starts TLS at once; a server there that greets in plaintext
    # is dialled again for (required) STARTTLS, having been sent only a ClientHello.
    box = mailoauth_sandbox
    well_known = {"smtp": 465, "imap": 993, "pop3": 995}[protocol]
    name = f"{protocol}.fallback.example.test"
    async with FaultProxy(box.host, getattr(box, protocol).starttls_port) as proxy:
        route = {(name, well_known): Route(box.host, proxy.port, box.ssl_context)}
        user = box.user(f"fallback-{protocol}@example.test")
        client = CLIENTS[protocol](
            name, well_known, user.username, user.access_token(), SecurityOptions.AUTO,
            timeout=5.0, dialer=RoutingDialer(route),
        )  # fmt: skip
        async with client:
            await guarded(client.noop())
            assert client.plan.starttls
        first, second = proxy.connections
        assert nothing_plaintext(bytes(first.client_bytes))
        assert second.client_bytes[0] != TLS_HANDSHAKE_RECORD


async def test_auto_server_greeting_after_the_wait_is_dialled_again_for_starttls() -> None:
    # A plaintext server slower to greet than the detection wait gets a ClientHello,
    # answers it in plaintext, and is dialled again without the wait.
    timeout = 1.0
    wait = min(TLS_DETECT_WAIT, timeout / 2)

    async def late_greeting() -> AsyncIterator[bytes]:
        await asyncio.sleep(wait + 0.3)
        yield b"+OK late but plaintext\r\n"

    async with ScriptedServer(late_greeting) as server:
        conn = await guarded(
            Connection.open(
                "127.0.0.1", server.port, implicit_tls=False, timeout=timeout, detect=True
            )
        )
        try:
            assert not conn.tls_active and not conn.tls_detected
            assert await guarded(conn.receive()) == b"+OK late but plaintext\r\n"
        finally:
            conn.close()
        assert server.connections == 2
        assert server.received[0] == TLS_HANDSHAKE_RECORD  # all the first one was sent


async def test_auto_greeting_within_tls_detect_wait_means_plaintext_and_no_tls_byte() -> None:
    # With a long timeout the wait is TLS_DETECT_WAIT itself: a greeting just inside it
    # is a plaintext (STARTTLS) server, and the client has sent nothing at all.
    async def greeting() -> AsyncIterator[bytes]:
        await asyncio.sleep(TLS_DETECT_WAIT - 0.5)
        yield b"* OK ready\r\n"

    async with ScriptedServer(greeting) as server:
        conn = await guarded(
            Connection.open("127.0.0.1", server.port, implicit_tls=False, timeout=30, detect=True)
        )
        try:
            assert not conn.tls_active and not conn.tls_detected
            assert await guarded(conn.receive()) == b"* OK ready\r\n"
        finally:
            conn.close()
    assert server.connections == 1 and server.received == b""


async def test_auto_silent_server_is_a_timeout_that_says_so() -> None:
    async with ScriptedServer(b"") as server:
        client = Pop3Client(
            "127.0.0.1", server.port, "u@example.test", "t0k3n", SecurityOptions.AUTO,
            timeout=0.6,
        )  # fmt: skip
        with pytest.raises(
            MailTimeoutError,
            match=r"answer to the TLS handshake \(AUTO started TLS: no plaintext greeting",
        ):
            await guarded(client.connect())
        await client.aclose()
    assert nothing_plaintext(bytes(server.received))


# -- the same against real Dovecot and Postfix -------------------------------------------


def real_ports(servers: MailServers, protocol: str) -> tuple[int, int]:
    """(implicit-TLS port, STARTTLS port) of the real server for ``protocol``."""
    return {
        "smtp": (servers.postfix.smtps_port, servers.postfix.submission_port),
        "imap": (servers.dovecot.imaps_port, servers.dovecot.imap_port),
        "pop3": (servers.dovecot.pop3s_port, servers.dovecot.pop3_port),
    }[protocol]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_real_servers_auto_on_both_ports_and_ssl_implicit_on_starttls(
    mail_servers: MailServers, protocol: str
) -> None:
    implicit_port, starttls_port = real_ports(mail_servers, protocol)
    user = f"detect-{protocol}@example.test"

    def client(port: int, security: SecurityOptions) -> Any:
        return CLIENTS[protocol](
            "127.0.0.1", port, user, mail_servers.token(user), security,
            ssl_context=mail_servers.client_context(), timeout=5.0,
        )  # fmt: skip

    for port, implicit in ((implicit_port, True), (starttls_port, False)):
        async with client(port, SecurityOptions.AUTO) as auto:
            await guarded(auto.noop())
            assert (auto.plan.implicit_tls, auto.plan.starttls) == (implicit, not implicit)
    wrong = client(starttls_port, SecurityOptions.SSL_IMPLICIT)
    with pytest.raises(TLSError, match=r"plaintext greeting .*SecurityOptions.SSL_EXPLICIT"):
        await guarded(wrong.connect())
    await wrong.aclose()
