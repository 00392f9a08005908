"""The token layer against node-oidc-provider 9, a certified server nobody here wrote.

Grants by client authentication by endpoint, covered here (issue 16):

=====================  ==========================  ==================================
grant                  client authentication       endpoints
=====================  ==========================  ==================================
client_credentials     post, basic, jwt            token
device_code            post, basic, jwt, none      device authorization, token
authorization_code     post, basic, jwt, none      (authorization), token; PKCE S256
refresh_token          post, basic, jwt, none      token
(revocation)           post, basic, jwt, none      revocation
password               post                        token: unsupported by the server
=====================  ==========================  ==================================

jwt is ``private_key_jwt`` (RFC 7523), none a public client. Plus discovery
(``discover`` / ``from_issuer``), scope narrowing on refresh, rotation with reuse
detection, and the four numbered items of issue 16 (each test says which).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import shutil
import threading
from collections.abc import Callable

import anyio
import pytest

from mailoauth.errors import ConfigurationError, PermanentTokenError
from mailoauth.tokens import (
    AccessToken,
    ClientCredentialsGrant,
    DeviceAuthorization,
    DeviceCodeGrant,
    MemoryTokenStore,
    OAuth2TokenProvider,
    PasswordGrant,
    RefreshTokenGrant,
    StoredCredential,
    discover,
    utcnow,
)
from tests.integration import oidc
from tests.integration.oidc import (
    BASIC,
    MAIL_SCOPE,
    POST,
    PUBLIC,
    SHORT_RT,
    SHORT_TTL,
    Browser,
    Client,
    OidcProvider,
    authorization_code,
    client_auth_of,
    endpoint_for,
    jwt_assertion,
    jwt_client,
)

JWT = jwt_client()
CONFIDENTIAL = [
    pytest.param(POST, id="post"),
    pytest.param(BASIC, id="basic"),
    pytest.param(JWT, id="private_key_jwt"),
]
EVERY_CLIENT = [*CONFIDENTIAL, pytest.param(PUBLIC, id="public")]
SCOPE = f"openid {MAIL_SCOPE} offline_access"
WRONG_SECRET = "wrong-secret-8b1d5a"
DEVICE_POLL = 0.2
"""Seconds between device-code polls here (the server asks for 5)."""


def assertion_of(client: Client) -> Callable[[str, dt.datetime], str] | None:
    return jwt_assertion if client.auth_method == "private_key_jwt" else None


def provider_for(
    server: OidcProvider, client: Client, grant: RefreshTokenGrant | DeviceCodeGrant, **kw: object
) -> OAuth2TokenProvider:
    return OAuth2TokenProvider(
        server.token_url,
        grant,
        client_id=client.client_id,
        client_secret=client.client_secret,
        client_assertion=assertion_of(client),
        client_auth=client_auth_of(client),
        revocation_url=server.revocation_url,
        **kw,  # type: ignore[arg-type]
    )


async def signed_in(server: OidcProvider, client: Client, login: str, **kw: str) -> AccessToken:
    """A first grant by the authorization-code flow with ``prompt=consent`` (so
    ``offline_access`` is granted), unless ``kw`` says otherwise."""
    params = {"prompt": "consent", **kw}
    token = await authorization_code(server, client, login=login, scope=SCOPE, params=params)
    assert token.refresh_token
    return token


# -- client credentials ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("client", CONFIDENTIAL)
async def test_client_credentials(oidc_server: OidcProvider, client: Client) -> None:
    provider = OAuth2TokenProvider(
        oidc_server.token_url,
        ClientCredentialsGrant(),
        client_id=client.client_id,
        client_secret=client.client_secret,
        client_assertion=assertion_of(client),
        client_auth=client_auth_of(client),
        scope=MAIL_SCOPE,
    )
    async with provider:
        token = await provider.get_access_token()
    assert token.scope == MAIL_SCOPE and token.refresh_token is None
    seen = oidc_server.introspect(token.value)
    assert seen["active"] is True and seen["client_id"] == client.client_id


@pytest.mark.asyncio
@pytest.mark.parametrize("auth", ["post", "basic", "none"])
async def test_client_credentials_bad_client_authentication_is_invalid_client(
    oidc_server: OidcProvider, auth: str
) -> None:
    """A wrong secret (or none) is ``invalid_client``, and the error never quotes the
    secret sent. (node-oidc-provider takes basic and post alike for a secret client.)"""
    provider = OAuth2TokenProvider(
        oidc_server.token_url,
        ClientCredentialsGrant(),
        client_id=POST.client_id,
        client_secret=None if auth == "none" else WRONG_SECRET,
        client_auth=auth,  # type: ignore[arg-type]
        scope=MAIL_SCOPE,
    )
    async with provider:
        with pytest.raises(PermanentTokenError) as caught:
            await provider.get_access_token()
    assert caught.value.error == "invalid_client"
    assert WRONG_SECRET not in str(caught.value)


# -- password: not offered by the server -------------------------------------------------


@pytest.mark.asyncio
async def test_password_grant_is_unsupported_by_the_server(oidc_server: OidcProvider) -> None:
    """node-oidc-provider has no resource-owner password grant (OAuth 2.1 and RFC 9700
    drop it): the error must say so, and never quote the password."""
    provider = OAuth2TokenProvider(
        oidc_server.token_url,
        PasswordGrant("pw-user@example.test", "hunter2-not-sent-anywhere"),
        client_id=POST.client_id,
        client_secret=POST.client_secret,
        scope=MAIL_SCOPE,
    )
    async with provider:
        with pytest.raises(PermanentTokenError) as caught:
            await provider.get_access_token()
    assert caught.value.error in ("unsupported_grant_type", "unauthorized_client")
    assert "hunter2" not in str(caught.value)


# -- authorization code + PKCE, then refresh with rotation --------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("client", EVERY_CLIENT)
async def test_rotation_over_five_refreshes(oidc_server: OidcProvider, client: Client) -> None:
    first = await signed_in(oidc_server, client, f"rotate-{client.client_id}@example.test")
    assert first.refresh_token is not None
    provider = provider_for(oidc_server, client, RefreshTokenGrant(first.refresh_token))
    seen = {first.refresh_token}
    async with provider:
        for _ in range(5):
            token = await provider.get_access_token(force_refresh=True)
            assert oidc_server.introspect(token.value)["active"] is True
            newest = provider.current_refresh_token
            assert newest is not None and newest not in seen
            seen.add(newest)


@pytest.mark.asyncio
async def test_reuse_of_a_rotated_refresh_token_revokes_the_grant(
    oidc_server: OidcProvider,
) -> None:
    """What the server does on reuse (RFC 9700 §4.14.2): the whole grant dies. This is
    why a rotated-away refresh token must never be sent (issue 16 item 3)."""
    first = await signed_in(oidc_server, POST, "reuse@example.test")
    assert first.refresh_token is not None
    endpoint = endpoint_for(oidc_server, POST)
    try:
        second = await endpoint.refresh(first.refresh_token)
        assert second.refresh_token and second.refresh_token != first.refresh_token
        with pytest.raises(PermanentTokenError) as caught:
            await endpoint.refresh(first.refresh_token)
        assert caught.value.error == "invalid_grant"
        assert oidc_server.introspect(second.value)["active"] is False
        with pytest.raises(PermanentTokenError):
            await endpoint.refresh(second.refresh_token)
    finally:
        await endpoint.aclose()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.asyncio
async def test_item3_rotated_away_refresh_token_is_never_sent_again(
    oidc_server: OidcProvider,
) -> None:
    """Issue 16 item 3. The provider was built with rt0 and rotated it to rt1. When rt1
    is refused (here: it expired, ``invalid_grant``), the provider must not fall back to
    rt0: presenting a rotated-away refresh token is reuse, for which servers revoke the
    whole grant (RFC 9700 §4.14.2). The server's record of presented refresh tokens
    shows rt0 exactly once."""
    first = await signed_in(oidc_server, SHORT_RT, "item3@example.test")
    rt0 = first.refresh_token
    assert rt0 is not None
    provider = provider_for(oidc_server, SHORT_RT, RefreshTokenGrant(rt0))
    async with provider:
        await provider.get_access_token(force_refresh=True)
        rt1 = provider.current_refresh_token
        assert rt1 is not None and rt1 != rt0
        for _ in range(int(SHORT_TTL / 0.25) + 8):  # until rt1 has expired
            if not oidc_server.refresh_token_alive(SHORT_RT, rt1):
                break
            await anyio.sleep(0.25)
        with pytest.raises(PermanentTokenError) as caught:
            await provider.get_access_token(force_refresh=True)
    assert caught.value.error == "invalid_grant"
    presented = oidc_server.presented_refresh_tokens()
    assert presented.count(digest(rt0)) == 1
    assert presented.count(digest(rt1)) == 1


@pytest.mark.asyncio
async def test_item4_force_refresh_on_a_new_provider_with_a_store_refreshes(
    oidc_server: OidcProvider,
) -> None:
    """Issue 16 item 4: a new provider over a store holding a fresh access token must
    still ask the server when told ``force_refresh=True``."""
    first = await signed_in(oidc_server, POST, "item4@example.test")
    assert first.refresh_token is not None
    store = MemoryTokenStore()
    grant = RefreshTokenGrant(first.refresh_token)
    async with provider_for(oidc_server, POST, grant, store=store) as provider:
        stored = await provider.get_access_token()
    async with provider_for(oidc_server, POST, grant, store=store) as fresh:
        forced = await fresh.get_access_token(force_refresh=True)
    assert forced.value != stored.value
    assert forced.refresh_token is not None and forced.refresh_token != stored.refresh_token
    saved = await store.load(fresh.store_key)
    assert saved is not None and saved.refresh_token == forced.refresh_token


# -- scope: what was granted, and narrowing on refresh -----------------------------------


@pytest.mark.asyncio
async def test_item2_refresh_asks_only_for_the_granted_scope(oidc_server: OidcProvider) -> None:
    """Issue 16 item 2. Without ``prompt=consent`` the server drops ``offline_access``
    and says so in the token response; a refresh that asks for the requested scope is
    refused (``invalid_scope``, RFC 6749 §6). The provider keeps the granted scope."""
    first = await authorization_code(oidc_server, POST, login="item2@example.test", scope=SCOPE)
    assert first.refresh_token is not None
    assert first.scope is not None and "offline_access" not in first.scope.split()
    # As `mailoauth login` leaves it, a day later: the access token has expired.
    store = MemoryTokenStore()
    expired = dataclasses.replace(first, expires_at=utcnow() - dt.timedelta(minutes=1))
    await store.save("item2", StoredCredential.from_token(expired))
    provider = provider_for(
        oidc_server,
        POST,
        RefreshTokenGrant(first.refresh_token),
        scope=SCOPE,
        store=store,
        store_key="item2",
    )
    async with provider:
        token = await provider.get_access_token()
        again = await provider.get_access_token(force_refresh=True)
        assert set((provider.granted_scope or "").split()) == set(first.scope.split())
    assert token.value != first.value
    assert token.scope is not None and again.scope is not None
    assert MAIL_SCOPE in again.scope.split()


@pytest.mark.asyncio
async def test_refresh_asking_for_more_than_granted_names_no_other_vendor(
    oidc_server: OidcProvider,
) -> None:
    """A generic server's ``invalid_scope`` says what went wrong at *this* server: the
    hint speaks of granted scopes, not of Google's or Microsoft's (issue 16, "Also")."""
    first = await authorization_code(oidc_server, POST, login="hint@example.test", scope=SCOPE)
    assert first.refresh_token is not None
    endpoint = endpoint_for(oidc_server, POST)
    try:
        with pytest.raises(PermanentTokenError) as caught:
            await endpoint.refresh(first.refresh_token, scope=SCOPE)
    finally:
        await endpoint.aclose()
    assert caught.value.error == "invalid_scope"
    message = str(caught.value)
    assert "Google" not in message and "Microsoft" not in message


@pytest.mark.asyncio
async def test_scope_narrowing_on_refresh(oidc_server: OidcProvider) -> None:
    """A refresh may ask for less than was granted (RFC 6749 §6): only ``mail``."""
    first = await signed_in(oidc_server, BASIC, "narrow@example.test")
    assert first.refresh_token is not None
    provider = provider_for(
        oidc_server, BASIC, RefreshTokenGrant(first.refresh_token), scope=MAIL_SCOPE
    )
    async with provider:
        token = await provider.get_access_token(force_refresh=True)
        again = await provider.get_access_token(force_refresh=True)
    assert token.scope == MAIL_SCOPE and again.scope == MAIL_SCOPE
    assert oidc_server.introspect(again.value)["scope"] == MAIL_SCOPE


# -- device code ---------------------------------------------------------------------------


def user_at_device(
    server: OidcProvider, login: str, pages: list[str]
) -> Callable[[DeviceAuthorization], None]:
    """An ``on_prompt`` that has the user enter the code in a browser, in a thread."""

    def prompt(auth: DeviceAuthorization) -> None:
        def enter() -> None:
            with Browser(server, login) as browser:
                pages.append(browser.enter_device_code(auth.verification_uri, auth.user_code))

        threading.Thread(target=enter, daemon=True).start()

    return prompt


@pytest.mark.asyncio
@pytest.mark.parametrize("client", EVERY_CLIENT)
async def test_item1_device_code_authenticates_like_the_token_endpoint(
    oidc_server: OidcProvider, client: Client
) -> None:
    """Issue 16 item 1: a confidential client authenticates at the device authorization
    endpoint as at the token endpoint (without its secret: 401 invalid_client)."""
    pages: list[str] = []
    grant = DeviceCodeGrant(
        oidc_server.device_authorization_url,
        on_prompt=user_at_device(oidc_server, f"device-{client.client_id}@example.test", pages),
        interval=DEVICE_POLL,
    )
    async with provider_for(oidc_server, client, grant, scope=SCOPE) as provider:
        token = await provider.get_access_token()
        assert provider.current_refresh_token is not None
        refreshed = await provider.get_access_token(force_refresh=True)
    assert pages and "device-signed-in" in pages[0]
    assert token.scope is not None and MAIL_SCOPE in token.scope.split()
    seen = oidc_server.introspect(refreshed.value)
    assert seen["active"] is True and seen["username"] == f"device-{client.client_id}@example.test"


@pytest.mark.asyncio
async def test_device_code_denied_by_the_user(oidc_server: OidcProvider) -> None:
    pages: list[str] = []

    def prompt(auth: DeviceAuthorization) -> None:
        def enter() -> None:
            with Browser(oidc_server, "denier@example.test", deny=True) as browser:
                pages.append(browser.enter_device_code(auth.verification_uri, auth.user_code))

        threading.Thread(target=enter, daemon=True).start()

    grant = DeviceCodeGrant(
        oidc_server.device_authorization_url, on_prompt=prompt, interval=DEVICE_POLL
    )
    async with provider_for(oidc_server, POST, grant, scope=SCOPE) as provider:
        with pytest.raises(PermanentTokenError) as caught:
            await provider.get_access_token()
    assert caught.value.error == "access_denied"
    for _ in range(50):  # the browser thread reads the last page
        if pages:
            break
        await anyio.sleep(0.1)
    assert pages and 'class="error"' in pages[0]


# -- revocation -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("client", EVERY_CLIENT)
async def test_revoke_refresh_token_ends_the_grant(
    oidc_server: OidcProvider, client: Client
) -> None:
    """``provider.revoke()`` revokes the refresh token (RFC 7009) with the client's own
    authentication; the server ends the grant, so its access tokens die with it."""
    first = await signed_in(oidc_server, client, f"revoke-{client.client_id}@example.test")
    assert first.refresh_token is not None
    provider = provider_for(oidc_server, client, RefreshTokenGrant(first.refresh_token))
    async with provider:
        token = await provider.get_access_token()
        assert oidc_server.introspect(token.value)["active"] is True
        await provider.revoke()
        assert oidc_server.introspect(token.value)["active"] is False
        with pytest.raises(PermanentTokenError) as caught:
            await provider.get_access_token(force_refresh=True)
    assert caught.value.error == "invalid_grant"


@pytest.mark.asyncio
@pytest.mark.parametrize("client", CONFIDENTIAL)
async def test_revoke_access_token_ends_the_grant_too(
    oidc_server: OidcProvider, client: Client
) -> None:
    """Revoking an access token (``token_type_hint="access_token"``) ends that token and,
    at node-oidc-provider, its whole grant: the refresh token is refused afterwards."""
    first = await signed_in(oidc_server, client, f"revoke-at-{client.client_id}@example.test")
    assert first.refresh_token is not None
    endpoint = endpoint_for(oidc_server, client, revocation_url=oidc_server.revocation_url)
    try:
        await endpoint.revoke(first.value, token_type_hint="access_token")
        assert oidc_server.introspect(first.value)["active"] is False
        with pytest.raises(PermanentTokenError) as caught:
            await endpoint.refresh(first.refresh_token)
        assert caught.value.error == "invalid_grant"
    finally:
        await endpoint.aclose()


@pytest.mark.asyncio
async def test_revoke_with_the_wrong_client_authentication_is_refused(
    oidc_server: OidcProvider,
) -> None:
    first = await signed_in(oidc_server, BASIC, "revoke-wrong@example.test")
    assert first.refresh_token is not None
    endpoint = endpoint_for(oidc_server, BASIC, revocation_url=oidc_server.revocation_url)
    wrong = endpoint_for(
        oidc_server,
        Client(BASIC.client_id, WRONG_SECRET, BASIC.auth_method),
        revocation_url=oidc_server.revocation_url,
    )
    try:
        with pytest.raises(PermanentTokenError) as caught:
            await wrong.revoke(first.refresh_token, token_type_hint="refresh_token")
        assert caught.value.error == "invalid_client"
        assert (await endpoint.refresh(first.refresh_token)).value  # not revoked
    finally:
        await endpoint.aclose()
        await wrong.aclose()


# -- discovery ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_discover_reads_the_endpoints(oidc_server: OidcProvider) -> None:
    metadata = await discover(oidc_server.issuer)
    assert metadata.issuer == oidc_server.issuer
    assert metadata.token_endpoint == oidc_server.token_url
    assert metadata.device_authorization_endpoint == oidc_server.device_authorization_url
    assert metadata.revocation_endpoint == oidc_server.revocation_url
    assert metadata.authorization_endpoint == oidc_server.authorization_url


@pytest.mark.asyncio
@pytest.mark.parametrize("client", CONFIDENTIAL)
async def test_from_issuer_builds_a_working_provider(
    oidc_server: OidcProvider, client: Client
) -> None:
    provider = await OAuth2TokenProvider.from_issuer(
        oidc_server.issuer,
        ClientCredentialsGrant(),
        client_id=client.client_id,
        client_secret=client.client_secret,
        client_assertion=assertion_of(client),
        client_auth=client_auth_of(client),
        scope=MAIL_SCOPE,
    )
    async with provider:
        assert provider.token_url == oidc_server.token_url
        token = await provider.get_access_token()
    assert oidc_server.introspect(token.value)["active"] is True


@pytest.mark.asyncio
async def test_from_issuer_refuses_a_mismatched_issuer(oidc_server: OidcProvider) -> None:
    """RFC 8414 §3.3: the metadata's issuer must be the one asked for."""
    other = oidc_server.issuer.replace("127.0.0.1", "localhost")
    with pytest.raises((ConfigurationError, PermanentTokenError)):
        await OAuth2TokenProvider.from_issuer(
            other,
            ClientCredentialsGrant(),
            client_id=POST.client_id,
            client_secret=POST.client_secret,
        )


# -- the fixture's own contract ----------------------------------------------------------


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_node_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="node is not installed"):
        oidc.require_oidc_provider()
