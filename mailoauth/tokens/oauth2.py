"""OAuth2TokenProvider: any grant against any token endpoint, cached and single-flight.

The provider owns a :class:`~mailoauth.tokens.manager.TokenManager` (so
:func:`~mailoauth.tokens.manager.wrap_provider` hands every client that same manager)
and, optionally, a token store. With a store it loads the newest refresh token and a
still-fresh access token from it, and saves every new token before returning it; a
store that can lock (``FileTokenStore``) is locked around "load the newest → refresh if
still needed → save", so two processes never spend the same rotating refresh token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, TypedDict

import anyio
import httpx

from mailoauth.errors import PermanentTokenError, TransientTokenError
from mailoauth.tokens.access_token import AccessToken, utcnow
from mailoauth.tokens.endpoint import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT,
    AssertionFactory,
    ClientAuth,
    SleepFunc,
    TokenEndpoint,
)
from mailoauth.tokens.grants import Grant, RefreshTokenGrant
from mailoauth.tokens.manager import DEFAULT_REFRESH_MARGIN, TokenManager
from mailoauth.tokens.stores import LockingTokenStore, StoredCredential, TokenStore

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["OAuth2TokenProvider", "ProviderOptions", "join_scopes"]

log = logging.getLogger("mailoauth.tokens")


class ProviderOptions(TypedDict, total=False):
    """Keyword options every built-in provider accepts (see :class:`OAuth2TokenProvider`)."""

    store_key: str | None
    http_client: httpx.AsyncClient | None
    timeout: float | httpx.Timeout
    max_attempts: int
    backoff: float
    sleep: SleepFunc
    refresh_margin: float
    clock: Callable[[], dt.datetime]


def join_scopes(scope: str | Iterable[str] | None) -> str | None:
    """One space-separated scope string from a string or an iterable of scopes."""
    if scope is None:
        return None
    if isinstance(scope, str):
        return scope.strip() or None
    return " ".join(s for s in scope if s) or None


class OAuth2TokenProvider:
    """Tokens from ``grant`` at ``token_url``, cached and refreshed ahead of expiry.

    ``client_id`` with ``client_secret`` or ``client_assertion`` authenticates the
    client; ``scope`` is sent with the grant. ``store`` keeps the newest tokens under
    ``store_key`` (default ``"{token_url}|{client_id}|{who}"``, never a secret).
    ``http_client`` is shared if given, else created on first use and closed by
    :meth:`aclose` (or ``async with``). ``timeout`` bounds each request; transient
    failures are tried ``max_attempts`` times with backoff from ``backoff`` seconds,
    waiting with ``sleep``. ``refresh_margin`` and ``clock`` go to the token manager.

    :meth:`get_access_token` raises :class:`~mailoauth.errors.PermanentTokenError`
    when the grant is refused (its message names the usual causes) and
    :class:`~mailoauth.errors.TransientTokenError` when the endpoint cannot be reached.
    """

    def __init__(
        self,
        token_url: str,
        grant: Grant,
        *,
        client_id: str,
        client_secret: str | None = None,
        client_assertion: AssertionFactory | None = None,
        scope: str | Iterable[str] | None = None,
        store: TokenStore | None = None,
        store_key: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        sleep: SleepFunc = anyio.sleep,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        clock: Callable[[], dt.datetime] = utcnow,
        client_auth: ClientAuth = "post",
    ) -> None:
        self._endpoint = TokenEndpoint(
            token_url,
            client_id=client_id,
            client_secret=client_secret,
            client_assertion=client_assertion,
            client_auth=client_auth,
            http_client=http_client,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            sleep=sleep,
            clock=clock,
        )
        self._grant = grant
        self._scope = join_scopes(scope)
        self._store = store
        self.store_key = store_key or f"{token_url}|{client_id}|{grant.identity()}"
        self._refresh_token: str | None = (
            grant.refresh_token if isinstance(grant, RefreshTokenGrant) else None
        )
        self._manager = TokenManager(_GrantSource(self), refresh_margin=refresh_margin, clock=clock)

    # -- the TokenProvider protocol --------------------------------------------------

    async def get_access_token(
        self, *, force_refresh: bool = False, stale: AccessToken | None = None
    ) -> AccessToken:
        """A fresh access token; see :meth:`TokenManager.get_access_token`."""
        return await self._manager.get_access_token(force_refresh=force_refresh, stale=stale)

    @property
    def token_manager(self) -> TokenManager:
        """The manager every client of this provider shares."""
        return self._manager

    @property
    def token_url(self) -> str:
        return self._endpoint.token_url

    @property
    def client_id(self) -> str:
        return self._endpoint.client_id

    @property
    def scope(self) -> str | None:
        return self._scope

    @property
    def grant(self) -> Grant:
        return self._grant

    @property
    def store(self) -> TokenStore | None:
        return self._store

    @property
    def current_refresh_token(self) -> str | None:
        """The newest refresh token known (a secret: keep it safe), or None."""
        return self._refresh_token

    # -- lifecycle -------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client if the provider created it."""
        await self._endpoint.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(token_url={self.token_url!r}, "
            f"client_id={self.client_id!r}, grant={self._grant!r})"
        )

    # -- getting tokens --------------------------------------------------------------

    async def _obtain(self, force_refresh: bool) -> AccessToken:
        """Called by the manager, one call at a time: the store dance around a fetch."""
        store = self._store
        if store is None:
            return await self._fetch()
        lock: AbstractAsyncContextManager[object] = (
            store.lock(self.store_key)
            if isinstance(store, LockingTokenStore)
            else contextlib.nullcontext()
        )
        async with lock:
            stored = await store.load(self.store_key)
            if stored is not None:
                if stored.refresh_token and self._grant.renew_with_refresh_token:
                    self._refresh_token = stored.refresh_token
                token = stored.to_access_token()
                cached = self._manager.cached_token
                # After a rejection, the stored token is no good if it is the one rejected.
                rejected = (
                    force_refresh
                    and cached is not None
                    and token is not None
                    and (cached.value == token.value)
                )
                if token is not None and not rejected and self._manager.is_fresh(token):
                    log.debug("using the access token in %r for %s", store, self.store_key)
                    return token
            token = await self._fetch()
            credential = StoredCredential.from_token(token, refresh_token=self._refresh_token)
            try:
                await store.save(self.store_key, credential)
            except OSError as exc:
                raise TransientTokenError(
                    f"got a new token but could not save it to {store!r}: "
                    f"{type(exc).__name__}: {exc.strerror or exc}"
                ) from exc
            log.debug("saved new tokens for %s to %r", self.store_key, store)
            return token

    async def _fetch(self) -> AccessToken:
        grant = self._grant
        refresh_token = self._refresh_token
        if refresh_token is not None and grant.renew_with_refresh_token:
            try:
                token = await self._endpoint.refresh(refresh_token, scope=self._scope)
            except PermanentTokenError as exc:
                if exc.error != "invalid_grant" or not grant.may_fall_back(refresh_token):
                    raise
                log.debug("refresh token refused; falling back to %r", grant)
                self._refresh_token = None
                token = await grant.fetch(self._endpoint, scope=self._scope)
        else:
            token = await grant.fetch(self._endpoint, scope=self._scope)
        if token.refresh_token and token.refresh_token != self._refresh_token:
            log.debug("the endpoint issued a new refresh token for %s", self.store_key)
            self._refresh_token = token.refresh_token
        return token


class _GrantSource:
    """The raw token source behind an OAuth2TokenProvider's manager."""

    def __init__(self, owner: OAuth2TokenProvider) -> None:
        self._owner = owner

    @property
    def display_name(self) -> str:
        return type(self._owner).__name__

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        return await self._owner._obtain(force_refresh)

    def __repr__(self) -> str:
        return repr(self._owner)
