"""The token layer against hostile conditions and strict servers (issue 10 items 2, 3,
5, 7; issue 16 items 1-4, hints, discovery, revocation), on FakeOAuthServer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from mailoauth._util.routing import override_routes
from mailoauth.errors import (
    ConfigurationError,
    InsecureTransportError,
    PermanentTokenError,
    TransientTokenError,
)
from mailoauth.testing.oauth_server import FakeOAuthServer, ScriptedResponse
from mailoauth.tokens import (
    DeviceAuthorization,
    DeviceCodeGrant,
    GoogleTokenProvider,
    MemoryTokenStore,
    MicrosoftTokenProvider,
    OAuth2TokenProvider,
    RefreshTokenGrant,
    StoredCredential,
    TokenEndpoint,
    oauth2,
)
from mailoauth.tokens.discovery import discover, metadata_urls
from mailoauth.tokens.endpoint import DEFAULT_TIMEOUT, attempt_deadline, is_loopback_host
from mailoauth.tokens.jwt import make_client_assertion
from mailoauth.tokens.oauth2 import STORE_RETRY_INTERVAL

SECRET = "cs-hardening-secret-value"


class Sleeps:
    async def __call__(self, seconds: float) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.offset)


class FlakyStore(MemoryTokenStore):
    """A memory store whose saves fail like a full disk while ``failing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.save_attempts = 0

    async def save(self, key: str, credential: StoredCredential) -> None:
        self.save_attempts += 1
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        await super().save(key, credential)


@pytest.fixture
def server() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer(rotate_refresh_tokens=True, reuse_detection=True) as srv:
        srv.add_client("cid", SECRET)
        yield srv


def make(server: FakeOAuthServer, rt: str, **kw: object) -> OAuth2TokenProvider:
    options: dict[str, object] = {"client_secret": SECRET, "sleep": Sleeps(), **kw}
    return OAuth2TokenProvider(
        server.token_url,
        RefreshTokenGrant(rt),
        client_id="cid",
        **options,  # type: ignore[arg-type]
    )


def sent_refresh_tokens(server: FakeOAuthServer) -> list[str]:
    return [f["refresh_token"] for f in server.token_forms if "refresh_token" in f]


# -- issue 10 item 2: a failed save never loses a rotating grant -------------------------


@pytest.mark.asyncio
async def test_failed_save_keeps_the_rotated_grant_usable_and_retries(
    server: FakeOAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailoauth.tokens")
    store = FlakyStore()
    errors: list[BaseException] = []
    rt0 = server.issue_refresh_token("u")
    provider = make(server, rt0, store=store, on_store_error=errors.append)
    first = await provider.get_access_token()
    rt1 = provider.current_refresh_token
    assert rt1 is not None and provider.store_error is None

    store.failing = True  # refresh #2: new refresh token, the save fails
    second = await provider.get_access_token(force_refresh=True)
    rt2 = provider.current_refresh_token
    assert second.value != first.value and server.is_active(second.value)
    assert rt2 is not None and rt2 != rt1
    assert isinstance(provider.store_error, OSError) and len(errors) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "could not save the new tokens" in warnings[0].getMessage()
    for secret in (rt1, rt2, second.value, SECRET):
        assert secret not in caplog.text

    # Refresh #3 with the store still failing: the newest refresh token is spent, not the
    # stale one in the store; the grant survives (reuse detection would kill it).
    third = await provider.get_access_token(force_refresh=True)
    assert server.is_active(third.value)
    assert sent_refresh_tokens(server)[-1] == rt2
    assert server.stats.reuse_detected == 0
    stored = await store.load(provider.store_key)
    assert stored is not None and stored.refresh_token == rt1  # the store is behind

    # The store recovers: the next refresh saves first, then a restarted process
    # carries on from the newest refresh token.
    store.failing = False
    await provider.get_access_token(force_refresh=True)
    assert provider.store_error is None
    stored = await store.load(provider.store_key)
    assert stored is not None and stored.refresh_token == provider.current_refresh_token
    restarted = make(server, rt0, store=store)  # its configuration still says rt0
    assert server.is_active((await restarted.get_access_token(force_refresh=True)).value)
    assert server.stats.reuse_detected == 0


@pytest.mark.asyncio
async def test_pending_save_is_retried_between_refreshes_at_most_every_interval(
    server: FakeOAuthServer,
) -> None:
    store = FlakyStore()
    clock = Clock()
    provider = make(server, server.issue_refresh_token("u"), store=store, clock=clock)
    store.failing = True
    token = await provider.get_access_token()
    assert provider.store_error is not None
    store.failing = False
    attempts = store.save_attempts
    clock.offset = STORE_RETRY_INTERVAL / 2
    assert (await provider.get_access_token()).value == token.value
    assert store.save_attempts == attempts  # within the interval: not yet
    clock.offset = STORE_RETRY_INTERVAL + 0.1
    assert (await provider.get_access_token()).value == token.value
    assert provider.store_error is None and server.stats.token_requests == 1
    stored = await store.load(provider.store_key)
    assert stored is not None and stored.access_token == token.value


class StuckLockStore(FlakyStore):
    """Its lock, once ``stuck``, is held by someone else for ever."""

    stuck = False

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._stuck_lock() if self.stuck else super().lock(key)

    @contextlib.asynccontextmanager
    async def _stuck_lock(self) -> AsyncIterator[None]:
        await asyncio.Event().wait()
        yield  # pragma: no cover


@pytest.mark.asyncio
async def test_a_retry_between_refreshes_never_holds_a_caller_past_its_timeout(
    server: FakeOAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oauth2, "STORE_RETRY_TIMEOUT", 0.2)
    store = StuckLockStore()
    clock = Clock()
    provider = make(server, server.issue_refresh_token("u"), store=store, clock=clock)
    store.failing = True
    token = await provider.get_access_token()
    store.stuck, store.failing = True, False
    clock.offset = STORE_RETRY_INTERVAL + 1
    # The lock never comes: the caller still gets its usable token.
    again = await asyncio.wait_for(provider.get_access_token(), 10)
    assert again.value == token.value and provider.store_error is not None


# -- issue 10 item 3: one deadline per attempt ------------------------------------------


@pytest.mark.asyncio
async def test_a_dripped_token_response_is_cut_off_at_the_attempt_deadline(
    server: FakeOAuthServer,
) -> None:
    body = {"access_token": "at-" + "x" * 60, "token_type": "Bearer", "expires_in": 3600}
    # ~100 bytes, one every 0.03 s: no single read waits 0.5 s, the whole takes ~3 s.
    server.script(ScriptedResponse(status=200, body=body, drip=0.03))
    provider = make(server, server.issue_refresh_token("u"), timeout=0.5, max_attempts=1)
    async with provider:
        with pytest.raises(TransientTokenError, match=r"no whole response within 0\.5 s"):
            await provider.get_access_token()


def test_attempt_deadline_is_the_timeout_as_a_whole() -> None:
    assert DEFAULT_TIMEOUT == 10.0
    assert attempt_deadline(2.5) == 2.5
    assert attempt_deadline(httpx.Timeout(3.0, connect=7.0)) == 7.0
    assert attempt_deadline(httpx.Timeout(None)) == DEFAULT_TIMEOUT
    with pytest.raises(ConfigurationError):
        attempt_deadline(0)


# -- issue 10 item 5: no secrets over plain http ----------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.5.6.7", "::1", "[::1]", "localhost", "LocalHost", "::ffff:127.0.0.1"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "128.0.0.1", "localhost.example"])
def test_non_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


def test_http_token_url_off_loopback_is_refused_naming_the_fix() -> None:
    with pytest.raises(InsecureTransportError, match="allow_insecure_http=True") as info:
        OAuth2TokenProvider("http://idp.example.com/token", RefreshTokenGrant("rt"), client_id="c")
    assert "https://" in str(info.value)
    # Explicit opt-in, https, and loopback are accepted.
    OAuth2TokenProvider(
        "http://idp.example.com/token",
        RefreshTokenGrant("rt"),
        client_id="c",
        allow_insecure_http=True,
    )
    OAuth2TokenProvider("https://idp.example.com/token", RefreshTokenGrant("rt"), client_id="c")
    OAuth2TokenProvider("http://localhost:8080/token", RefreshTokenGrant("rt"), client_id="c")
    with pytest.raises(InsecureTransportError):
        TokenEndpoint(
            "https://idp.example.com/token",
            client_id="c",
            revocation_url="http://idp.example.com/revoke",
        )


@pytest.mark.asyncio
async def test_device_and_discovery_urls_over_http_are_refused() -> None:
    endpoint = TokenEndpoint("https://idp.example.com/token", client_id="c")
    with pytest.raises(InsecureTransportError):
        await endpoint.authorize_device("http://idp.example.com/devicecode")
    with pytest.raises(InsecureTransportError):
        await discover("http://idp.example.com")
    await endpoint.aclose()


@pytest.mark.asyncio
async def test_the_routed_address_decides(server: FakeOAuthServer) -> None:
    rt = server.issue_refresh_token("u")
    # A sandbox route from a fake host to loopback is not plain text on a network.
    with override_routes({}, {"http://idp.example.test/": server.base_url + "/"}):
        provider = OAuth2TokenProvider(
            "http://idp.example.test/token",
            RefreshTokenGrant(rt),
            client_id="cid",
            client_secret=SECRET,
        )
        async with provider:
            assert server.is_active((await provider.get_access_token()).value)
    # ... but a route from a loopback name to a host off loopback is refused at send.
    provider = OAuth2TokenProvider(
        "http://127.0.0.1:9/token", RefreshTokenGrant(rt), client_id="cid", max_attempts=1
    )
    with (
        override_routes({}, {"http://127.0.0.1:9/": "http://192.0.2.1:9/"}),
        pytest.raises(InsecureTransportError),
    ):
        await provider.get_access_token()
    await provider.aclose()


# -- issue 10 item 7: the store key holds the scope -------------------------------------


@pytest.mark.asyncio
async def test_providers_with_different_scopes_never_share_an_access_token() -> None:
    with FakeOAuthServer(rotate_refresh_tokens=True, reuse_detection=True) as server:
        rt = server.issue_refresh_token("u", scope="imap graph")
        store = MemoryTokenStore()
        graph = make(server, rt, scope="graph", store=store)
        imap = make(server, rt, scope="imap", store=store)
        graph_token = await graph.get_access_token()
        imap_token = await imap.get_access_token()
        assert graph.store_key != imap.store_key
        assert imap_token.value != graph_token.value
        record = server.token_info(imap_token.value)
        assert record is not None and record.scope == "imap"
        # They share one chain of rotated refresh tokens: none was spent twice.
        assert server.stats.reuse_detected == 0
        assert len(set(sent_refresh_tokens(server))) == 2
        assert server.is_active((await graph.get_access_token(force_refresh=True)).value)
        assert server.stats.reuse_detected == 0


@pytest.mark.asyncio
async def test_an_entry_under_the_old_key_gives_its_refresh_token_only(
    server: FakeOAuthServer,
) -> None:
    rt0 = server.issue_refresh_token("u")
    store = MemoryTokenStore()
    provider = make(server, rt0, store=store, scope="mail")
    old_key = f"{server.token_url}|cid|{RefreshTokenGrant(rt0).identity()}"
    assert provider.grant_store_key == old_key and provider.store_key == old_key + "|mail"
    # What mailoauth kept before: the newest refresh token, and an access token of
    # unknown scope that must not be handed out.
    newest = make(server, rt0)
    await newest.get_access_token()
    rt1 = newest.current_refresh_token
    assert rt1 is not None
    foreign = StoredCredential(
        refresh_token=rt1,
        access_token="at-of-another-scope",
        expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    await store.save(old_key, foreign)
    token = await provider.get_access_token()
    assert token.value != "at-of-another-scope" and server.is_active(token.value)
    assert sent_refresh_tokens(server)[-1] == rt1  # the newest, not the configured rt0
    assert server.stats.reuse_detected == 0


# -- issue 16 item 1: client authentication on every endpoint, and revocation -----------


@pytest.mark.parametrize("client_auth", ["post", "basic"])
@pytest.mark.asyncio
async def test_confidential_device_flow_and_revocation(client_auth: str) -> None:
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.add_client("conf", SECRET)

        def approve(prompt: DeviceAuthorization) -> None:
            server.approve_device(prompt.user_code, "dev@example.test")

        provider = OAuth2TokenProvider(
            server.token_url,
            DeviceCodeGrant(server.device_authorization_url, on_prompt=approve, interval=0),
            client_id="conf",
            client_secret=SECRET,
            client_auth=client_auth,  # type: ignore[arg-type]
            revocation_url=server.revocation_url,
            sleep=Sleeps(),
        )
        async with provider:
            token = await provider.get_access_token()
            rt = provider.current_refresh_token
            assert rt is not None and server.is_active(token.value)
            await provider.revoke()
        assert not server.is_active(token.value)  # the whole grant went
        assert not server.is_refresh_token_active(rt)
        assert provider.current_refresh_token is None
        assert server.revoked_requests[0]["token_type_hint"] == "refresh_token"
        for form in (server.device_forms[0], server.revoked_requests[0]):
            assert ("client_secret" in form) == (client_auth == "post")


@pytest.mark.asyncio
async def test_device_authorization_without_the_secret_is_refused_by_the_server() -> None:
    with FakeOAuthServer() as server:
        server.add_client("conf", SECRET)
        endpoint = TokenEndpoint(server.token_url, client_id="conf", client_secret="wrong")
        with pytest.raises(PermanentTokenError, match="invalid_client"):
            await endpoint.authorize_device(server.device_authorization_url)
        await endpoint.aclose()


@pytest.mark.asyncio
async def test_private_key_jwt_on_device_token_and_revocation_endpoints() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def assertion(audience: str, now: dt.datetime) -> str:
        return make_client_assertion(
            client_id="jwt-client", audience=audience, private_key=pem, certificate=None,
            now=now, key_id="k1",
        )  # fmt: skip

    with FakeOAuthServer() as server:
        server.add_client("jwt-client", None)
        server.add_jwt_key("jwt-client", public)

        def approve(prompt: DeviceAuthorization) -> None:
            server.approve_device(prompt.user_code, "dev@example.test")

        provider = OAuth2TokenProvider(
            server.token_url,
            DeviceCodeGrant(server.device_authorization_url, on_prompt=approve, interval=0),
            client_id="jwt-client",
            client_assertion=assertion,
            client_auth="private_key_jwt",
            revocation_url=server.revocation_url,
            sleep=Sleeps(),
        )
        async with provider:
            token = await provider.get_access_token()
            await provider.revoke()
        assert not server.is_active(token.value)
        for form in (server.device_forms[0], server.token_forms[-1], server.revoked_requests[0]):
            assert form["client_assertion_type"].endswith("jwt-bearer")
            assert form["client_assertion"].count(".") == 2


@pytest.mark.asyncio
async def test_revoke_without_a_revocation_url_or_a_token_says_so(
    server: FakeOAuthServer,
) -> None:
    provider = make(server, server.issue_refresh_token("u"))
    with pytest.raises(ConfigurationError, match="revocation_url"):
        await provider.revoke()
    client = OAuth2TokenProvider(
        server.token_url,
        DeviceCodeGrant(server.device_authorization_url),
        client_id="cid",
        revocation_url=server.revocation_url,
    )
    with pytest.raises(ConfigurationError, match="no token to revoke"):
        await client.revoke()


@pytest.mark.asyncio
async def test_revocation_errors_map_onto_the_tree(server: FakeOAuthServer) -> None:
    endpoint = TokenEndpoint(
        server.token_url,
        client_id="cid",
        client_secret="wrong",
        revocation_url=server.revocation_url,
        sleep=Sleeps(),
    )
    with pytest.raises(PermanentTokenError, match="invalid_client"):
        await endpoint.revoke("rt-whatever", token_type_hint="refresh_token")
    await endpoint.aclose()


# -- issue 16 item 2: refresh asks for no more than was granted --------------------------


@pytest.mark.asyncio
async def test_refresh_asks_only_for_the_granted_scope() -> None:
    with FakeOAuthServer(grantable_scopes="mail", strict_refresh_scope=True) as server:

        def approve(prompt: DeviceAuthorization) -> None:
            server.approve_device(prompt.user_code, "dev@example.test")

        provider = OAuth2TokenProvider(
            server.token_url,
            DeviceCodeGrant(server.device_authorization_url, on_prompt=approve, interval=0),
            client_id="public",
            scope="mail offline_access",
            sleep=Sleeps(),
        )
        async with provider:
            await provider.get_access_token()
            assert provider.granted_scope == "mail"
            again = await provider.get_access_token(force_refresh=True)
        assert server.is_active(again.value)
        assert server.token_forms[-1]["scope"] == "mail"


@pytest.mark.asyncio
async def test_granted_scope_comes_back_from_the_store() -> None:
    with FakeOAuthServer(strict_refresh_scope=True) as server:
        rt = server.issue_refresh_token("u", scope="mail")
        store = MemoryTokenStore()
        stored = StoredCredential(refresh_token=rt, scope="mail")
        provider = OAuth2TokenProvider(
            server.token_url, RefreshTokenGrant(rt), client_id="c", scope="mail offline_access",
            store=store, store_key="profile",
        )  # fmt: skip
        await store.save("profile", stored)
        async with provider:
            token = await provider.get_access_token()
        assert server.is_active(token.value) and server.token_forms[-1]["scope"] == "mail"


@pytest.mark.asyncio
async def test_microsoft_keeps_asking_for_offline_access() -> None:
    # Microsoft's responses never list offline_access; its refresh must ask again.
    with FakeOAuthServer(grantable_scopes="https://outlook.office.com/IMAP.AccessAsUser.All") as ms:
        rt = ms.issue_refresh_token("u")
        provider = MicrosoftTokenProvider.refresh_token(
            "app", rt, scope=("https://outlook.office.com/IMAP.AccessAsUser.All",
                              "offline_access"),
            token_url=ms.token_url, sleep=Sleeps(),
        )  # fmt: skip
        async with provider:
            await provider.get_access_token()
            await provider.get_access_token(force_refresh=True)
        assert all("offline_access" in f["scope"].split() for f in ms.token_forms)


# -- issue 16 item 3: a rotated-away refresh token is never sent again -------------------


@pytest.mark.asyncio
async def test_invalid_grant_never_falls_back_to_a_rotated_away_token(
    server: FakeOAuthServer,
) -> None:
    rt0 = server.issue_refresh_token("u")
    provider = make(server, rt0)
    await provider.get_access_token()
    await provider.get_access_token(force_refresh=True)
    newest = provider.current_refresh_token
    assert newest is not None
    server.revoke(newest)  # e.g. an administrator revoked this one token
    with pytest.raises(PermanentTokenError, match="rotated away") as info:
        await provider.get_access_token(force_refresh=True)
    assert info.value.error == "invalid_grant" and "sign in again" in str(info.value)
    assert sent_refresh_tokens(server).count(rt0) == 1
    assert server.stats.reuse_detected == 0


# -- issue 16 item 4: a forced refresh refreshes -------------------------------------------


@pytest.mark.asyncio
async def test_force_refresh_on_a_new_provider_with_a_store_makes_a_request(
    server: FakeOAuthServer,
) -> None:
    store = MemoryTokenStore()
    rt = server.issue_refresh_token("u")
    first = make(server, rt, store=store)
    token = await first.get_access_token()
    second = make(server, rt, store=store)
    forced = await second.get_access_token(force_refresh=True)
    assert forced.value != token.value and server.stats.token_requests == 2
    # Unforced, a new provider takes the stored token without a request.
    third = make(server, rt, store=store)
    assert (await third.get_access_token()).value == forced.value
    assert server.stats.token_requests == 2


# -- hints fit the server in use ----------------------------------------------------------


@pytest.mark.asyncio
async def test_hints_name_google_or_microsoft_only_for_their_servers() -> None:
    with FakeOAuthServer() as server:
        generic = make(server, "rt-unknown", max_attempts=1)
        with pytest.raises(PermanentTokenError) as info:
            await generic.get_access_token()
        text = str(info.value)
        assert "Hint:" in text and "Google" not in text and "Microsoft" not in text
        google = GoogleTokenProvider("cid", SECRET, "rt-unknown", token_url=server.token_url)
        with pytest.raises(PermanentTokenError, match="Testing"):
            await google.get_access_token()
        microsoft = MicrosoftTokenProvider.refresh_token(
            "app", "rt-unknown", token_url=server.token_url
        )
        with pytest.raises(PermanentTokenError, match="Conditional Access"):
            await microsoft.get_access_token()
        for provider in (generic, google, microsoft):
            await provider.aclose()


# -- discovery ----------------------------------------------------------------------------


def test_metadata_urls() -> None:
    assert metadata_urls("https://idp.example/") == [
        "https://idp.example/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server",
    ]
    assert metadata_urls("https://idp.example/tenant/v2") == [
        "https://idp.example/tenant/v2/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server/tenant/v2",
    ]
    with pytest.raises(ConfigurationError):
        metadata_urls("idp.example")


@pytest.mark.asyncio
async def test_discover_reads_the_endpoints(server: FakeOAuthServer) -> None:
    metadata = await discover(server.issuer)
    assert metadata.token_endpoint == server.token_url
    assert metadata.device_authorization_endpoint == server.device_authorization_url
    assert metadata.revocation_endpoint == server.revocation_url
    assert metadata.introspection_endpoint == server.introspection_url
    assert "client_secret_basic" in metadata.token_endpoint_auth_methods_supported
    assert metadata.url.endswith("/.well-known/openid-configuration")


@pytest.mark.asyncio
async def test_discover_falls_back_to_rfc8414(server: FakeOAuthServer) -> None:
    server.well_known_paths = frozenset({"/.well-known/oauth-authorization-server"})
    metadata = await discover(server.issuer + "/")
    assert metadata.url.endswith("/.well-known/oauth-authorization-server")
    assert server.stats.discovery_requests == 1
    server.well_known_paths = frozenset()
    with pytest.raises(ConfigurationError, match="no authorization server metadata"):
        await discover(server.issuer)


@pytest.mark.asyncio
async def test_discover_refuses_metadata_for_another_issuer(server: FakeOAuthServer) -> None:
    with (
        override_routes({}, {"http://localhost:1/": server.base_url + "/"}),
        pytest.raises(ConfigurationError, match="RFC 8414"),
    ):
        await discover("http://localhost:1")


@pytest.mark.asyncio
async def test_discover_of_a_failing_server_is_transient() -> None:
    with FakeOAuthServer() as server:
        url = server.issuer
    with pytest.raises(TransientTokenError):
        await discover(url, timeout=2)


@pytest.mark.asyncio
async def test_from_issuer_builds_a_working_device_flow_provider(
    server: FakeOAuthServer,
) -> None:
    def approve(prompt: DeviceAuthorization) -> None:
        server.approve_device(prompt.user_code, "dev@example.test")

    provider = await OAuth2TokenProvider.from_issuer(
        server.issuer,
        DeviceCodeGrant(on_prompt=approve, interval=0),
        client_id="cid",
        client_secret=SECRET,
        client_auth="basic",
        sleep=Sleeps(),
    )
    async with provider:
        token = await provider.get_access_token()
        assert server.is_active(token.value)
        assert provider.token_url == server.token_url
        assert provider.server_metadata.issuer == server.issuer
        await provider.revoke()
    assert not server.is_active(token.value)


@pytest.mark.asyncio
async def test_device_grant_without_a_url_says_how_to_get_one(server: FakeOAuthServer) -> None:
    provider = OAuth2TokenProvider(server.token_url, DeviceCodeGrant(), client_id="cid")
    with pytest.raises(ConfigurationError, match="from_issuer"):
        await provider.get_access_token()
