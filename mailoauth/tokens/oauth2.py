"""OAuth2TokenProvider: any grant against any token endpoint, cached and single-flight.

The provider owns a :class:`~mailoauth.tokens.manager.TokenManager` (so
:func:`~mailoauth.tokens.manager.wrap_provider` hands every client that same manager)
and, optionally, a token store. With a store it loads the newest refresh token and a
still-fresh access token from it, and saves every new token before returning it; a
store that can lock (``FileTokenStore``) is locked around "load the newest → refresh if
still needed → save", so two processes never spend the same rotating refresh token.

Store keys: the access token is kept under ``{token_url}|{client_id}|{who}|{scope}``
(:attr:`OAuth2TokenProvider.store_key`), so providers asking for different scopes never
hand each other a token of the wrong scope. A refresh-token grant also keeps its newest
refresh token under ``{token_url}|{client_id}|{who}`` (the key of mailoauth before
0.x, read for the refresh token only), locked as one: providers of one grant with
different scopes share one chain of rotated refresh tokens and never spend one twice.

Rotating grants are guarded three ways. A refresh token seen rotated away is never sent
again, nor taken back from a store that still holds it (RFC 9700 §4.14: a server with
reuse detection revokes the whole grant). A save that fails (disk full, read-only
directory, Redis down) leaves the new tokens in memory, usable, reported by a WARNING,
:attr:`OAuth2TokenProvider.store_error` and ``on_store_error``, and retried before the
store is read again. Refresh asks for no more than was granted (RFC 6749 §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import anyio
import httpx

from mailoauth.errors import ConfigurationError, LockLostError, PermanentTokenError
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
from mailoauth.tokens.grants import DeviceCodeGrant, Grant, RefreshTokenGrant
from mailoauth.tokens.manager import DEFAULT_REFRESH_MARGIN, TokenManager
from mailoauth.tokens.responses import Vendor, redact
from mailoauth.tokens.stores import LockingTokenStore, StoredCredential, TokenStore

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "MAX_SUPERSEDED",
    "STORE_RETRY_INTERVAL",
    "STORE_RETRY_TIMEOUT",
    "OAuth2TokenProvider",
    "ProviderOptions",
    "StoreErrorCallback",
    "join_scopes",
    "refresh_token_digest",
]

log = logging.getLogger("mailoauth.tokens")


STORE_RETRY_INTERVAL = 5.0
"""Seconds between retries of a failed store save while the cached token is in use
(a refresh always retries first, whatever the interval)."""
STORE_RETRY_TIMEOUT = 2.0
"""Longest a retry between refreshes may hold up a caller that has a usable token
(waiting for the store's lock, saving); past it the retry is left to a later call."""
MAX_SUPERSEDED = 64
"""Refresh tokens remembered as rotated away (never sent again), newest kept."""

StoreErrorCallback = Callable[[BaseException], object]
"""Called with the exception when saving new tokens to the store failed."""


def refresh_token_digest(refresh_token: str) -> str:
    """A stable name for a refresh token that does not reveal it."""
    return "rt:" + hashlib.sha256(refresh_token.encode()).hexdigest()[:16]


def _scope_key(scope: str | None) -> str:
    return " ".join(sorted(set(scope.split()))) if scope else ""


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
    revocation_url: str | None
    allow_insecure_http: bool
    granted_scope: str | None
    on_store_error: StoreErrorCallback | None
    proxy: str | None
    trust_env: bool


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
    client, by ``client_auth`` (``"post"``, ``"basic"``, ``"none"``,
    ``"private_key_jwt"``) on every endpoint; ``scope`` is sent with the grant, and on
    refresh no more than the server granted (:attr:`granted_scope`; ``granted_scope=``
    seeds it, e.g. from a login). ``store`` keeps the newest tokens under ``store_key``
    (default: token URL, client id, who and scope; never a secret; see the module
    docstring). ``http_client`` is shared if given, else created on first use and
    closed by :meth:`aclose` (or ``async with``). ``timeout`` bounds each attempt at a
    request as a whole; transient failures are tried ``max_attempts`` times with
    backoff from ``backoff`` seconds, waiting with ``sleep``. ``refresh_margin`` and
    ``clock`` go to the token manager. ``revocation_url`` enables :meth:`revoke`.
    ``allow_insecure_http`` allows ``http://`` endpoints off loopback (secrets then
    cross the network in clear). ``on_store_error`` is called when a save fails.
    ``proxy`` (``http://user:pass@host:port`` or ``socks5://...``) is the proxy the
    token endpoint is reached through; ``trust_env=True`` lets httpx read
    ``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` (off by default).

    :meth:`get_access_token` raises :class:`~mailoauth.errors.PermanentTokenError`
    when the grant is refused (its message names the usual causes) and
    :class:`~mailoauth.errors.TransientTokenError` when the endpoint cannot be reached;
    :class:`~mailoauth.errors.LockLostError` when a fenced store refused a stale save.
    """

    vendor: ClassVar[Vendor | None] = None
    """Whose server this provider talks to, for the hints in error messages."""
    keep_requested_scope: ClassVar[bool] = False
    """Refresh with the requested scope even when less was granted (Microsoft)."""

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
        revocation_url: str | None = None,
        allow_insecure_http: bool = False,
        granted_scope: str | Iterable[str] | None = None,
        on_store_error: StoreErrorCallback | None = None,
        proxy: str | None = None,
        trust_env: bool = False,
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
            revocation_url=revocation_url,
            allow_insecure_http=allow_insecure_http,
            vendor=type(self).vendor,
            proxy=proxy,
            trust_env=trust_env,
        )
        self._grant = grant
        self._scope = join_scopes(scope)
        self._granted_scope = join_scopes(granted_scope)
        self._store = store
        self._on_store_error = on_store_error
        grant_key = f"{token_url}|{client_id}|{grant.identity()}"
        self.store_key = store_key or f"{grant_key}|{_scope_key(self._scope)}"
        # The refresh token of a grant is shared by its providers of every scope.
        self._grant_key: str | None = (
            grant_key if store_key is None and grant.renew_with_refresh_token else None
        )
        self._refresh_token: str | None = (
            grant.refresh_token if isinstance(grant, RefreshTokenGrant) else None
        )
        self._origin: str | None = (
            refresh_token_digest(self._refresh_token) if self._refresh_token else None
        )
        self._superseded: dict[str, None] = {}
        self._pending: list[tuple[str, StoredCredential]] | None = None
        self._store_error: BaseException | None = None
        self._last_retry: dt.datetime | None = None
        self._mutex = asyncio.Lock()
        self.server_metadata: Any = None
        """The :class:`~mailoauth.tokens.discovery.ServerMetadata` of :meth:`from_issuer`."""
        self._manager = TokenManager(_GrantSource(self), refresh_margin=refresh_margin, clock=clock)

    @classmethod
    async def from_issuer(
        cls,
        issuer: str,
        grant: Grant,
        *,
        client_id: str,
        http_client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        allow_insecure_http: bool = False,
        **options: Any,
    ) -> OAuth2TokenProvider:
        """A provider for the authorization server ``issuer``, its endpoints discovered.

        Reads the server's metadata (:func:`~mailoauth.tokens.discovery.discover`) and
        builds the provider with its token endpoint and revocation endpoint; a
        :class:`DeviceCodeGrant` without a device authorization URL gets the server's, and
        an :class:`~mailoauth.tokens.authcode.AuthorizationCodeGrant` without an
        authorization URL likewise.
        Other keyword options as for the constructor. Raises what ``discover`` raises,
        and :class:`ConfigurationError` when the server lacks an endpoint the grant needs.
        """
        from mailoauth.tokens.authcode import AuthorizationCodeGrant
        from mailoauth.tokens.discovery import discover

        metadata = await discover(
            issuer,
            http_client=http_client,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
            proxy=options.get("proxy"),
            trust_env=bool(options.get("trust_env", False)),
        )
        if metadata.token_endpoint is None:
            raise ConfigurationError(f"the metadata of {issuer} names no token_endpoint")
        if isinstance(grant, DeviceCodeGrant) and grant.device_authorization_url is None:
            if metadata.device_authorization_endpoint is None:
                raise ConfigurationError(
                    f"the metadata of {issuer} names no device_authorization_endpoint: the "
                    "server does not offer the device flow (or pass the URL to DeviceCodeGrant)"
                )
            grant.device_authorization_url = metadata.device_authorization_endpoint
        if isinstance(grant, AuthorizationCodeGrant) and grant.authorization_url is None:
            if metadata.authorization_endpoint is None:
                raise ConfigurationError(
                    f"the metadata of {issuer} names no authorization_endpoint (or pass "
                    "the URL to AuthorizationCodeGrant)"
                )
            grant.authorization_url = metadata.authorization_endpoint
        options.setdefault("revocation_url", metadata.revocation_endpoint)
        provider = cls(
            metadata.token_endpoint,
            grant,
            client_id=client_id,
            http_client=http_client,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
            **options,
        )
        provider.server_metadata = metadata
        return provider

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
    def endpoint(self) -> TokenEndpoint:
        """The token endpoint and client authentication this provider uses."""
        return self._endpoint

    @property
    def client_id(self) -> str:
        return self._endpoint.client_id

    @property
    def scope(self) -> str | None:
        """The scope asked for."""
        return self._scope

    @property
    def granted_scope(self) -> str | None:
        """The scope the server last said it granted, or None while unknown."""
        return self._granted_scope

    @property
    def grant(self) -> Grant:
        return self._grant

    @property
    def store(self) -> TokenStore | None:
        return self._store

    @property
    def grant_store_key(self) -> str:
        """The key under which the grant's newest refresh token is kept."""
        return self._grant_key or self.store_key

    @property
    def store_error(self) -> BaseException | None:
        """Why the last save to the store failed, or None (none failed since the last
        successful save). While set, the newest tokens live only in this process."""
        return self._store_error

    @property
    def current_refresh_token(self) -> str | None:
        """The newest refresh token known (a secret: keep it safe), or None."""
        return self._refresh_token

    # -- revocation ------------------------------------------------------------------

    async def revoke(self) -> None:
        """Revoke the grant at the revocation endpoint (RFC 7009) and forget its tokens.

        Revokes the refresh token if there is one (which revokes the grant's access
        tokens too at most servers), else the cached access token; then deletes the
        stored credential. Raises :class:`ConfigurationError` without
        ``revocation_url`` or without any token, and what
        :meth:`TokenEndpoint.revoke` raises.
        """
        async with self._mutex:
            cached = self._manager.cached_token
            if self._refresh_token is not None:
                token, hint = self._refresh_token, "refresh_token"
            elif cached is not None:
                token, hint = cached.value, "access_token"
            else:
                raise ConfigurationError("there is no token to revoke yet")
            await self._endpoint.revoke(token, token_type_hint=hint)
            log.debug("revoked the %s for %s", hint, self.store_key)
            if hint == "refresh_token":
                self._supersede(token)
                self._refresh_token = None
            self._pending = None
            self._manager.housekeeping = None
            self._manager.forget()
            if self._store is not None:
                for key in {self.store_key, self.grant_store_key}:
                    await self._store.delete(key)

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

    def _lock(self, store: TokenStore) -> AbstractAsyncContextManager[object]:
        if isinstance(store, LockingTokenStore):
            return store.lock(self.grant_store_key)
        return contextlib.nullcontext()

    async def _obtain(self, force_refresh: bool) -> AccessToken:
        """Called by the manager, one call at a time: the store dance around a fetch."""
        store = self._store
        if store is None:
            return await self._fetch()
        async with self._mutex, self._lock(store):
            # A save that failed goes first: never read the store back over newer tokens.
            await self._save_pending(store)
            # While a save is pending the store is older than this process: not read.
            token = await self._load(store) if self._pending is None else None
            if token is not None:
                cached = self._manager.cached_token
                # A forced refresh refreshes, unless the store holds a token other than
                # the one rejected (another process refreshed meanwhile).
                rejected = force_refresh and (cached is None or cached.value == token.value)
                if not rejected and self._manager.is_fresh(token):
                    log.debug("using the access token in %r for %s", store, self.store_key)
                    return token
            token = await self._fetch()
            self._pending = self._entries_for(token)
            await self._save_pending(store, first=True)
            return token

    async def _load(self, store: TokenStore) -> AccessToken | None:
        """Take the newest refresh token from the store; the stored access token."""
        stored = await store.load(self.store_key)
        shared = await store.load(self._grant_key) if self._grant_key is not None else None
        for candidate in (shared, stored):
            if candidate is not None and candidate.refresh_token:
                self._adopt(candidate)
                break
        if stored is None:
            return None
        if stored.scope:  # what the server last said it granted
            self._granted_scope = stored.scope
        return stored.to_access_token()

    def _adopt(self, stored: StoredCredential) -> None:
        """Use the stored refresh token unless this process knows it is older."""
        rt = stored.refresh_token
        if rt is None or not self._grant.renew_with_refresh_token or rt == self._refresh_token:
            return
        if refresh_token_digest(rt) in self._superseded:
            log.debug("the stored refresh token for %s was rotated away; not used", self.store_key)
            return
        initial = self._grant.refresh_token if isinstance(self._grant, RefreshTokenGrant) else None
        if initial is not None and rt != initial:
            # The stored token descends from ours when the key was made from ours, or
            # when the credential says so: ours was rotated away and is dead for good.
            origin = stored.origin or (self._grant_key and refresh_token_digest(initial))
            if origin == refresh_token_digest(initial):
                self._supersede(initial)
        if stored.origin:
            self._origin = stored.origin
        self._refresh_token = rt

    def _supersede(self, refresh_token: str) -> None:
        self._superseded[refresh_token_digest(refresh_token)] = None
        while len(self._superseded) > MAX_SUPERSEDED:
            del self._superseded[next(iter(self._superseded))]

    def _entries_for(self, token: AccessToken) -> list[tuple[str, StoredCredential]]:
        credential = StoredCredential.from_token(
            token, refresh_token=self._refresh_token, origin=self._origin
        )
        entries = [(self.store_key, credential)]
        if self._grant_key is not None and credential.refresh_token:
            shared = StoredCredential(refresh_token=credential.refresh_token, origin=self._origin)
            entries.insert(0, (self._grant_key, shared))
        return entries

    async def _save_pending(self, store: TokenStore, *, first: bool = False) -> None:
        """Save the tokens not saved yet. A failure keeps them pending and is reported
        (WARNING, :attr:`store_error`, ``on_store_error``); a fenced store's
        LockLostError is raised."""
        entries = self._pending
        if entries is None:
            return
        try:
            for key, credential in entries:
                await store.save(key, credential)
        except LockLostError:
            # Another worker holds the lock now: what it saved wins. Not retried.
            self._pending = None
            self._manager.housekeeping = None
            raise
        except Exception as exc:
            self._store_error = exc
            self._last_retry = self._manager.now()
            self._manager.housekeeping = self._housekeeping
            secrets = [c.refresh_token or "" for _, c in entries]
            secrets += [c.access_token or "" for _, c in entries]
            detail = redact(getattr(exc, "strerror", None) or str(exc), secrets)
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "could not save the new tokens for %s to %r (%s: %s); they stay in memory "
                "and the save is retried before the store is read again",
                self.store_key,
                store,
                type(exc).__name__,
                detail,
            )
            if self._on_store_error is not None:
                self._on_store_error(exc)
            return
        self._pending = None
        self._manager.housekeeping = None
        if self._store_error is not None:
            log.warning("saved the pending tokens for %s to %r", self.store_key, store)
        self._store_error = None
        log.debug("saved new tokens for %s to %r", self.store_key, store)

    async def _housekeeping(self) -> None:
        """Retry a failed save between refreshes, at most every STORE_RETRY_INTERVAL."""
        store = self._store
        now = self._manager.now()
        if store is None or self._pending is None or self._mutex.locked():
            return
        if self._last_retry and (now - self._last_retry).total_seconds() < STORE_RETRY_INTERVAL:
            return
        self._last_retry = now
        try:
            with anyio.move_on_after(STORE_RETRY_TIMEOUT):
                async with self._mutex, self._lock(store):
                    await self._save_pending(store)
        except Exception as exc:  # the cached token still works; the next refresh retries
            log.debug("retrying the save for %s failed: %s", self.store_key, type(exc).__name__)

    def _refresh_scope(self) -> str | None:
        """The scope to send with a refresh: asked for, narrowed to what was granted."""
        requested, granted = self._scope, self._granted_scope
        if requested is None or granted is None or type(self).keep_requested_scope:
            return requested
        allowed = set(granted.split())
        # RFC 6749 §6: no scope not granted; none at all means "as granted".
        return " ".join(s for s in requested.split() if s in allowed) or None

    async def _fetch(self) -> AccessToken:
        grant = self._grant
        refresh_token = self._refresh_token
        if refresh_token is not None and grant.renew_with_refresh_token:
            sent_scope = self._refresh_scope()
            try:
                token = await self._endpoint.refresh(refresh_token, scope=sent_scope)
            except PermanentTokenError as exc:
                if exc.error != "invalid_grant" or not grant.may_fall_back(refresh_token):
                    raise
                initial = grant.refresh_token if isinstance(grant, RefreshTokenGrant) else None
                if initial is not None and refresh_token_digest(initial) in self._superseded:
                    raise PermanentTokenError(
                        f"{exc}. The refresh token this provider was built with was rotated "
                        "away since, so it is not sent again (a server with reuse detection "
                        "would take it for a stolen token and revoke the whole grant, RFC "
                        "9700 §4.14): sign in again for a new refresh token",
                        error=exc.error,
                        error_description=exc.error_description,
                        status_code=exc.status_code,
                    ) from exc
                log.debug("refresh token refused; falling back to %r", grant)
                self._refresh_token = None
                sent_scope = self._scope
                token = await grant.fetch(self._endpoint, scope=sent_scope)
        else:
            sent_scope = self._scope
            token = await grant.fetch(self._endpoint, scope=sent_scope)
        self._granted_scope = token.scope or sent_scope or self._granted_scope
        if token.refresh_token and token.refresh_token != self._refresh_token:
            log.debug("the endpoint issued a new refresh token for %s", self.store_key)
            if self._refresh_token is not None:
                self._supersede(self._refresh_token)
            else:
                self._origin = self._origin or refresh_token_digest(token.refresh_token)
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
