"""IMAP, SMTP (and POP3) with tokens from node-oidc-provider, checked by Dovecot and Postfix.

Dovecot's oauth2 passdb introspects every token at the provider (RFC 7662, as the
``dovecot`` client, credentials in the POST body); Postfix authenticates through
Dovecot. So expiry and revocation here are the authorization server's, not a fake's.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from mailoauth.errors import AuthenticationError, PermanentTokenError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.certs import TestCA
from mailoauth.testing.dovecot import DovecotServer
from mailoauth.tokens import AccessToken, OAuth2TokenProvider, RefreshTokenGrant, TokenProvider
from tests.integration.oidc import (
    DOVECOT,
    MAIL_SCOPE,
    POST,
    SHORT,
    SHORT_TTL,
    Client,
    OidcMailServers,
    OidcProvider,
    authorization_code,
    client_auth_of,
    endpoint_for,
)

MECHANISMS = ["XOAUTH2", "OAUTHBEARER"]
DELIVERY_POLLS = 100
POLL = 0.1
Token = str | AccessToken | TokenProvider


def new_user() -> str:
    return f"oidc-{uuid.uuid4().hex[:10]}@example.test"


def imaps(servers: OidcMailServers, user: str, token: Token, **options: Any) -> ImapClient:
    return ImapClient(
        "localhost",
        servers.dovecot.imaps_port,
        user,
        token,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=servers.ca.client_context(),
        **options,
    )


def submission(servers: OidcMailServers, user: str, token: Token, **options: Any) -> SmtpClient:
    return SmtpClient(
        "localhost",
        servers.postfix.submission_port,
        user,
        token,
        SecurityOptions.SSL_EXPLICIT,
        ssl_context=servers.ca.client_context(),
        **options,
    )


async def provider_for(server: OidcProvider, client: Client, user: str) -> OAuth2TokenProvider:
    """A user signed in at the provider; their refresh-token provider."""
    first = await authorization_code(
        server,
        client,
        login=user,
        scope=f"openid {MAIL_SCOPE} offline_access",
        params={"prompt": "consent"},
    )
    assert first.refresh_token is not None
    return OAuth2TokenProvider(
        server.token_url,
        RefreshTokenGrant(first.refresh_token),
        client_id=client.client_id,
        client_secret=client.client_secret,
        client_auth=client_auth_of(client),
        revocation_url=server.revocation_url,
        scope=MAIL_SCOPE,
    )


async def until(condition: Any, what: str) -> None:
    """Poll ``condition()`` (bounded) until it is true."""
    for _ in range(DELIVERY_POLLS):
        if condition():
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"{what} did not happen within {DELIVERY_POLLS * POLL:g} s")


@pytest.mark.asyncio
@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_imap_and_smtp_with_the_providers_tokens(
    oidc_mail_servers: OidcMailServers, mechanism: str
) -> None:
    servers = oidc_mail_servers
    user = new_user()
    async with await provider_for(servers.oidc, POST, user) as provider:
        async with submission(servers, user, provider, mechanism=mechanism) as smtp:
            await smtp.sendmail(user, [user], b"Subject: via oidc\r\n\r\nhello\r\n")
        new = servers.dovecot.maildir(user) / "new"
        await until(lambda: new.is_dir() and any(new.iterdir()), "delivery")
        async with imaps(servers, user, provider, mechanism=mechanism) as imap:
            info = await imap.select()
            assert info.exists == 1
        async with Pop3Client(
            "localhost",
            servers.dovecot.pop3s_port,
            user,
            provider,
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=servers.ca.client_context(),
            mechanism=mechanism,
        ) as pop:
            assert b"Subject: via oidc" in await pop.retrieve(1)
        token = await provider.get_access_token()
    seen = servers.oidc.introspect(token.value)
    assert seen["username"] == user and seen["scope"] == MAIL_SCOPE


@pytest.mark.asyncio
async def test_another_users_token_is_refused(oidc_mail_servers: OidcMailServers) -> None:
    servers = oidc_mail_servers
    async with await provider_for(servers.oidc, POST, new_user()) as provider:
        token = await provider.get_access_token()
        with pytest.raises(AuthenticationError) as caught:
            async with imaps(servers, new_user(), token.value):
                pass
    assert "AUTHENTICATIONFAILED" in caught.value.server_reply


@pytest.mark.asyncio
async def test_a_refresh_token_is_no_bearer_token(oidc_mail_servers: OidcMailServers) -> None:
    """Dovecot may introspect access tokens only: a refresh token sent as a bearer
    token is refused (the server's default policy would call it active)."""
    servers = oidc_mail_servers
    user = new_user()
    async with await provider_for(servers.oidc, POST, user) as provider:
        await provider.get_access_token()
        refresh_token = provider.current_refresh_token
    assert refresh_token is not None
    assert servers.oidc.introspect(refresh_token) == {"active": False}
    with pytest.raises(AuthenticationError):
        async with imaps(servers, user, refresh_token):
            pass


class ExpiredFirst:
    """Hands out a token the server has expired (claiming it is fresh), then defers to
    the real provider: the client must see the rejection, force a refresh, retry."""

    def __init__(self, stale: AccessToken, provider: OAuth2TokenProvider) -> None:
        self.stale = stale
        self.provider = provider
        self.calls: list[bool] = []

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls.append(force_refresh)
        if not force_refresh:
            return AccessToken(self.stale.value, None)
        return await self.provider.get_access_token(force_refresh=True)


@pytest.mark.asyncio
async def test_expired_access_token_is_rejected_then_refreshed(
    oidc_mail_servers: OidcMailServers,
) -> None:
    """Once the server has expired a token, Dovecot (by introspection) refuses it; a
    provider-backed client forces a refresh and retries once, by IMAP and SMTP, with
    both mechanisms (one expiry wait for all four)."""
    servers = oidc_mail_servers
    user = new_user()
    async with await provider_for(servers.oidc, SHORT, user) as provider:
        stale = await provider.get_access_token()
        await until(
            lambda: servers.oidc.introspect(stale.value)["active"] is False,
            f"expiry of a {SHORT_TTL} s access token",
        )
        for mechanism in MECHANISMS:
            with pytest.raises(AuthenticationError):
                async with imaps(servers, user, stale.value, mechanism=mechanism):
                    pass
            tokens = ExpiredFirst(stale, provider)
            async with imaps(servers, user, tokens, mechanism=mechanism) as imap:
                await imap.select()
            assert tokens.calls == [False, True]
            tokens = ExpiredFirst(stale, provider)
            async with submission(servers, user, tokens, mechanism=mechanism) as smtp:
                await smtp.sendmail(user, [user], b"Subject: after expiry\r\n\r\nok\r\n")
            assert tokens.calls == [False, True]


@pytest.mark.asyncio
async def test_revoked_grant_fails_with_invalid_grant(oidc_mail_servers: OidcMailServers) -> None:
    """After ``provider.revoke()`` the server ends the grant: the cached access token is
    refused by Dovecot, the forced refresh gets ``invalid_grant``, and both clients
    raise that, naming the cause."""
    servers = oidc_mail_servers
    user = new_user()
    async with await provider_for(servers.oidc, POST, user) as provider:
        async with imaps(servers, user, provider) as imap:
            await imap.select()
        await provider.revoke()
        for client in (imaps(servers, user, provider), submission(servers, user, provider)):
            with pytest.raises(PermanentTokenError, match="invalid_grant"):
                await asyncio.wait_for(client.connect(), 10)
            await client.aclose()


@pytest.mark.asyncio
async def test_access_token_revoked_at_the_server_is_refused(
    oidc_mail_servers: OidcMailServers,
) -> None:
    """A static access token revoked at the server is refused at the next login, by
    IMAP and by SMTP alike (Dovecot keeps no auth cache)."""
    servers = oidc_mail_servers
    user = new_user()
    async with await provider_for(servers.oidc, POST, user) as provider:
        token = await provider.get_access_token()
        async with imaps(servers, user, token.value) as imap:
            await imap.select()
    endpoint = endpoint_for(servers.oidc, POST, revocation_url=servers.oidc.revocation_url)
    try:
        await endpoint.revoke(token.value, token_type_hint="access_token")
    finally:
        await endpoint.aclose()
    with pytest.raises(AuthenticationError):
        async with imaps(servers, user, token.value):
            pass
    with pytest.raises(AuthenticationError) as caught:
        async with submission(servers, user, token.value):
            pass
    assert caught.value.server_reply.startswith("535")


def test_dovecot_sends_introspection_credentials_in_the_body_only(tmp_path: Path) -> None:
    """The oauth2 args file carries ``client_id`` / ``client_secret`` (Dovecot 2.3 puts
    them in the introspection POST body); credentials in the URL would make Dovecot send
    HTTP Basic too, which node-oidc-provider refuses, so they are refused up front."""
    ca = TestCA(tmp_path / "ca")
    url = "http://127.0.0.1:9/token/introspection"
    server = DovecotServer(
        url,
        ca.files,
        directory=tmp_path / "dc",
        introspection_client_id=DOVECOT.client_id,
        introspection_client_secret=DOVECOT.client_secret,
        no_starttls_host=None,
    )
    lines = server.render_oauth2_config().splitlines()
    assert f"introspection_url = {url}" in lines
    assert f"client_id = {DOVECOT.client_id}" in lines
    assert f"client_secret = {DOVECOT.client_secret}" in lines
    default = DovecotServer(url, ca.files, directory=tmp_path / "dc2", no_starttls_host=None)
    assert "client_id" not in default.render_oauth2_config()
    with pytest.raises(ValueError, match="not in the URL"):
        DovecotServer("http://dovecot:pw@127.0.0.1:9/introspect", ca.files, directory=tmp_path)
    with pytest.raises(ValueError, match="needs introspection_client_id"):
        DovecotServer(url, ca.files, directory=tmp_path, introspection_client_secret="s")
