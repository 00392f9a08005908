"""TokenManager: one cached token per credential, refreshed ahead of expiry, single flight.

Every client wraps its token source with :func:`wrap_provider`. The manager hands out
the cached token while it is fresh, refreshes it ``refresh_margin`` seconds before it
expires (or half its lifetime before, for short-lived tokens, so that a token living a
few seconds is not refreshed on every call), and lets every concurrent caller share one
refresh: a thousand callers with an expired token make one request, and two hundred
connections that all saw the same token rejected make one request too
(``get_access_token(stale=token)`` / :meth:`TokenManager.refresh_rejected`).

The refresh runs in a task of its own, shielded from the callers: a caller that is
cancelled does not cancel the refresh the others are waiting for. When it fails, every
waiter gets the error and the next call tries again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import weakref
from collections.abc import Awaitable, Callable

from mailoauth.errors import ConfigurationError, TokenExpiredError
from mailoauth.tokens.access_token import AccessToken, TokenProvider, utcnow
from mailoauth.tokens.static import StaticTokenProvider

__all__ = ["DEFAULT_REFRESH_MARGIN", "TokenManager", "wrap_provider"]

log = logging.getLogger("mailoauth.tokens")

DEFAULT_REFRESH_MARGIN = 300.0
"""Seconds before expiry at which a token is refreshed (capped at half its lifetime)."""


class TokenManager:
    """Caches one provider's token and coalesces concurrent refreshes.

    ``provider`` is any :class:`TokenProvider`; ``refresh_margin`` is how many seconds
    before expiry to refresh (capped at half the token's lifetime); ``clock`` returns the
    current aware UTC time (tests set it). The manager is itself a TokenProvider.
    Asyncio only.
    """

    def __init__(
        self,
        provider: TokenProvider,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if not refresh_margin >= 0:
            raise ConfigurationError("refresh_margin must be a number of seconds >= 0")
        self._provider = provider
        self._margin = float(refresh_margin)
        self._clock = clock
        self._token: AccessToken | None = None
        self._obtained_at: dt.datetime | None = None
        # A token the provider handed back again when asked early: used until it expires.
        self._settled: str | None = None
        self._flight: asyncio.Task[AccessToken] | None = None
        self._flight_forced = False
        self.housekeeping: Callable[[], Awaitable[None]] | None = None
        """Awaited at the start of a call while set and no refresh runs (a provider sets
        it to retry a failed store save); must not raise."""

    @property
    def provider(self) -> TokenProvider:
        """The wrapped provider."""
        return self._provider

    @property
    def refresh_margin(self) -> float:
        return self._margin

    @property
    def cached_token(self) -> AccessToken | None:
        """The token held now (fresh or not), without refreshing."""
        return self._token

    def forget(self) -> None:
        """Drop the cached token (after it was revoked): the next call gets a new one."""
        self._token = None
        self._obtained_at = None
        self._settled = None

    def now(self) -> dt.datetime:
        """The manager's clock."""
        return self._clock()

    def margin_for(self, token: AccessToken, *, issued_at: dt.datetime | None = None) -> float:
        """Seconds before ``token`` expires at which it counts as due for refresh.

        ``refresh_margin``, but at most half the token's lifetime (from ``issued_at`` of
        the token, else the given ``issued_at``), so short-lived tokens are used too.
        """
        if token.expires_at is None:
            return 0.0
        start = token.issued_at or issued_at
        if start is None:
            return self._margin
        lifetime = (token.expires_at - start).total_seconds()
        return max(0.0, min(self._margin, lifetime / 2))

    def is_fresh(self, token: AccessToken, *, now: dt.datetime | None = None) -> bool:
        """True when ``token`` needs no refresh yet (never, if its expiry is unknown)."""
        if token.expires_at is None:
            return True
        now = now or self._clock()
        remaining = (token.expires_at - now).total_seconds()
        cached = self._token is not None and token.value == self._token.value
        margin = self.margin_for(token, issued_at=self._obtained_at if cached else None)
        return remaining > 0 and remaining > margin

    def _usable(self, token: AccessToken, now: dt.datetime) -> bool:
        if self.is_fresh(token, now=now):
            return True
        return token.value == self._settled and not token.is_expired(now=now)

    async def get_access_token(
        self, *, force_refresh: bool = False, stale: AccessToken | None = None
    ) -> AccessToken:
        """Return a fresh access token, refreshing it if needed (one refresh at a time).

        ``stale`` is a token the server rejected: a new one is fetched only if the cache
        still holds it, so many callers rejecting the same token cause one refresh.
        ``force_refresh`` without ``stale`` treats the cached token as rejected.
        Raises what the provider raises (:class:`~mailoauth.errors.TokenError`
        subclasses); all callers waiting on a failed refresh get the same error.
        """
        if self.housekeeping is not None and self._flight is None:
            await self.housekeeping()
        if stale is not None:
            force_refresh = True
        rejected = stale.value if stale is not None else None
        if force_refresh and rejected is None and self._token is not None:
            rejected = self._token.value
        result: AccessToken | None = None
        for _ in range(2):
            token = self._token
            if token is not None:
                now = self._clock()
                if not force_refresh and self._usable(token, now):
                    return token
                if rejected is not None and token.value != rejected and self._usable(token, now):
                    return token  # another caller already replaced the rejected token
            flight = self._flight
            if flight is None:
                flight = self._start(force=force_refresh)
            forced = self._flight_forced
            result = await asyncio.shield(flight)
            if rejected is None or result.value != rejected or forced:
                return result
            # We joined an ordinary refresh that handed back the rejected token: force one.
        assert result is not None
        return result

    async def refresh_rejected(self, token: AccessToken) -> AccessToken:
        """The server rejected ``token``: return a new one (one refresh for all callers).

        Raises :class:`~mailoauth.errors.TokenExpiredError` for a static token, which
        cannot be refreshed, and what the provider raises otherwise.
        """
        return await self.get_access_token(force_refresh=True, stale=token)

    def _start(self, *, force: bool) -> asyncio.Task[AccessToken]:
        task = asyncio.get_running_loop().create_task(self._refresh(force))
        task.add_done_callback(_retrieve_exception)
        self._flight = task
        self._flight_forced = force
        return task

    async def _refresh(self, force: bool) -> AccessToken:
        name = getattr(self._provider, "display_name", None) or type(self._provider).__name__
        previous = self._token
        reason = "rejected" if force else ("first use" if previous is None else "expiring")
        log.debug("refreshing access token via %s (%s)", name, reason)
        try:
            token = await self._provider.get_access_token(force_refresh=force)
            now = self._clock()
            if not force and previous is not None and token.value == previous.value:
                if token.is_expired(now=now):
                    token = await self._provider.get_access_token(force_refresh=True)
                    now = self._clock()
                else:
                    self._settled = token.value
            if token.is_expired(now=now):
                expired = token.expires_at.isoformat() if token.expires_at else "?"
                raise TokenExpiredError(
                    f"{name} returned an access token that had already expired (at "
                    f"{expired}); check the system clock and the provider"
                )
            if previous is None or token.value != previous.value:
                self._obtained_at = now
            self._token = token
            log.debug("access token via %s ready, expires at %s", name, token.expires_at)
            return token
        except BaseException as exc:
            log.debug("access token refresh via %s failed: %s", name, type(exc).__name__)
            raise
        finally:
            self._flight = None

    def __repr__(self) -> str:
        return f"TokenManager({self._provider!r}, refresh_margin={self._margin})"


def _retrieve_exception(task: asyncio.Task[AccessToken]) -> None:
    # Waiters may all be cancelled; fetching the exception keeps asyncio from logging it.
    if not task.cancelled():
        task.exception()


_managers: weakref.WeakValueDictionary[int, TokenManager] = weakref.WeakValueDictionary()


def wrap_provider(token: str | AccessToken | TokenProvider) -> TokenManager:
    """The :class:`TokenManager` a client uses for ``token``.

    A ``str`` or :class:`AccessToken` becomes a :class:`StaticTokenProvider` in a new
    manager; a manager is returned as is; a built-in provider returns the manager it
    already has; any other provider gets a manager that is shared by everyone who wraps
    that same provider object (so two clients given one provider refresh once). The
    shared manager lives as long as someone holds it. Raises
    :class:`~mailoauth.errors.ConfigurationError` for anything else.
    """
    if isinstance(token, TokenManager):
        return token
    if isinstance(token, (str, AccessToken)):
        return TokenManager(StaticTokenProvider(token))
    own = getattr(token, "token_manager", None)
    if isinstance(own, TokenManager):
        return own
    if not isinstance(token, TokenProvider):
        raise ConfigurationError(
            "token must be an access token (str or AccessToken) or a TokenProvider with "
            f"'async def get_access_token(self, *, force_refresh=False)', not "
            f"{type(token).__name__}"
        )
    # Keyed by identity, holding the manager weakly: the manager holds the provider, so
    # the id cannot be reused while the entry exists, and nothing is kept alive for ever.
    manager = _managers.get(id(token))
    if manager is None or manager.provider is not token:
        manager = TokenManager(token)
        _managers[id(token)] = manager
    return manager
