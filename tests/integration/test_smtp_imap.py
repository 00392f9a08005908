"""SmtpClient and ImapClient against real Postfix and Dovecot on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.message
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from mailoauth.errors import (
    AuthenticationError,
    InsecureTransportError,
    PermanentTokenError,
    TLSError,
    TokenExpiredError,
)
from mailoauth.imap.client import REAUTH_MARGIN, ImapClient
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.clock import FakeClock
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.tokens.access_token import AccessToken, TokenProvider, utcnow
from mailoauth.tokens.manager import TokenManager
from mailoauth.tokens.static import StaticTokenProvider
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

Token = str | AccessToken | TokenProvider

MECHANISMS = ["XOAUTH2", "OAUTHBEARER"]


class IssuingProvider:
    """A custom provider in the contract's shape: one async method.

    Mints tokens straight from the fake OAuth server, counts requests, and can be told
    to fail permanently (a dead grant)."""

    def __init__(
        self,
        oauth: FakeOAuthServer,
        username: str,
        lifetime: float = 3600.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.oauth = oauth
        self.username = username
        self.lifetime = lifetime
        self.clock = clock
        self.calls = 0
        self.dead = False
        self.issued: list[str] = []

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        await asyncio.sleep(0.01)  # a network round trip, so that callers pile up
        if self.dead:
            raise PermanentTokenError(
                "invalid_grant: the refresh token was revoked", error="invalid_grant"
            )
        value = self.oauth.issue_access_token(self.username, lifetime=self.lifetime)
        self.issued.append(value)
        return AccessToken(value, self.clock() + dt.timedelta(seconds=self.lifetime))


@pytest.fixture
def clock(mail_servers: MailServers) -> Iterator[FakeClock]:
    """One clock for the test: the OAuth server reads it, so Dovecot's introspection
    (and through Dovecot, Postfix's) sees tokens expire when it is moved forward."""
    fake = FakeClock()
    mail_servers.oauth.clock = fake.time
    try:
        yield fake
    finally:
        mail_servers.oauth.clock = time.time


def imaps(servers: MailServers, user: str, token: Token, **options: Any) -> ImapClient:
    """An ImapClient for Dovecot's implicit-TLS port, trusting the test CA."""
    return ImapClient(
        "localhost",
        servers.dovecot.imaps_port,
        user,
        token,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=servers.client_context(),
        **options,
    )


def submission(servers: MailServers, user: str, token: Token, **options: Any) -> SmtpClient:
    """An SmtpClient for Postfix's submission port (STARTTLS), trusting the test CA."""
    return SmtpClient(
        "localhost",
        servers.postfix.submission_port,
        user,
        token,
        ssl_context=servers.client_context(),
        **options,
    )


def new_user() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.test"


def make_message(sender: str, to: str, subject: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("first line\n.a line that starts with a dot\nlast line\n")
    return msg


async def wait_for_messages(imap: ImapClient, count: int, timeout: float = 10.0) -> list[int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await imap.select()
        uids = await imap.uid_search("ALL")
        if len(uids) >= count or asyncio.get_running_loop().time() > deadline:
            return uids
        await asyncio.sleep(0.1)


SMTP_MODES = [
    ("submission_port", SecurityOptions.SSL_EXPLICIT),
    ("smtps_port", SecurityOptions.SSL_IMPLICIT),
    ("submission_port", SecurityOptions.AUTO),
]
IMAP_MODES = [
    ("imaps_port", SecurityOptions.SSL_IMPLICIT),
    ("imap_port", SecurityOptions.SSL_EXPLICIT),
    ("imap_port", SecurityOptions.AUTO),
]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(("smtp_port", "smtp_security"), SMTP_MODES)
@pytest.mark.parametrize(("imap_port", "imap_security"), IMAP_MODES)
async def test_send_then_read_back(
    mail_servers: MailServers,
    mechanism: str,
    smtp_port: str,
    smtp_security: SecurityOptions,
    imap_port: str,
    imap_security: SecurityOptions,
) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user)
    ctx = mail_servers.client_context()
    subject = f"hello {uuid.uuid4().hex}"
    async with SmtpClient(
        "localhost",
        getattr(mail_servers.postfix, smtp_port),
        user,
        provider,
        smtp_security,
        ssl_context=ctx,
        mechanism=mechanism,
    ) as smtp:
        result = await smtp.send_message(make_message(user, user, subject))
        assert result.refused == {}
        assert smtp.mechanism_used == mechanism
    async with ImapClient(
        "localhost",
        getattr(mail_servers.dovecot, imap_port),
        user,
        provider,
        imap_security,
        ssl_context=ctx,
        mechanism=mechanism,
    ) as imap:
        assert imap.mechanism_used == mechanism
        uids = await wait_for_messages(imap, 1)
        assert len(uids) == 1
        message = await imap.fetch_message(uids[0])
        assert message["Subject"] == subject
        assert ".a line that starts with a dot" in message.get_content()
    assert provider.calls == 1  # both clients shared one manager: one token


async def test_mechanism_default_prefers_oauthbearer(mail_servers: MailServers) -> None:
    user = new_user()
    async with imaps(mail_servers, user, mail_servers.token(user)) as imap:
        assert imap.mechanism_used == "OAUTHBEARER"
        assert "IMAP4REV1" in {c.upper() for c in await imap.capabilities()}


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_plaintext_needs_explicit_opt_in(mail_servers: MailServers, mechanism: str) -> None:
    user = new_user()
    host = mail_servers.dovecot.no_starttls_host
    assert host is not None and mail_servers.dovecot.imap_no_starttls_port is not None
    with pytest.raises(InsecureTransportError, match="allow_insecure_auth=True"):
        ImapClient(
            host, mail_servers.dovecot.imap_no_starttls_port, user, "t", SecurityOptions.NONE
        )
    async with ImapClient(
        host,
        mail_servers.dovecot.imap_no_starttls_port,
        user,
        mail_servers.token(user),
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        mechanism=mechanism,
    ) as imap:
        info = await imap.select()
        assert info.exists == 0
    async with SmtpClient(
        "127.0.0.1",
        mail_servers.postfix.no_starttls_port,
        user,
        mail_servers.token(user),
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        mechanism=mechanism,
    ) as smtp:
        await smtp.sendmail(user, [user], b"Subject: plain\r\n\r\nbody\r\n")


@pytest.mark.parametrize("security", [SecurityOptions.SSL_EXPLICIT, SecurityOptions.AUTO])
async def test_starttls_required_but_not_offered(
    mail_servers: MailServers, security: SecurityOptions
) -> None:
    user = new_user()
    host = mail_servers.dovecot.no_starttls_host
    assert host is not None and mail_servers.dovecot.imap_no_starttls_port is not None
    with pytest.raises(TLSError, match="does not offer STARTTLS"):
        async with ImapClient(
            host,
            mail_servers.dovecot.imap_no_starttls_port,
            user,
            mail_servers.token(user),
            security,
        ):
            pass
    with pytest.raises(TLSError, match="does not offer STARTTLS"):
        async with SmtpClient(
            "127.0.0.1",
            mail_servers.postfix.no_starttls_port,
            user,
            mail_servers.token(user),
            security,
        ):
            pass


async def test_bad_certificate_is_refused(mail_servers: MailServers) -> None:
    user = new_user()
    token = mail_servers.token(user)
    # No ssl_context: the system CAs do not trust the test CA.
    with pytest.raises(TLSError, match="certificate"):
        async with ImapClient(
            "localhost", mail_servers.dovecot.imaps_port, user, token, SecurityOptions.SSL_IMPLICIT
        ):
            pass
    with pytest.raises(TLSError, match="certificate"):
        async with SmtpClient("localhost", mail_servers.postfix.submission_port, user, token):
            pass
    # A context that trusts some other CA.
    other_ca = trustme.CA()
    other = ssl.create_default_context()
    other_ca.configure_trust(other)
    with pytest.raises(TLSError, match="certificate"):
        async with ImapClient(
            "localhost",
            mail_servers.dovecot.imap_port,
            user,
            token,
            SecurityOptions.SSL_EXPLICIT,
            ssl_context=other,
        ):
            pass


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_revoked_token_is_refreshed_and_retried_once(
    mail_servers: MailServers, mechanism: str
) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user)
    async with imaps(mail_servers, user, provider, mechanism=mechanism) as imap:
        await imap.select()
    mail_servers.oauth.revoke(provider.issued[-1])
    async with imaps(mail_servers, user, provider, mechanism=mechanism) as imap:
        await imap.select()
    async with submission(mail_servers, user, provider, mechanism=mechanism) as smtp:
        mail_servers.oauth.revoke(provider.issued[-1])
    async with submission(mail_servers, user, provider, mechanism=mechanism) as smtp:
        await smtp.sendmail(user, [user], b"Subject: after revoke\r\n\r\nok\r\n")
    assert provider.calls == 3  # the first token, then one refresh per revocation


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_rejected_twice_raises_with_server_reply(
    mail_servers: MailServers, mechanism: str
) -> None:
    user = new_user()

    class WrongUserProvider:
        calls = 0

        async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
            self.calls += 1
            return AccessToken(mail_servers.oauth.issue_access_token("someone-else@example.test"))

    provider = WrongUserProvider()
    with pytest.raises(AuthenticationError) as info:
        async with imaps(mail_servers, user, provider, mechanism=mechanism):
            pass
    assert "AUTHENTICATIONFAILED" in info.value.server_reply
    assert info.value.challenge is not None
    assert "scope" in str(info.value)
    assert provider.calls == 2
    with pytest.raises(AuthenticationError) as smtp_info:
        async with submission(mail_servers, user, provider, mechanism=mechanism):
            pass
    assert smtp_info.value.server_reply.startswith("535")
    assert smtp_info.value.challenge is not None


async def test_static_token_rejected_says_pass_a_provider(mail_servers: MailServers) -> None:
    user = new_user()
    token = mail_servers.token(user)
    mail_servers.oauth.revoke(token)
    with pytest.raises(AuthenticationError, match="pass a TokenProvider"):
        async with imaps(mail_servers, user, token):
            pass


async def test_expired_static_token_fails_before_connecting(mail_servers: MailServers) -> None:
    token = AccessToken("expired", utcnow() - dt.timedelta(seconds=5))
    with pytest.raises(TokenExpiredError, match="provider"):
        async with ImapClient(
            "localhost",
            mail_servers.dovecot.imaps_port,
            "x@example.test",
            token,
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=mail_servers.client_context(),
        ):
            pass


async def test_refresh_that_fails_permanently(mail_servers: MailServers) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user)
    ctx = mail_servers.client_context()
    async with imaps(mail_servers, user, provider) as imap:
        await imap.select()
    mail_servers.oauth.revoke_user(user)
    provider.dead = True
    for client in (
        imaps(mail_servers, user, provider),
        SmtpClient(
            "localhost",
            mail_servers.postfix.smtps_port,
            user,
            provider,
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=ctx,
        ),
    ):
        with pytest.raises(PermanentTokenError, match="invalid_grant"):
            await asyncio.wait_for(client.connect(), 10)
        await client.aclose()


async def test_token_expiring_between_operations(
    mail_servers: MailServers, clock: FakeClock
) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user, lifetime=3600, clock=clock.now)
    tokens = TokenManager(provider, clock=clock.now)  # ImapClient reads its clock too
    async with imaps(mail_servers, user, tokens) as imap:
        await imap.select()
        clock.advance(3601)  # the session's token has expired now
        assert not mail_servers.oauth.is_active(provider.issued[-1])
        assert await imap.uid_search("ALL") == []
        assert imap.reconnects == 1  # re-authenticated with a fresh token, reselected
    assert provider.calls == 2
    async with submission(mail_servers, user, tokens) as smtp:
        await smtp.sendmail(user, [user], b"Subject: one\r\n\r\n1\r\n")
        clock.advance(3601)
        assert not mail_servers.oauth.is_active(provider.issued[-1])
        # The authenticated session outlives its token; a new connection gets a new one.
        await smtp.sendmail(user, [user], b"Subject: two\r\n\r\n2\r\n")
    assert provider.calls == 2
    async with submission(mail_servers, user, tokens) as smtp:
        await smtp.sendmail(user, [user], b"Subject: three\r\n\r\n3\r\n")
    assert provider.calls == 3  # refreshed ahead of use: never sent an expired token


async def test_static_token_expiring_between_operations_fails_clearly(
    mail_servers: MailServers, clock: FakeClock
) -> None:
    user = new_user()
    value = mail_servers.oauth.issue_access_token(user, lifetime=3600)
    token = AccessToken(value, clock.now() + dt.timedelta(seconds=3600))
    # What a client builds from a bare AccessToken, on the test's clock.
    tokens = TokenManager(StaticTokenProvider(token, clock=clock.now), clock=clock.now)
    async with submission(mail_servers, user, tokens) as smtp:
        await smtp.sendmail(user, [user], b"Subject: before\r\n\r\nok\r\n")
    clock.advance(3601)
    with pytest.raises(TokenExpiredError, match="provider"):
        async with submission(mail_servers, user, tokens):
            pass


async def test_200_concurrent_clients_share_one_refresh(mail_servers: MailServers) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user, lifetime=3600)
    # Prime the manager with a token that has already expired.
    from mailoauth.tokens.manager import wrap_provider

    manager = wrap_provider(provider)
    await manager.get_access_token()
    mail_servers.oauth.revoke(provider.issued[-1])
    manager._token = AccessToken(provider.issued[-1], utcnow() - dt.timedelta(seconds=1))
    calls_before = provider.calls

    async def one() -> int:
        async with imaps(mail_servers, user, provider) as imap:
            return (await imap.select()).exists

    results = await asyncio.gather(*(one() for _ in range(200)))
    assert results == [0] * 200
    assert provider.calls - calls_before == 1


async def test_idle_reports_new_mail_and_renews(mail_servers: MailServers) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user)
    async with imaps(mail_servers, user, provider, idle_renew_after=0.2) as imap:
        await imap.select()

        async def deliver() -> None:
            await asyncio.sleep(0.6)  # after at least one renewal of the IDLE
            async with submission(mail_servers, user, provider) as smtp:
                await smtp.sendmail(user, [user], b"Subject: pushed\r\n\r\nhi\r\n")

        task = asyncio.create_task(deliver())
        events = []
        async for event in imap.idle(timeout=15):
            events.append(event)
            if event.kind == "EXISTS":
                break
        await task
        assert events[-1].kind == "EXISTS" and events[-1].number == 1
        # The session is still usable after IDLE.
        assert len(await imap.uid_search("ALL")) == 1


async def test_imap_session_reconnects_after_server_drops_it(mail_servers: MailServers) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user)
    mail_servers.dovecot.deliver(user, b"Subject: kept\r\n\r\nbody\r\n")
    async with imaps(mail_servers, user, provider) as imap:
        await imap.select()
        assert imap._transport is not None
        imap._transport.close()  # as if the server reset the connection
        uids = await imap.uid_search("ALL")
        assert len(uids) == 1 and imap.reconnects == 1
        assert (await imap.fetch_message(uids[0]))["Subject"] == "kept"


async def test_smtp_reconnects_when_connection_was_dropped(mail_servers: MailServers) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user)
    async with submission(mail_servers, user, provider) as smtp:
        await smtp.sendmail(user, [user], b"Subject: 1\r\n\r\n1\r\n")
        assert smtp._smtp is not None and smtp._smtp.transport is not None
        smtp._smtp.transport.close()
        await asyncio.sleep(0)
        result = await smtp.sendmail(user, [user], b"Subject: 2\r\n\r\n2\r\n")
        assert result.refused == {}


async def test_imap_operations_against_dovecot(mail_servers: MailServers) -> None:
    user = new_user()
    async with imaps(mail_servers, user, mail_servers.token(user)) as imap:
        uid = await imap.append(
            b"Subject: appended\r\nFrom: a@example.test\r\n\r\nbody\r\n", flags=["\\Flagged"]
        )
        assert uid == 1
        info = await imap.select()
        assert info.exists == 1 and info.uidvalidity
        assert "\\Flagged" in (await imap.fetch_flags([1]))[1]
        await imap.add_flags([1], ["\\Seen"])
        assert await imap.uid_search("UNSEEN") == []
        await imap.remove_flags([1], ["\\Seen"])
        assert await imap.uid_search("UNSEEN") == [1]
        headers = await imap.fetch_headers([1])
        assert headers[1]["Subject"] == "appended"
        sizes = await imap.fetch_sizes([1])
        assert sizes[1] == len(b"Subject: appended\r\nFrom: a@example.test\r\n\r\nbody\r\n")
        await imap.copy([1], "INBOX")
        assert len(await imap.uid_search("ALL")) == 2
        status = await imap.status("INBOX")
        assert status["MESSAGES"] == 2
        await imap.add_flags([2], ["\\Deleted"])
        await imap.expunge()
        assert await imap.uid_search("ALL") == [1]
        examined = await imap.examine("INBOX")
        assert examined.readonly
        folders = await imap.list_folders()
        assert [f.name for f in folders] == ["INBOX"]
        with pytest.raises(Exception, match="CR, LF or NUL"):
            await imap.uid_search("ALL\r\nA1 LOGOUT")


async def test_idle_reauthenticates_before_the_token_expires(
    mail_servers: MailServers, clock: FakeClock
) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user, lifetime=3600, clock=clock.now)
    tokens = TokenManager(provider, clock=clock.now)
    async with imaps(mail_servers, user, tokens) as imap:
        await imap.select()
        # Half a second before the session is due (REAUTH_MARGIN before expiry): the
        # IDLE is cut short (after a second at least) to re-authenticate.
        clock.advance(3600 - REAUTH_MARGIN - 0.5)
        async for _event in imap.idle(timeout=1.5):
            assert imap.reconnects == 0
        assert imap.reconnects == 1
        assert provider.calls == 2
        assert mail_servers.oauth.is_active(provider.issued[-1])
        assert await imap.uid_search("ALL") == []
