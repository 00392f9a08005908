"""The authorization-code grant with PKCE (mailoauth.tokens.authcode) against
FakeOAuthServer on loopback, driven by callbacks, without the CLI."""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest

from mailoauth.errors import ConfigurationError, MailTimeoutError, PermanentTokenError
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.tokens import AuthorizationCodeGrant, OAuth2TokenProvider, TokenEndpoint
from mailoauth.tokens.authcode import authorization_code_flow

CLIENT_SECRET = "authcode-client-secret"


@pytest.fixture
def server() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer(rotate_refresh_tokens=True) as srv:
        srv.add_client("desktop", CLIENT_SECRET)
        srv.authorize_username = "me@example.test"
        yield srv


class Browser:
    """An ``on_open_url`` that follows the URL as a browser would (the authorization
    server redirects to the loopback receiver) and records what it saw."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.pages: list[httpx.Response] = []

    async def __call__(self, url: str) -> None:
        self.urls.append(url)
        async with httpx.AsyncClient() as client:
            self.pages.append(await client.get(url, follow_redirects=True, timeout=10))


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


@pytest.mark.asyncio
async def test_flow_with_callbacks_gets_a_token_with_pkce(server: FakeOAuthServer) -> None:
    browser = Browser()
    waited: list[str] = []
    endpoint = TokenEndpoint(server.token_url, client_id="desktop", client_secret=CLIENT_SECRET)
    try:
        token = await authorization_code_flow(
            endpoint,
            server.authorization_url,
            scope="mail offline_access",
            extra_params={"prompt": "consent"},
            on_open_url=browser,
            on_waiting=waited.append,
        )
    finally:
        await endpoint.aclose()
    assert server.is_active(token.value) and token.refresh_token
    assert server.token_info(token.value).username == "me@example.test"  # type: ignore[union-attr]
    (url,) = browser.urls
    query = query_of(url)
    assert query["code_challenge_method"] == "S256" and query["prompt"] == "consent"
    assert query["redirect_uri"].startswith("http://127.0.0.1:") and waited == [
        query["redirect_uri"]
    ]
    assert browser.pages[0].status_code == 200 and "Signed in." in browser.pages[0].text
    form = server.token_forms[-1]
    assert form["grant_type"] == "authorization_code"
    assert form["redirect_uri"] == query["redirect_uri"]
    digest = hashlib.sha256(form["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == query["code_challenge"]
    assert form["code_verifier"] not in url


@pytest.mark.asyncio
async def test_grant_in_a_provider_asks_the_browser_once_then_refreshes(
    server: FakeOAuthServer,
) -> None:
    browser = Browser()
    provider = OAuth2TokenProvider(
        server.token_url,
        AuthorizationCodeGrant(server.authorization_url, on_open_url=browser, timeout=10),
        client_id="desktop",
        client_secret=CLIENT_SECRET,
        scope="mail offline_access",
    )
    try:
        first = await provider.get_access_token()
        second = await provider.get_access_token(force_refresh=True)
    finally:
        await provider.aclose()
    assert first.value != second.value and server.is_active(second.value)
    assert len(browser.urls) == 1  # the second token came from the refresh token
    assert [f["grant_type"] for f in server.token_forms] == ["authorization_code", "refresh_token"]
    assert server.token_forms[1]["refresh_token"] == first.refresh_token


@pytest.mark.asyncio
async def test_a_forged_state_is_refused_before_any_code_is_exchanged(
    server: FakeOAuthServer,
) -> None:
    async def forged(url: str) -> None:
        redirect = query_of(url)["redirect_uri"]
        async with httpx.AsyncClient() as client:
            # A favicon request first: ignored (404), the receiver keeps waiting.
            assert (await client.get(redirect + "favicon.ico", timeout=10)).status_code == 404
            await client.get(redirect + "?code=stolen&state=forged", timeout=10)

    endpoint = TokenEndpoint(server.token_url, client_id="desktop", client_secret=CLIENT_SECRET)
    try:
        with pytest.raises(PermanentTokenError, match="state does not match"):
            await authorization_code_flow(
                endpoint, server.authorization_url, scope="mail", on_open_url=forged
            )
    finally:
        await endpoint.aclose()
    assert server.token_forms == []


@pytest.mark.asyncio
async def test_an_error_redirect_is_a_permanent_error_with_its_fields(
    server: FakeOAuthServer,
) -> None:
    async def denied(url: str) -> None:
        query = query_of(url)
        params = urllib.parse.urlencode(
            {
                "error": "access_denied",
                "error_description": "the user said no",
                "state": query["state"],
            }
        )
        async with httpx.AsyncClient() as client:
            page = await client.get(f"{query['redirect_uri']}?{params}", timeout=10)
        assert "Sign-in failed." in page.text

    endpoint = TokenEndpoint(server.token_url, client_id="desktop", client_secret=CLIENT_SECRET)
    try:
        with pytest.raises(PermanentTokenError, match="refused the sign-in") as caught:
            await authorization_code_flow(
                endpoint, server.authorization_url, scope="mail", on_open_url=denied
            )
    finally:
        await endpoint.aclose()
    assert caught.value.error == "access_denied"
    assert caught.value.error_description == "the user said no"
    assert server.token_forms == []


@pytest.mark.asyncio
async def test_nobody_coming_back_is_a_timeout_that_names_the_redirect(
    server: FakeOAuthServer,
) -> None:
    shown: list[str] = []
    endpoint = TokenEndpoint(server.token_url, client_id="desktop", client_secret=CLIENT_SECRET)
    try:
        with pytest.raises(MailTimeoutError, match=r"no sign-in came back to http://127\.0\.0\.1:"):
            await authorization_code_flow(
                endpoint,
                server.authorization_url,
                scope="mail",
                on_open_url=shown.append,
                timeout=0.05,
            )
    finally:
        await endpoint.aclose()
    assert len(shown) == 1 and server.token_forms == []


@pytest.mark.asyncio
async def test_from_issuer_discovers_the_authorization_endpoint(server: FakeOAuthServer) -> None:
    browser = Browser()
    grant = AuthorizationCodeGrant(on_open_url=browser, timeout=10)
    provider = await OAuth2TokenProvider.from_issuer(
        server.issuer, grant, client_id="desktop", client_secret=CLIENT_SECRET, scope="mail"
    )
    try:
        token = await provider.get_access_token()
    finally:
        await provider.aclose()
    assert grant.authorization_url == server.authorization_url
    assert browser.urls[0].startswith(server.authorization_url + "?")
    assert server.is_active(token.value)


@pytest.mark.asyncio
async def test_a_grant_without_an_authorization_url_says_how_to_get_one(
    server: FakeOAuthServer,
) -> None:
    opened: list[str] = []
    endpoint = TokenEndpoint(server.token_url, client_id="desktop", client_secret=CLIENT_SECRET)
    try:
        with pytest.raises(ConfigurationError, match=r"pass it, or .*from_issuer\(\)"):
            await AuthorizationCodeGrant(on_open_url=opened.append).fetch(endpoint, scope=None)
    finally:
        await endpoint.aclose()
    assert opened == [] and server.token_forms == []
