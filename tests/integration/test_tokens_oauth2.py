"""OAuth2TokenProvider against FakeOAuthServer on loopback: grants, errors, retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from mailoauth.errors import ConfigurationError, PermanentTokenError, TransientTokenError
from mailoauth.testing.clock import FakeClock
from mailoauth.testing.oauth_server import FakeOAuthServer, ScriptedResponse
from mailoauth.tokens import (
    AccessToken,
    GoogleTokenProvider,
    MemoryTokenStore,
    OAuth2TokenProvider,
    PasswordGrant,
    RefreshTokenGrant,
    StoredCredential,
    wrap_provider,
)

CLIENT_SECRET = "cs-very-secret-value"


class Sleeps:
    """An instant sleep that records what it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def server() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer() as srv:
        srv.add_client("cid", CLIENT_SECRET)
        yield srv


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def google(
    server: FakeOAuthServer, refresh_token: str, http: httpx.AsyncClient | None = None, **kw: object
) -> GoogleTokenProvider:
    return GoogleTokenProvider(
        "cid",
        CLIENT_SECRET,
        refresh_token,
        token_url=server.token_url,
        http_client=http,
        sleep=Sleeps(),
        **kw,  # type: ignore[arg-type]
    )


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in (CLIENT_SECRET, *secrets):
        assert secret not in text


@pytest.mark.asyncio
async def test_refresh_token_grant(server: FakeOAuthServer, http: httpx.AsyncClient) -> None:
    rt = server.issue_refresh_token("alice@example.test")
    provider = google(server, rt, http)
    token = await provider.get_access_token()
    assert server.is_active(token.value)
    assert token.expires_at is not None and token.issued_at is not None
    assert 3590 < (token.expires_at - token.issued_at).total_seconds() <= 3600
    assert (await provider.get_access_token()).value == token.value
    assert server.stats.token_requests == 1
    form = server.token_forms[0]
    assert form["grant_type"] == "refresh_token"
    assert form["client_id"] == "cid" and form["client_secret"] == CLIENT_SECRET
    assert_no_secret(repr(provider), rt)


@pytest.mark.asyncio
async def test_single_flight_1000_callers_one_request(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    provider = google(server, server.issue_refresh_token("a"), http, clock=clock.now)
    manager = wrap_provider(provider)
    await manager.get_access_token()
    clock.advance(4000)  # the cached token has expired
    before = server.stats.token_requests
    started = time.perf_counter()
    tokens = await asyncio.gather(*(manager.get_access_token() for _ in range(1000)))
    elapsed = time.perf_counter() - started
    assert server.stats.token_requests - before == 1
    assert len({t.value for t in tokens}) == 1
    print(f"\n1000 concurrent callers, expired token: 1 token request in {elapsed * 1000:.1f} ms")


@pytest.mark.asyncio
async def test_single_flight_cold_start(server: FakeOAuthServer, http: httpx.AsyncClient) -> None:
    provider = google(server, server.issue_refresh_token("a"), http)
    await asyncio.gather(*(provider.get_access_token() for _ in range(1000)))
    assert server.stats.token_requests == 1


@pytest.mark.asyncio
async def test_200_rejections_of_one_token_make_one_refresh(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    provider = google(server, server.issue_refresh_token("a"), http)
    manager = wrap_provider(provider)
    seen = await manager.get_access_token()
    server.revoke(seen.value)
    new = await asyncio.gather(*(manager.refresh_rejected(seen) for _ in range(200)))
    assert server.stats.token_requests == 2
    assert len({t.value for t in new}) == 1 and new[0].value != seen.value
    assert server.is_active(new[0].value)


@pytest.mark.asyncio
async def test_rotation_uses_new_refresh_token_and_saves_it_before_returning(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailoauth.tokens")
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        rt0 = server.issue_refresh_token("bob")

        class SpyStore(MemoryTokenStore):
            saved_before_return: list[str] = []

            async def save(self, key: str, credential: StoredCredential) -> None:
                await super().save(key, credential)
                assert credential.refresh_token is not None
                if credential.access_token:  # not the grant's shared refresh-token entry
                    self.saved_before_return.append(credential.refresh_token)

        store = SpyStore()
        clock = FakeClock()
        provider = OAuth2TokenProvider(
            server.token_url,
            RefreshTokenGrant(rt0),
            client_id="cid",
            store=store,
            http_client=http,
            clock=clock.now,
        )
        first = await provider.get_access_token()
        rt1 = provider.current_refresh_token
        assert rt1 is not None and rt1 != rt0
        assert store.saved_before_return == [rt1]
        assert server.token_forms[0]["refresh_token"] == rt0
        clock.advance(4000)
        second = await provider.get_access_token()
        assert second.value != first.value
        assert server.token_forms[1]["refresh_token"] == rt1  # the rotated one, not rt0
        rt2 = provider.current_refresh_token
        assert store.saved_before_return == [rt1, rt2]
        stored = await store.load(provider.store_key)
        assert stored is not None and stored.refresh_token == rt2
        assert stored.access_token == second.value
        assert rt0 not in provider.store_key and rt0 not in repr(stored)
        assert "GoogleTokenProvider" not in caplog.text
        assert "OAuth2TokenProvider (expiring)" in caplog.text
        for secret in (rt0, rt1, rt2, first.value, second.value):
            assert secret is not None and secret not in caplog.text


@pytest.mark.asyncio
async def test_provider_loads_fresh_token_and_newest_refresh_token_from_store(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    store = MemoryTokenStore()
    rt_old = server.issue_refresh_token("carol")
    first = google(server, rt_old, http, store=store)
    token = await first.get_access_token()
    # A second provider (say, after a restart) makes no request at all.
    second = google(server, rt_old, http, store=store)
    assert (await second.get_access_token()).value == token.value
    assert server.stats.token_requests == 1


@pytest.mark.asyncio
async def test_invalid_grant_is_permanent_with_hint_and_no_secret(
    server: FakeOAuthServer, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailoauth.tokens")
    rt = server.issue_refresh_token("dave")
    server.revoke(rt)
    provider = google(server, rt, http)
    with pytest.raises(PermanentTokenError) as info:
        await provider.get_access_token()
    err = info.value
    assert err.error == "invalid_grant" and err.status_code == 400
    assert err.error_description == "Token has been expired or revoked."
    assert "Testing" in str(err) and "7 days" in str(err) and "password" in str(err)
    for text in (str(err), repr(err), repr(provider), caplog.text):
        assert_no_secret(text, rt)
    assert server.stats.token_requests == 1  # permanent: not retried


@pytest.mark.asyncio
async def test_invalid_client_hint(server: FakeOAuthServer, http: httpx.AsyncClient) -> None:
    provider = GoogleTokenProvider(
        "cid", "wrong-secret", "rt-x", token_url=server.token_url, http_client=http
    )
    with pytest.raises(PermanentTokenError, match="client secret") as info:
        await provider.get_access_token()
    assert info.value.error == "invalid_client"
    assert "wrong-secret" not in str(info.value)


@pytest.mark.asyncio
async def test_error_description_echoing_a_secret_is_redacted(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    rt = server.issue_refresh_token("e")
    server.script(
        ScriptedResponse(400, {"error": "invalid_scope", "error_description": f"bad {rt}!"})
    )
    with pytest.raises(PermanentTokenError) as info:
        await google(server, rt, http).get_access_token()
    assert rt not in str(info.value) and "<redacted>" in str(info.value)
    assert info.value.error_description is not None and rt not in info.value.error_description
    assert "https://mail.google.com/" in str(info.value)


@pytest.mark.asyncio
async def test_500s_then_success_is_retried_with_backoff(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    server.script(ScriptedResponse(500), ScriptedResponse(503, "<html>down</html>"))
    sleeps = Sleeps()
    provider = OAuth2TokenProvider(
        server.token_url,
        RefreshTokenGrant(server.issue_refresh_token("f")),
        client_id="cid",
        client_secret=CLIENT_SECRET,
        http_client=http,
        sleep=sleeps,
        backoff=0.5,
    )
    token = await provider.get_access_token()
    assert server.is_active(token.value)
    assert server.stats.token_requests == 3
    assert len(sleeps.waits) == 2
    assert 0.25 <= sleeps.waits[0] <= 0.5 and 0.5 <= sleeps.waits[1] <= 1.0


@pytest.mark.asyncio
async def test_500s_forever_give_transient_error_after_max_attempts(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    server.script(*[ScriptedResponse(500)] * 5)
    provider = google(server, server.issue_refresh_token("g"), http, max_attempts=4)
    with pytest.raises(TransientTokenError, match="after 4 attempts") as info:
        await provider.get_access_token()
    assert info.value.status_code == 500
    assert server.stats.token_requests == 4


@pytest.mark.asyncio
async def test_429_is_transient_and_honours_retry_after(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    server.script(ScriptedResponse(429, {"error": "rate_limited"}))
    sleeps = Sleeps()
    provider = GoogleTokenProvider(
        "cid", CLIENT_SECRET, server.issue_refresh_token("h"), token_url=server.token_url,
        http_client=http, sleep=sleeps,
    )  # fmt: skip
    await provider.get_access_token()
    assert server.stats.token_requests == 2 and len(sleeps.waits) == 1


@pytest.mark.asyncio
async def test_slow_response_beyond_timeout_is_transient(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    # Answers that would come after the guard: only the 0.15 s timeout ends each
    # attempt (waiting for them would end in the guard's TimeoutError instead).
    server.script(*[ScriptedResponse(status=0, delay=30.0)] * 2)
    provider = google(server, server.issue_refresh_token("i"), http, timeout=0.15, max_attempts=2)
    with pytest.raises(TransientTokenError, match="did not answer in time"):
        await asyncio.wait_for(provider.get_access_token(), 10)


@pytest.mark.asyncio
async def test_network_error_is_transient() -> None:
    provider = GoogleTokenProvider(
        "cid", CLIENT_SECRET, "rt-net", token_url="http://127.0.0.1:9/token", sleep=Sleeps()
    )
    async with provider:
        with pytest.raises(TransientTokenError, match="could not reach") as info:
            await provider.get_access_token()
    assert "rt-net" not in str(info.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (404, "<html><body>Not Found</body></html>", PermanentTokenError, "text/html"),
        (502, "<html>Bad gateway</html>", TransientTokenError, "HTTP 502"),
        (200, "<html>captive portal</html>", PermanentTokenError, "not a JSON object"),
        (200, '{"access_token": "abc", "expires_in": ', PermanentTokenError, "not a JSON"),
        (200, {"token_type": "Bearer"}, PermanentTokenError, "without an access_token"),
        (400, {"error": "temporarily_unavailable"}, TransientTokenError, "temporarily"),
        (302, "", PermanentTokenError, "redirected"),
    ],
)
async def test_odd_responses_map_onto_the_error_tree(
    server: FakeOAuthServer,
    http: httpx.AsyncClient,
    status: int,
    body: str | dict[str, str],
    error: type[Exception],
    match: str,
) -> None:
    server.script(*[ScriptedResponse(status, body)] * 3)
    provider = google(server, server.issue_refresh_token("j"), http)
    with pytest.raises(error, match=match):
        await provider.get_access_token()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [("3599", 3599), ("12.5", 12.5), (None, 3600), (120.0, 120), ("soon", 3600), (-5, 3600)],
)
async def test_expires_in_shapes(
    server: FakeOAuthServer, http: httpx.AsyncClient, expires_in: object, seconds: float
) -> None:
    body: dict[str, object] = {"access_token": "at-x", "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    server.script(ScriptedResponse(200, body))
    token = await google(server, "rt-any", http).get_access_token()
    assert token.expires_at is not None and token.issued_at is not None
    assert (token.expires_at - token.issued_at).total_seconds() == pytest.approx(seconds)


@pytest.mark.asyncio
async def test_password_grant_and_basic_client_auth(server: FakeOAuthServer) -> None:
    server.add_user("erin@example.test", "hunter2-pw")
    provider = OAuth2TokenProvider(
        server.token_url,
        PasswordGrant("erin@example.test", "hunter2-pw"),
        client_id="cid",
        client_secret=CLIENT_SECRET,
        client_auth="basic",
        scope=["mail", "offline_access"],
    )
    async with provider:
        token = await provider.get_access_token()
    assert server.token_info(token.value) is not None
    form = server.token_forms[0]
    assert "client_secret" not in form and form["scope"] == "mail offline_access"
    assert "erin@example.test" in provider.store_key
    assert "hunter2-pw" not in repr(provider)


@pytest.mark.asyncio
async def test_wrong_password_is_permanent_without_the_password(server: FakeOAuthServer) -> None:
    server.add_user("erin@example.test", "right")
    provider = OAuth2TokenProvider(
        server.token_url, PasswordGrant("erin@example.test", "wrong-password"),
        client_id="cid", client_secret=CLIENT_SECRET,
    )  # fmt: skip
    async with provider:
        with pytest.raises(PermanentTokenError, match="invalid_grant") as info:
            await provider.get_access_token()
    assert "wrong-password" not in str(info.value)


def test_bad_configuration_is_reported_at_construction() -> None:
    with pytest.raises(ConfigurationError):
        OAuth2TokenProvider("ftp://x/token", RefreshTokenGrant("r"), client_id="c")
    with pytest.raises(ConfigurationError):
        OAuth2TokenProvider("https://x/token", RefreshTokenGrant("r"), client_id="")
    with pytest.raises(ConfigurationError):
        RefreshTokenGrant("")
    with pytest.raises(ConfigurationError):
        OAuth2TokenProvider(
            "https://x/token", RefreshTokenGrant("r"), client_id="c", max_attempts=0
        )


@pytest.mark.asyncio
async def test_failed_refresh_wakes_all_waiters_then_next_call_succeeds(
    server: FakeOAuthServer, http: httpx.AsyncClient
) -> None:
    server.script(ScriptedResponse(500, delay=0.1))
    provider = google(server, server.issue_refresh_token("k"), http, max_attempts=1)
    results = await asyncio.gather(
        *(provider.get_access_token() for _ in range(100)), return_exceptions=True
    )
    assert all(isinstance(r, TransientTokenError) for r in results)
    assert server.stats.token_requests == 1
    token = await provider.get_access_token()
    assert isinstance(token, AccessToken) and server.stats.token_requests == 2
