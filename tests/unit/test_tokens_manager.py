"""TokenManager, StaticTokenProvider and wrap_provider, with in-memory providers."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc

import pytest

from mailoauth.errors import ConfigurationError, TokenExpiredError, TransientTokenError
from mailoauth.tokens import (
    AccessToken,
    OAuth2TokenProvider,
    RefreshTokenGrant,
    StaticTokenProvider,
    TokenManager,
    wrap_provider,
)

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


class FakeClock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class CountingProvider:
    """Issues tok-1, tok-2, ... living ``lifetime`` seconds; can be told to fail."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0, delay: float = 0.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.calls: list[bool] = []
        self.fail_with: Exception | None = None

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls.append(force_refresh)
        await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        now = self.clock()
        return AccessToken(
            f"tok-{len(self.calls)}",
            expires_at=now + dt.timedelta(seconds=self.lifetime),
            issued_at=now,
        )


@pytest.mark.asyncio
async def test_caches_until_margin_then_refreshes() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock)
    manager = TokenManager(provider, refresh_margin=300, clock=clock)
    first = await manager.get_access_token()
    assert (await manager.get_access_token()).value == first.value
    clock.advance(3600 - 301)
    assert (await manager.get_access_token()).value == first.value
    clock.advance(2)
    assert (await manager.get_access_token()).value == "tok-2"
    assert provider.calls == [False, False]


@pytest.mark.asyncio
async def test_short_lived_tokens_are_used_for_half_their_life_not_refetched_forever() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, lifetime=4.0)
    manager = TokenManager(provider, refresh_margin=300, clock=clock)
    await manager.get_access_token()
    for _ in range(10):
        await manager.get_access_token()
    assert len(provider.calls) == 1
    clock.advance(1.9)
    assert (await manager.get_access_token()).value == "tok-1"
    clock.advance(0.2)  # past half its 4 s life
    assert (await manager.get_access_token()).value == "tok-2"
    assert len(provider.calls) == 2


@pytest.mark.asyncio
async def test_token_without_issued_at_uses_manager_clock_for_lifetime() -> None:
    clock = FakeClock()

    class Bare:
        async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
            return AccessToken("bare", expires_at=clock() + dt.timedelta(seconds=10))

    manager = TokenManager(Bare(), clock=clock)
    await manager.get_access_token()
    assert manager.is_fresh(manager.cached_token)  # type: ignore[arg-type]
    clock.advance(6)
    assert not manager.is_fresh(manager.cached_token)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_refresh() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, delay=0.01)
    manager = TokenManager(provider, clock=clock)
    tokens = await asyncio.gather(*(manager.get_access_token() for _ in range(1000)))
    assert {t.value for t in tokens} == {"tok-1"}
    assert len(provider.calls) == 1


@pytest.mark.asyncio
async def test_stale_coalesces_rejections_of_one_token() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, delay=0.005)
    manager = TokenManager(provider, clock=clock)
    seen = await manager.get_access_token()

    async def rejected_then_retry() -> AccessToken:
        await asyncio.sleep(0)
        return await manager.get_access_token(force_refresh=True, stale=seen)

    first_wave = await asyncio.gather(*(rejected_then_retry() for _ in range(100)))
    # Late arrivals, after the refresh finished, must not refresh again.
    second_wave = await asyncio.gather(*(manager.refresh_rejected(seen) for _ in range(100)))
    assert {t.value for t in first_wave + second_wave} == {"tok-2"}
    assert provider.calls == [False, True]


@pytest.mark.asyncio
async def test_force_refresh_without_stale_refreshes_the_cached_token() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock)
    manager = TokenManager(provider, clock=clock)
    await manager.get_access_token()
    assert (await manager.get_access_token(force_refresh=True)).value == "tok-2"
    assert provider.calls == [False, True]


@pytest.mark.asyncio
async def test_failed_refresh_wakes_every_waiter_and_next_call_retries() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, delay=0.01)
    provider.fail_with = TransientTokenError("endpoint down")
    manager = TokenManager(provider, clock=clock)
    results = await asyncio.gather(
        *(manager.get_access_token() for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, TransientTokenError) for r in results)
    assert len(provider.calls) == 1
    provider.fail_with = None
    assert (await manager.get_access_token()).value == "tok-2"
    assert len(provider.calls) == 2


@pytest.mark.asyncio
async def test_cancelled_caller_does_not_cancel_the_shared_refresh() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, delay=0.05)
    manager = TokenManager(provider, clock=clock)
    leader = asyncio.ensure_future(manager.get_access_token())
    await asyncio.sleep(0.01)
    follower = asyncio.ensure_future(manager.get_access_token())
    await asyncio.sleep(0)
    leader.cancel()
    assert (await follower).value == "tok-1"
    assert leader.cancelled()
    assert len(provider.calls) == 1


@pytest.mark.asyncio
async def test_provider_returning_same_token_early_is_kept_until_expiry() -> None:
    clock = FakeClock()
    token = AccessToken("own-cache", expires_at=T0 + dt.timedelta(seconds=1000))
    calls: list[bool] = []

    class SelfCaching:
        async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
            calls.append(force_refresh)
            if force_refresh or clock() >= T0 + dt.timedelta(seconds=1000):
                return AccessToken("renewed", expires_at=clock() + dt.timedelta(seconds=1000))
            return token

    manager = TokenManager(SelfCaching(), refresh_margin=300, clock=clock)
    await manager.get_access_token()
    clock.advance(800)  # inside the margin: asks once, gets the same token back
    for _ in range(5):
        assert (await manager.get_access_token()).value == "own-cache"
    assert calls == [False, False]
    clock.advance(200)  # now expired: the provider is forced
    assert (await manager.get_access_token()).value == "renewed"


@pytest.mark.asyncio
async def test_provider_returning_expired_token_is_an_error() -> None:
    clock = FakeClock()

    class Broken:
        async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
            return AccessToken("old", expires_at=T0 - dt.timedelta(seconds=1))

    with pytest.raises(TokenExpiredError, match="already expired"):
        await TokenManager(Broken(), clock=clock).get_access_token()


def test_negative_margin_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        TokenManager(StaticTokenProvider("x"), refresh_margin=-1)


# -- static tokens --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_static_token_works_until_expiry_then_says_to_pass_a_provider() -> None:
    clock = FakeClock()
    token = AccessToken("ya29.static", expires_at=T0 + dt.timedelta(seconds=60))
    manager = TokenManager(StaticTokenProvider(token, clock=clock), clock=clock)
    assert (await manager.get_access_token()).value == "ya29.static"
    clock.advance(59)
    assert (await manager.get_access_token()).value == "ya29.static"
    clock.advance(2)
    with pytest.raises(TokenExpiredError, match="GoogleTokenProvider") as info:
        await manager.get_access_token()
    assert "ya29.static" not in str(info.value)


@pytest.mark.asyncio
async def test_known_expired_static_token_fails_at_once() -> None:
    expired = AccessToken("x", expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(1))
    with pytest.raises(TokenExpiredError, match="OAuth2TokenProvider"):
        await wrap_provider(expired).get_access_token()


@pytest.mark.asyncio
async def test_static_token_force_refresh_raises_token_expired() -> None:
    manager = wrap_provider("plain-token")
    seen = await manager.get_access_token()
    assert seen.value == "plain-token"
    with pytest.raises(TokenExpiredError, match="cannot be refreshed"):
        await manager.refresh_rejected(seen)
    with pytest.raises(TokenExpiredError):
        await StaticTokenProvider("plain-token").get_access_token(force_refresh=True)
    assert "plain-token" not in repr(StaticTokenProvider("plain-token"))


def test_static_provider_refuses_empty_token() -> None:
    with pytest.raises(ConfigurationError):
        StaticTokenProvider("")


# -- wrap_provider --------------------------------------------------------------------


def test_wrap_provider_shapes() -> None:
    clock = FakeClock()
    provider = CountingProvider(clock)
    manager = wrap_provider(provider)
    assert isinstance(manager, TokenManager)
    assert wrap_provider(provider) is manager
    assert wrap_provider(manager) is manager
    assert isinstance(wrap_provider("abc").provider, StaticTokenProvider)
    assert isinstance(wrap_provider(AccessToken("abc")).provider, StaticTokenProvider)
    other = CountingProvider(clock)
    assert wrap_provider(other) is not manager
    with pytest.raises(ConfigurationError, match="TokenProvider"):
        wrap_provider(42)  # type: ignore[arg-type]


def test_wrap_provider_returns_a_builtin_providers_own_manager() -> None:
    provider = OAuth2TokenProvider(
        "http://127.0.0.1:9/token", RefreshTokenGrant("rt"), client_id="cid"
    )
    assert wrap_provider(provider) is provider.token_manager
    assert wrap_provider(provider) is wrap_provider(provider)


def test_wrap_provider_works_for_unhashable_and_slotted_providers_and_frees_them() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]
        __slots__ = ()

        async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
            return AccessToken("u")

    provider = Unhashable()
    manager = wrap_provider(provider)
    assert wrap_provider(provider) is manager
    ident = id(provider)
    del manager, provider
    gc.collect()
    from mailoauth.tokens import manager as manager_module

    assert ident not in manager_module._managers
