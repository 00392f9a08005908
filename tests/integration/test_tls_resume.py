"""TLS session resumption against real Dovecot and Postfix on loopback.

The session-scoped Dovecot runs its login processes in high-performance mode, so it
resumes sessions (see :mod:`mailoauth.testing.dovecot`); a second Dovecot here runs
them one per connection, so it never does. Every test makes its own SSL context: the
session cache belongs to the context, so no other test's sessions are in it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailoauth._core.settings import ConnectionSettings
from mailoauth._core.tls_sessions import GIVE_UP_AFTER, session_cache_for
from mailoauth.imap.client import ImapClient
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.certs import TestCA
from mailoauth.testing.dovecot import DovecotServer
from mailoauth.testing.oauth_server import FakeOAuthServer
from tests.integration.conftest import MailServers, require_real_servers

pytestmark = pytest.mark.asyncio

Client = ImapClient | Pop3Client | SmtpClient
IMPLICIT = SecurityOptions.SSL_IMPLICIT
STARTTLS = SecurityOptions.SSL_EXPLICIT


async def resumed(client: Client) -> bool:
    """Connect (TLS, login), check the session works, close; whether TLS resumed."""
    async with client:
        if isinstance(client, ImapClient):
            await client.select("INBOX")
        else:
            await client.noop()
        return client.tls_resumed


def imap(servers: MailServers, ctx: ssl.SSLContext, **kw: object) -> ImapClient:
    user = "resume-imap@example.test"
    port = kw.pop("port", servers.dovecot.imaps_port)
    security = kw.pop("security", IMPLICIT)
    host = kw.pop("host", servers.host)
    settings = ConnectionSettings(host, port, security, ssl_context=ctx, **kw)  # type: ignore[arg-type]
    return ImapClient.from_settings(settings, user, servers.token(user))


def pop3(
    servers: MailServers, ctx: ssl.SSLContext, port: int, security: SecurityOptions
) -> Pop3Client:
    user = "resume-pop3@example.test"
    return Pop3Client(servers.host, port, user, servers.token(user), security, ssl_context=ctx)


def smtp(
    servers: MailServers, ctx: ssl.SSLContext, port: int, security: SecurityOptions
) -> SmtpClient:
    user = "resume-smtp@example.test"
    return SmtpClient(servers.host, port, user, servers.token(user), security, ssl_context=ctx)


async def test_imaps_second_connection_resumes(mail_servers: MailServers) -> None:
    ctx = mail_servers.client_context()
    assert [await resumed(imap(mail_servers, ctx)) for _ in range(3)] == [False, True, True]


async def test_imap_starttls_second_connection_resumes(mail_servers: MailServers) -> None:
    ctx = mail_servers.client_context()
    port = mail_servers.dovecot.imap_port
    runs = [await resumed(imap(mail_servers, ctx, port=port, security=STARTTLS)) for _ in range(2)]
    assert runs == [False, True]


async def test_pop3s_and_pop3_stls_resume(mail_servers: MailServers) -> None:
    ctx = mail_servers.client_context()
    dc = mail_servers.dovecot
    assert [await resumed(pop3(mail_servers, ctx, dc.pop3s_port, IMPLICIT)) for _ in range(2)] == [
        False,
        True,
    ]
    assert [await resumed(pop3(mail_servers, ctx, dc.pop3_port, STARTTLS)) for _ in range(2)] == [
        False,
        True,
    ]


async def test_smtp_starttls_and_smtps_resume(mail_servers: MailServers) -> None:
    ctx = mail_servers.client_context()
    pf = mail_servers.postfix
    runs = [await resumed(smtp(mail_servers, ctx, pf.submission_port, STARTTLS)) for _ in range(2)]
    assert runs == [False, True]
    runs = [await resumed(smtp(mail_servers, ctx, pf.smtps_port, IMPLICIT)) for _ in range(2)]
    assert runs == [False, True]


async def test_tls_1_2_sessions_resume(mail_servers: MailServers) -> None:
    ctx = mail_servers.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert [await resumed(imap(mail_servers, ctx)) for _ in range(2)] == [False, True]


async def test_never_offered_to_another_port_host_or_context(mail_servers: MailServers) -> None:
    ctx = mail_servers.client_context()
    dc = mail_servers.dovecot
    assert not await resumed(imap(mail_servers, ctx))
    # Same server, same context: another port (POP3S) starts afresh.
    assert not await resumed(pop3(mail_servers, ctx, dc.pop3s_port, IMPLICIT))
    # Same address under another name: a session is never offered to another host.
    assert not await resumed(imap(mail_servers, ctx, host="localhost"))
    # Another context (even one trusting the same CA) has its own sessions.
    assert not await resumed(imap(mail_servers, mail_servers.client_context()))
    # The first host and port still resume.
    assert await resumed(imap(mail_servers, ctx))
    keys = {key[:4] for key in session_cache_for(ctx)._entries}
    assert keys == {
        ("127.0.0.1", dc.imaps_port, "127.0.0.1", "implicit"),
        ("127.0.0.1", dc.pop3s_port, "127.0.0.1", "implicit"),
        ("localhost", dc.imaps_port, "localhost", "implicit"),
    }


async def test_security_mode_is_part_of_the_key(mail_servers: MailServers) -> None:
    """One port, both ways: STARTTLS on Postfix's submission port never takes the
    session of implicit TLS, whose key says 'implicit' (sessions are kept apart even
    where a server might take them)."""
    ctx = mail_servers.client_context()
    pf = mail_servers.postfix
    assert not await resumed(smtp(mail_servers, ctx, pf.smtps_port, IMPLICIT))
    assert not await resumed(smtp(mail_servers, ctx, pf.submission_port, STARTTLS))
    modes = {(key[1], key[3]) for key in session_cache_for(ctx)._entries}
    assert modes == {(pf.smtps_port, "implicit"), (pf.submission_port, "starttls")}


async def test_resumption_can_be_turned_off(mail_servers: MailServers) -> None:
    ctx = mail_servers.client_context()
    runs = [await resumed(imap(mail_servers, ctx, tls_resumption=False)) for _ in range(2)]
    assert runs == [False, False]
    assert len(session_cache_for(ctx)) == 0


@pytest.fixture(scope="module")
def no_resume_dovecot(
    servers_root: Path, test_ca: TestCA, oauth_server: FakeOAuthServer
) -> Iterator[DovecotServer]:
    """A Dovecot that never resumes: a fresh login process (and TLS context) per
    connection, Dovecot's default."""
    require_real_servers()
    server = DovecotServer(
        oauth_server.introspection_url,
        test_ca.files,
        directory=servers_root / "dc-noresume",
        no_starttls_host=None,
        tls_resumption=False,
    )
    with server:
        yield server


async def test_server_that_never_resumes_still_connects(
    mail_servers: MailServers, no_resume_dovecot: DovecotServer
) -> None:
    ctx = mail_servers.client_context()
    cache = session_cache_for(ctx)
    dc = no_resume_dovecot
    for port, security in ((dc.imaps_port, IMPLICIT), (dc.imap_port, STARTTLS)):
        runs = []
        for _ in range(GIVE_UP_AFTER):
            runs.append(await resumed(imap(mail_servers, ctx, port=port, security=security)))
            assert len(cache) == 1  # a session kept: offered to the next connection
        runs.append(await resumed(imap(mail_servers, ctx, port=port, security=security)))
        # GIVE_UP_AFTER fresh sessions refused: none offered or taken any more.
        assert len(cache) == 0
        runs.append(await resumed(imap(mail_servers, ctx, port=port, security=security)))
        assert runs == [False] * (GIVE_UP_AFTER + 2)
        assert len(cache) == 0
