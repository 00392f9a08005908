"""StaticTokenProvider: a bare access token, good until it expires."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from mailoauth.errors import ConfigurationError, TokenExpiredError
from mailoauth.tokens.access_token import AccessToken, utcnow

__all__ = ["PASS_A_PROVIDER", "StaticTokenProvider"]

#: The fix for an expired bare token, in the library's words (the command has its own).
PASS_A_PROVIDER = (
    "pass a token provider instead of a bare token (e.g. GoogleTokenProvider, "
    "MicrosoftTokenProvider or OAuth2TokenProvider) so that it can be refreshed"
)


class StaticTokenProvider:
    """Hands out one fixed access token; it cannot refresh it.

    ``token`` is the token string or an :class:`AccessToken` (whose ``expires_at`` is
    honoured). ``clock`` returns the current aware UTC time (tests set it).
    """

    def __init__(
        self, token: str | AccessToken, *, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        if isinstance(token, str):
            token = AccessToken(token)
        if not isinstance(token, AccessToken) or not token.value:
            raise ConfigurationError("StaticTokenProvider needs a non-empty access token")
        self._token = token
        self._clock = clock

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        """Return the token.

        Raises :class:`TokenExpiredError` when it has expired, and when
        ``force_refresh`` is true (the server rejected it and nothing can renew it).
        """
        if force_refresh:
            raise TokenExpiredError(
                "the access token was rejected and a static token cannot be refreshed; "
                + PASS_A_PROVIDER
            )
        if self._token.is_expired(now=self._clock()):
            expired = self._token.expires_at.isoformat() if self._token.expires_at else "?"
            raise TokenExpiredError(f"the access token expired at {expired}; " + PASS_A_PROVIDER)
        return self._token

    def __repr__(self) -> str:
        return f"StaticTokenProvider({self._token!r})"
