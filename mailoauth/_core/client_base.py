"""What the three clients share: argument checking, the token manager, the transport
plan and dialling, the deadlines, ``async with``, and a repr without secrets.

The deadlines, one rule for SMTP, IMAP and POP3:

- ``timeout`` bounds each reply as a whole: a greeting, a status line, the wait for a
  multi-line response. A server dripping a byte at a time gains nothing.
- A long transfer (a big RETR, a big message sent) is bounded by a minimum rate
  instead: ``timeout`` plus one second for every ``min_rate`` bytes moved.
- ``connect()`` is bounded end to end by ``connect_timeout``: TCP connect, TLS,
  greeting, capabilities, STARTTLS, getting the access token and AUTH, together.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Final, TypeVar

import anyio

from mailoauth._core.auth import choose_mechanism
from mailoauth._core.connection import PLAINTEXT_HINT, Connection
from mailoauth._util.text import refuse_controls
from mailoauth.errors import ConfigurationError, MailTimeoutError, _NotOpenError
from mailoauth.security import SecurityOptions, TransportPlan, plan_transport
from mailoauth.tokens.access_token import AccessToken, TokenProvider
from mailoauth.tokens.manager import TokenManager, wrap_provider

__all__ = [
    "CONNECT_TIMEOUT_FACTOR",
    "DEFAULT_MIN_RATE",
    "DEFAULT_TIMEOUT",
    "BaseClient",
]

_C = TypeVar("_C", bound="BaseClient")

#: Seconds one reply (a greeting, a status line, the start of a response) may take as a
#: whole before the connection is closed.
DEFAULT_TIMEOUT = 30.0
#: ``connect_timeout`` defaults to this many times ``timeout``: connecting spans several
#: replies, a TLS handshake and a token request, each of which may take a while, but
#: together they may not take for ever.
CONNECT_TIMEOUT_FACTOR: Final = 2.0
#: The slowest a long transfer may go, in bytes per second, once ``timeout`` has been
#: spent: a transfer of N bytes may take ``timeout + N / min_rate`` seconds. 1 KiB/s is
#: far below any working link (a 50 MB message at 100 KB/s is well inside), and far
#: above a server that drips a byte at a time to hold a connection.
DEFAULT_MIN_RATE: Final = 1024.0


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
        connect_timeout: float | None = None,
        min_rate: float = DEFAULT_MIN_RATE,
    ) -> None:
        if not host or " " in refuse_controls(host, "host"):
            raise ConfigurationError(f"host {host!r} is not a valid host name")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"port must be an int from 1 to 65535, not {port!r}")
        if not refuse_controls(username, "username"):
            raise ConfigurationError("username must be non-empty")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be positive seconds, not {timeout!r}")
        if connect_timeout is not None and not connect_timeout > 0:
            raise ConfigurationError(
                f"connect_timeout must be positive seconds (or None for "
                f"{CONNECT_TIMEOUT_FACTOR:g} x timeout), not {connect_timeout!r}"
            )
        if not (isinstance(min_rate, int | float) and math.isfinite(min_rate) and min_rate > 0):
            raise ConfigurationError(
                f"min_rate must be a positive number of bytes per second, not {min_rate!r}"
            )
        if mechanism is not None:
            choose_mechanism((mechanism,), mechanism, self.protocol_name)  # validates
        self.host = host
        self.port = port
        self.username = username
        self.security = security
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.connect_timeout = (
            CONNECT_TIMEOUT_FACTOR * timeout if connect_timeout is None else connect_timeout
        )
        self.min_rate = float(min_rate)
        self.mechanism = mechanism
        self.allow_insecure_auth = allow_insecure_auth
        self._configured_plan = plan_transport(
            security, port, allow_insecure_auth=allow_insecure_auth
        )
        #: The plan of the current connection: under ``AUTO`` what the server turned
        #: out to speak (see :meth:`_dial`).
        self.plan: TransportPlan = self._configured_plan
        self.tokens: TokenManager = wrap_provider(token)
        self.mechanism_used: str | None = None
        self._dialled: Connection | None = None
        # True from connect() (even one that failed: the connection is then "lost",
        # not "never opened") until aclose(): outside that, a command is a misuse.
        self._opened = False

    async def connect(self) -> None:
        """Connect, secure and authenticate, all within ``connect_timeout`` seconds.

        Raises :class:`~mailoauth.errors.MailTimeoutError` when that deadline (or one
        reply's ``timeout``) runs out, naming the likely cause; see the subclass for the
        rest.
        """
        self._opened = True
        await self._connect()

    def _require_opened(self) -> None:
        """Raise :class:`~mailoauth.errors.UsageError` unless :meth:`connect` was called
        and :meth:`aclose` not since."""
        if not self._opened:
            name = type(self).__name__
            raise _NotOpenError(
                f"this {name} is not open (connect() was never called, or aclose() was): "
                f"use `async with {name}(...) as client:` or await client.connect() first"
            )

    async def _connect(self) -> None:
        """:meth:`_open` under the one ``connect_timeout`` deadline (reconnects too)."""
        self._dialled = None
        try:
            with anyio.fail_after(self.connect_timeout):
                await self._open()
        except MailTimeoutError as exc:
            hint = self._silence_hint(str(exc))
            if not hint:
                raise
            raise MailTimeoutError(f"{exc}{hint}") from exc
        except TimeoutError as exc:
            raise MailTimeoutError(
                f"connecting to {self.host}:{self.port} took longer than connect_timeout="
                f"{self.connect_timeout:g}s (TCP, TLS, greeting, capabilities, the access "
                f"token and AUTH together); the connection was closed"
                f"{self._silence_hint('')}"
            ) from exc

    def _silence_hint(self, message: str) -> str:
        """Why a server may have sent nothing at all, when it did send nothing."""
        conn = self._dialled
        if conn is None or conn.bytes_received or "SSL_IMPLICIT" in message:
            return ""
        if conn.tls_active or self.security is SecurityOptions.SSL_IMPLICIT:
            return ""
        return (
            f"; {self.host}:{self.port} sent no greeting at all: if that port expects TLS "
            f"from the first byte (implicit TLS), use SecurityOptions.SSL_IMPLICIT or AUTO"
        )

    async def _dial(self) -> Connection:
        """Open the connection as the security option says. Under ``AUTO`` the server
        decides between implicit TLS and STARTTLS, and :attr:`plan` says which it
        chose. Raises as :meth:`Connection.open`."""
        plan = self._configured_plan
        conn = await Connection.open(
            self.host,
            self.port,
            implicit_tls=plan.implicit_tls,
            ssl_context=self.ssl_context,
            timeout=self.timeout,
            detect=plan.detect,
            plaintext_hint=PLAINTEXT_HINT,
        )
        self._dialled = conn
        if plan.detect:
            plan = TransportPlan(
                implicit_tls=conn.tls_active, starttls=not conn.tls_active, detect=True
            )
        self.plan = plan
        return conn

    @contextmanager
    def reply_deadline(self) -> Iterator[None]:
        """Bound what runs inside to one reply's deadline: ``timeout`` as a whole, plus
        one second for every ``min_rate`` bytes received meanwhile (a long FETCH on a
        slow link goes on; a server dripping bytes does not). For protocols attached
        to the connection (aiosmtplib's, aioimaplib's), whose reads are not ours.
        Raises :class:`TimeoutError` when the deadline passes; nested uses leave the
        outermost in charge.
        """
        conn = self._dialled
        with anyio.fail_after(self.timeout) as scope:
            if conn is None or conn.on_progress is not None:
                yield
                return
            start = scope.deadline - self.timeout
            base = conn.bytes_received

            def progress() -> None:
                scope.deadline = self.transfer_deadline(start, conn.bytes_received - base)

            conn.on_progress = progress
            try:
                yield
            finally:
                conn.on_progress = None

    def transfer_deadline(self, start: float, transferred: int) -> float:
        """When a transfer begun at loop time ``start`` must end, ``transferred`` bytes
        in: ``timeout`` plus one second per ``min_rate`` bytes."""
        return start + self.timeout + transferred / self.min_rate

    async def aclose(self) -> None:
        """Log out politely if possible, then close. Never raises for a dead connection.
        Commands after this raise :class:`~mailoauth.errors.UsageError` until the next
        :meth:`connect`."""
        try:
            await self._close()
        finally:
            self._opened = False

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
