"""OAuth 2.0 grants: how a provider gets its first token (and, for some, every token).

A grant builds the request; :class:`~mailoauth.tokens.endpoint.TokenEndpoint` sends it.
Grants whose responses carry a refresh token that should be used from then on (the
refresh-token grant itself and the device code grant) say so with
``renew_with_refresh_token``; the provider keeps the newest refresh token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mailoauth.errors import ConfigurationError, PermanentTokenError
from mailoauth.tokens.access_token import AccessToken
from mailoauth.tokens.responses import DeviceAuthorization

if TYPE_CHECKING:
    from mailoauth.tokens.endpoint import TokenEndpoint

__all__ = [
    "DEVICE_CODE_GRANT_TYPE",
    "JWT_BEARER_GRANT_TYPE",
    "SLOW_DOWN_STEP",
    "ClientCredentialsGrant",
    "DeviceCodeGrant",
    "Grant",
    "JwtBearerGrant",
    "PasswordGrant",
    "PromptCallback",
    "RefreshTokenGrant",
]

log = logging.getLogger("mailoauth.tokens")

DEVICE_CODE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SLOW_DOWN_STEP = 5.0
"""Seconds added to the polling interval on each ``slow_down`` (RFC 8628 §3.5)."""

PromptCallback = Callable[[DeviceAuthorization], Awaitable[None] | None]


class Grant:
    """Base of the grants. Subclass and implement :meth:`fetch` for a custom one."""

    grant_type = ""
    renew_with_refresh_token = False
    """Use the refresh token a response brings for later refreshes, not this grant."""

    def identity(self) -> str:
        """Who the token is for (username, subject, ...), for the store key. No secret."""
        return ""

    def may_fall_back(self, refresh_token: str) -> bool:
        """Whether to run this grant when ``refresh_token`` got ``invalid_grant``."""
        return True

    async def fetch(self, endpoint: TokenEndpoint, *, scope: str | None) -> AccessToken:
        """Get a token from ``endpoint``; raises :class:`~mailoauth.errors.TokenError`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RefreshTokenGrant(Grant):
    """The refresh_token grant, starting from ``refresh_token``."""

    grant_type = "refresh_token"
    renew_with_refresh_token = True

    def __init__(self, refresh_token: str) -> None:
        if not refresh_token:
            raise ConfigurationError("refresh_token must not be empty")
        self.refresh_token = refresh_token

    def identity(self) -> str:
        # A digest names the credential stably without revealing the token.
        return "rt:" + hashlib.sha256(self.refresh_token.encode()).hexdigest()[:16]

    def may_fall_back(self, refresh_token: str) -> bool:
        # The stored (newer) token was refused: the one we were given may still work.
        return refresh_token != self.refresh_token

    async def fetch(self, endpoint: TokenEndpoint, *, scope: str | None) -> AccessToken:
        return await endpoint.refresh(self.refresh_token, scope=scope)


class PasswordGrant(Grant):
    """The resource owner password credentials grant (ROPC)."""

    grant_type = "password"

    def __init__(self, username: str, password: str) -> None:
        if not username or not password:
            raise ConfigurationError("the password grant needs a username and a password")
        self.username = username
        self._password = password

    def identity(self) -> str:
        return self.username

    async def fetch(self, endpoint: TokenEndpoint, *, scope: str | None) -> AccessToken:
        form = {"grant_type": "password", "username": self.username, "password": self._password}
        if scope:
            form["scope"] = scope
        return await endpoint.request_token(form, grant="password")

    def __repr__(self) -> str:
        return f"PasswordGrant(username={self.username!r})"


class ClientCredentialsGrant(Grant):
    """The client_credentials grant: the app acts as itself (client secret or assertion)."""

    grant_type = "client_credentials"

    def identity(self) -> str:
        return "app"

    async def fetch(self, endpoint: TokenEndpoint, *, scope: str | None) -> AccessToken:
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        return await endpoint.request_token(form, grant="client_credentials")


class JwtBearerGrant(Grant):
    """The jwt-bearer grant (RFC 7523), e.g. a Google service account.

    ``make_assertion(audience, now)`` returns a freshly signed JWT; ``subject`` is the
    impersonated user, if any (named in the store key).
    """

    grant_type = JWT_BEARER_GRANT_TYPE

    def __init__(
        self,
        make_assertion: Callable[[str, dt.datetime], str],
        *,
        issuer: str,
        subject: str | None = None,
    ) -> None:
        self._make_assertion = make_assertion
        self.issuer = issuer
        self.subject = subject

    def identity(self) -> str:
        return self.subject or self.issuer

    async def fetch(self, endpoint: TokenEndpoint, *, scope: str | None) -> AccessToken:
        form = {
            "grant_type": JWT_BEARER_GRANT_TYPE,
            "assertion": self._make_assertion(endpoint.token_url, endpoint.clock()),
        }
        return await endpoint.request_token(form, grant="jwt-bearer")

    def __repr__(self) -> str:
        return f"JwtBearerGrant(issuer={self.issuer!r}, subject={self.subject!r})"


def _print_prompt(prompt: DeviceAuthorization) -> None:
    print(prompt.message, file=sys.stderr, flush=True)


class DeviceCodeGrant(Grant):
    """The device authorization grant (RFC 8628).

    Asks ``device_authorization_url`` for a code, passes what to show the user to
    ``on_prompt`` (default: print the message to stderr), then polls the token
    endpoint: ``authorization_pending`` keeps polling, ``slow_down`` adds 5 s to the
    interval; ``access_denied`` and ``expired_token`` raise
    :class:`~mailoauth.errors.PermanentTokenError`, as does running out of the code's
    lifetime. ``interval`` overrides the server's polling interval. ``account`` names
    the signed-in user in the store key. ``device_authorization_url`` may be left out
    when the provider is built with :meth:`OAuth2TokenProvider.from_issuer`, which
    takes it from the server's metadata; without it :meth:`fetch` raises
    :class:`~mailoauth.errors.ConfigurationError`.
    """

    grant_type = DEVICE_CODE_GRANT_TYPE
    renew_with_refresh_token = True

    def __init__(
        self,
        device_authorization_url: str | None = None,
        *,
        on_prompt: PromptCallback | None = None,
        interval: float | None = None,
        account: str | None = None,
    ) -> None:
        self.device_authorization_url = device_authorization_url
        self._on_prompt = on_prompt or _print_prompt
        self._interval = interval
        self.account = account

    def identity(self) -> str:
        return self.account or "device"

    async def fetch(self, endpoint: TokenEndpoint, *, scope: str | None) -> AccessToken:
        if self.device_authorization_url is None:
            raise ConfigurationError(
                "DeviceCodeGrant has no device_authorization_url: pass it, or build the "
                "provider with OAuth2TokenProvider.from_issuer() to discover it"
            )
        auth = await endpoint.authorize_device(self.device_authorization_url, scope=scope)
        shown = self._on_prompt(auth)
        if inspect.isawaitable(shown):
            await shown
        interval = auth.interval if self._interval is None else self._interval
        waited = 0.0
        form = {"grant_type": DEVICE_CODE_GRANT_TYPE, "device_code": auth.device_code}
        while True:
            if waited >= auth.expires_in:
                raise PermanentTokenError(
                    f"the device code expired after {auth.expires_in:g} s before the user "
                    "signed in; start again",
                    error="expired_token",
                )
            await endpoint.sleep(interval)
            waited += interval
            try:
                return await endpoint.request_token(form, grant="device_code")
            except PermanentTokenError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                    log.debug("device code polling slowed down to every %gs", interval)
                    continue
                raise

    def __repr__(self) -> str:
        return f"DeviceCodeGrant({self.device_authorization_url!r})"
