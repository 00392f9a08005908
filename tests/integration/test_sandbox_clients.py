"""The three clients against the in-process sandbox, in each provider's personality:
Gmail's error challenges, Office 365's immediate failures and mid-session BYE."""

from __future__ import annotations

import asyncio
import email.message
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mailoauth import (
    AccessToken,
    AuthenticationError,
    ImapClient,
    OAuth2TokenProvider,
    Pop3Client,
    SecurityOptions,
    SmtpClient,
)
from mailoauth.testing.clock import FakeClock
from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens import RefreshTokenGrant

pytestmark = pytest.mark.asyncio

S = SecurityOptions


@pytest_asyncio.fixture(params=list(Personality), ids=lambda p: p.value)
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[MailSandbox]:
    async with MailSandbox(personality=request.param) as box:
        yield box


def provider_for(box: MailSandbox, username: str) -> OAuth2TokenProvider:
    user = box.user(username)
    return OAuth2TokenProvider(user.token_url, RefreshTokenGrant(user.refresh_token), client_id="t")


class UnknownExpiryProvider:
    """Hands out tokens that the server expires after ``lifetime`` seconds but whose
    expiry the client is not told: only the server's reaction reveals it."""

    def __init__(self, box: MailSandbox, username: str, lifetime: float) -> None:
        self.box, self.username, self.lifetime, self.calls = box, username, lifetime, 0

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        return AccessToken(self.box.oauth.issue_access_token(self.username, lifetime=self.lifetime))


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_all_clients_in_every_mode(sandbox: MailSandbox, mechanism: str) -> None:
    name = "alice@example.test"
    provider = provider_for(sandbox, name)
    ctx = sandbox.ssl_context
    if mechanism not in sandbox.personality.replies.mechanisms:
        # Office 365 offers XOAUTH2 only: asking for OAUTHBEARER fails before any token
        # is sent, and saying so; left to choose, the client picks XOAUTH2.
        with pytest.raises(AuthenticationError, match="does not offer OAUTHBEARER"):
            async with ImapClient(
                sandbox.imap.host,
                sandbox.imap.tls_port,
                name,
                provider,
                S.SSL_IMPLICIT,
                ssl_context=ctx,
                mechanism=mechanism,
            ):
                pass
        async with ImapClient(
            sandbox.imap.host,
            sandbox.imap.tls_port,
            name,
            provider,
            S.SSL_IMPLICIT,
            ssl_context=ctx,
        ) as imap:
            assert imap.mechanism_used == "XOAUTH2"
        await provider.aclose()
        return
    for port, security in (
        (sandbox.smtp.starttls_port, S.SSL_EXPLICIT),
        (sandbox.smtp.tls_port, S.SSL_IMPLICIT),
    ):
        async with SmtpClient(
            sandbox.smtp.host, port, name, provider, security, ssl_context=ctx, mechanism=mechanism
        ) as smtp:
            msg = email.message.EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = name, name, f"via {port}"
            msg.set_content("hello")
            assert (await smtp.send_message(msg)).refused == {}
    for port, security in (
        (sandbox.imap.starttls_port, S.SSL_EXPLICIT),
        (sandbox.imap.tls_port, S.SSL_IMPLICIT),
    ):
        async with ImapClient(
            sandbox.imap.host, port, name, provider, security, ssl_context=ctx, mechanism=mechanism
        ) as imap:
            await imap.select()
            uids = await imap.uid_search("ALL")
            assert len(uids) == 2
            subjects = {m["Subject"] for m in (await imap.fetch_messages(uids)).values()}
            assert subjects == {f"via {sandbox.smtp.starttls_port}", f"via {sandbox.smtp.tls_port}"}
    for port, security in (
        (sandbox.pop3.starttls_port, S.SSL_EXPLICIT),
        (sandbox.pop3.tls_port, S.SSL_IMPLICIT),
    ):
        async with Pop3Client(
            sandbox.pop3.host, port, name, provider, security, ssl_context=ctx, mechanism=mechanism
        ) as pop:
            assert (await pop.stat()).count == 2
    await provider.aclose()


async def test_revoked_token_is_retried_once_in_each_personality(sandbox: MailSandbox) -> None:
    name = "bob@example.test"
    provider = provider_for(sandbox, name)
    ctx = sandbox.ssl_context
    async with ImapClient(
        sandbox.imap.host, sandbox.imap.tls_port, name, provider, S.SSL_IMPLICIT, ssl_context=ctx
    ):
        pass
    cached = provider.token_manager.cached_token
    assert cached is not None
    sandbox.oauth.revoke(cached.value)
    before = sandbox.oauth.stats.token_requests
    async with ImapClient(
        sandbox.imap.host, sandbox.imap.tls_port, name, provider, S.SSL_IMPLICIT, ssl_context=ctx
    ) as imap:
        await imap.select()
    async with Pop3Client(
        sandbox.pop3.host, sandbox.pop3.tls_port, name, provider, S.SSL_IMPLICIT, ssl_context=ctx
    ) as pop:
        await pop.stat()
    assert sandbox.oauth.stats.token_requests - before == 1
    await provider.aclose()


async def test_rejection_shapes_per_personality(sandbox: MailSandbox) -> None:
    name = "carol@example.test"
    wrong = AccessToken(sandbox.oauth.issue_access_token("mallory@example.test"))
    ctx = sandbox.ssl_context
    with pytest.raises(AuthenticationError) as imap_error:
        async with ImapClient(
            sandbox.imap.host,
            sandbox.imap.tls_port,
            name,
            wrong,
            S.SSL_IMPLICIT,
            ssl_context=ctx,
            mechanism="XOAUTH2",
        ):
            pass
    with pytest.raises(AuthenticationError) as smtp_error:
        async with SmtpClient(
            sandbox.smtp.host,
            sandbox.smtp.tls_port,
            name,
            wrong,
            S.SSL_IMPLICIT,
            ssl_context=ctx,
            mechanism="XOAUTH2",
        ):
            pass
    with pytest.raises(AuthenticationError) as pop_error:
        async with Pop3Client(
            sandbox.pop3.host,
            sandbox.pop3.tls_port,
            name,
            wrong,
            S.SSL_IMPLICIT,
            ssl_context=ctx,
            mechanism="XOAUTH2",
        ):
            pass
    if sandbox.personality is Personality.OFFICE365:
        # Immediate failure, no challenge to answer.
        assert (
            imap_error.value.challenge is None
            and "AUTHENTICATE failed" in imap_error.value.server_reply
        )
        assert smtp_error.value.challenge is None and smtp_error.value.server_reply.startswith(
            "535 5.7.3"
        )
        assert pop_error.value.challenge is None
    else:
        for err in (imap_error, smtp_error, pop_error):
            assert err.value.challenge is not None, err.value.server_reply
    if sandbox.personality is Personality.GMAIL:
        assert imap_error.value.challenge is not None
        assert imap_error.value.challenge.scope == "https://mail.google.com/"


async def test_office365_bye_access_token_expired_is_survived(sandbox: MailSandbox) -> None:
    if sandbox.personality is not Personality.OFFICE365:
        pytest.skip("only Office 365 ends sessions when the token expires")
    name = "dave@example.test"
    clock = FakeClock()
    sandbox.oauth.clock = clock.time  # the sandbox's own server: only this test uses it
    provider = UnknownExpiryProvider(sandbox, name, lifetime=3600)
    async with ImapClient(
        sandbox.imap.host,
        sandbox.imap.tls_port,
        name,
        provider,
        S.SSL_IMPLICIT,
        ssl_context=sandbox.ssl_context,
    ) as imap:
        await imap.select()
        clock.advance(3601)
        # The server answers the next command with "* BYE Session invalidated -
        # AccessTokenExpired" and hangs up; the client reconnects with a new token,
        # reselects, and the caller never notices.
        await imap.uid_search("ALL")
        assert imap.reconnects == 1
    assert provider.calls == 2


async def test_new_mail_reported_beside_a_search_is_not_lost_to_idle(sandbox: MailSandbox) -> None:
    name = "erin@example.test"
    user = sandbox.user(name)
    async with ImapClient(
        sandbox.imap.host,
        sandbox.imap.tls_port,
        name,
        user.access_token(),
        S.SSL_IMPLICIT,
        ssl_context=sandbox.ssl_context,
    ) as imap:
        await imap.select()
        sandbox.store.deliver(name, b"Subject: raced\r\n\r\nhi\r\n")
        await asyncio.sleep(0.05)
        # The server announces "* 1 EXISTS" beside this SEARCH's reply...
        await imap.uid_search("ALL")
        # ...and will not announce it again: IDLE must still report it, at once.
        events = []
        async for event in imap.idle(timeout=5):
            events.append(event)
            break
        assert events and events[0].kind == "EXISTS" and events[0].number == 1
