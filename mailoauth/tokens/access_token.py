"""AccessToken and the TokenProvider protocol: the two shapes every token source shares."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["AccessToken", "TokenProvider", "utcnow"]


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime."""
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class AccessToken:
    """An OAuth 2.0 access token.

    ``expires_at`` is an aware UTC datetime, or ``None`` when unknown. ``refresh_token``
    is the refresh token that came with it, if any. ``issued_at`` is when it was
    obtained, if known; the token manager uses it to tell the token's lifetime. The repr
    never shows a secret.
    """

    value: str = field(repr=False)
    expires_at: dt.datetime | None = None
    scope: str | None = None
    refresh_token: str | None = field(default=None, repr=False)
    issued_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("AccessToken.expires_at must be timezone-aware (UTC)")
        if self.issued_at is not None and self.issued_at.tzinfo is None:
            raise ValueError("AccessToken.issued_at must be timezone-aware (UTC)")

    def expires_within(self, seconds: float, *, now: dt.datetime | None = None) -> bool:
        """True when the token expires within ``seconds`` from ``now`` (or has expired)."""
        if self.expires_at is None:
            return False
        now = now or utcnow()
        return (self.expires_at - now).total_seconds() <= seconds

    def is_expired(self, *, now: dt.datetime | None = None) -> bool:
        """True when ``expires_at`` is known and not in the future."""
        return self.expires_within(0, now=now)

    def __repr__(self) -> str:
        exp = self.expires_at.isoformat() if self.expires_at else None
        return f"AccessToken(value=<redacted>, expires_at={exp!r}, scope={self.scope!r})"


@runtime_checkable
class TokenProvider(Protocol):
    """Anything that can hand out an access token.

    A custom provider is a class with this one method. ``force_refresh=True`` means the
    server rejected the last token: fetch a new one rather than returning a cached one.
    """

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken: ...
