"""What the three clients share: argument checking, the token manager, the transport
plan, ``async with``, and a repr without secrets."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import TypeVar

from mailoauth._core.auth import choose_mechanism
from mailoauth._text import refuse_controls
from mailoauth.errors import ConfigurationError
from mailoauth.security import SecurityOptions, TransportPlan, plan_transport
from mailoauth.tokens.access_token import AccessToken, TokenProvider
from mailoauth.tokens.manager import TokenManager, wrap_provider

__all__ = ["DEFAULT_TIMEOUT", "BaseClient"]

_C = TypeVar("_C", bound="BaseClient")

#: Seconds any single network wait may take before the connection is closed.
DEFAULT_TIMEOUT = 30.0


class BaseClient:
    """Shared constructor and lifecycle. Subclasses implement ``_open`` and ``_close``.

    A client is for one task at a time; open one client per concurrent task (they can
    share a token provider, and then share its refreshes).
    """

    protocol_name = ""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        token: str | AccessToken | TokenProvider,
        security: SecurityOptions = SecurityOptions.AUTO,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        mechanism: str | None = None,
        allow_insecure_auth: bool = False,
    ) -> None:
        if not host or " " in refuse_controls(host, "host"):
            raise ConfigurationError(f"host {host!r} is not a valid host name")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"port must be an int from 1 to 65535, not {port!r}")
        if not refuse_controls(username, "username"):
            raise ConfigurationError("username must be non-empty")
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive seconds, not {timeout!r}")
        if mechanism is not None:
            choose_mechanism((mechanism,), mechanism, self.protocol_name)  # validates
        self.host = host
        self.port = port
        self.username = username
        self.security = security
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.mechanism = mechanism
        self.allow_insecure_auth = allow_insecure_auth
        self.plan: TransportPlan = plan_transport(
            security, port, allow_insecure_auth=allow_insecure_auth
        )
        self.tokens: TokenManager = wrap_provider(token)
        self.mechanism_used: str | None = None

    async def connect(self) -> None:
        """Connect, secure and authenticate. See the subclass for what it raises."""
        await self._open()

    async def aclose(self) -> None:
        """Log out politely if possible, then close. Never raises for a dead connection."""
        await self._close()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: _C) -> _C:
        await self.connect()
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
            f"<{type(self).__name__} {self.username}@{self.host}:{self.port} "
            f"security={self.security.name}>"
        )
