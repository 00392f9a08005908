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

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio

from mailoauth._core.connection import PLAINTEXT_HINT, Connection
from mailoauth._core.dialer import Dialer
from mailoauth._core.settings import (
    CONNECT_TIMEOUT_FACTOR,
    DEFAULT_MIN_RATE,
    DEFAULT_TIMEOUT,
    ConnectionOptions,
    ConnectionSettings,
    check_login_name,
)
from mailoauth._util.text import refuse_swapped, shown
from mailoauth.errors import MailTimeoutError, _NotOpenError
from mailoauth.security import SecurityOptions, TransportPlan
from mailoauth.tokens.access_token import AccessToken, TokenProvider
from mailoauth.tokens.manager import TokenManager, wrap_provider

__all__ = [
    "CONNECT_TIMEOUT_FACTOR",
    "DEFAULT_MIN_RATE",
    "DEFAULT_TIMEOUT",
    "BaseClient",
    "ConnectionOptions",
    "ConnectionSettings",
]

_C = TypeVar("_C", bound="BaseClient")


class BaseClient:
    """Shared constructor and lifecycle. Subclasses implement ``_open`` and ``_close``.

    A client is for one task at a time; open one client per concurrent task (they can
    share a token provider, and then share its refreshes).

    :attr:`settings` holds how the server is reached (checked when it was made: see
    :class:`~mailoauth.ConnectionSettings`); its fields read as attributes of the client
    too (``client.host``, ``client.timeout``, ...).
    """

    protocol_name = ""

    def __init__(
        self,
        settings: ConnectionSettings,
        username: str,
        token: str | AccessToken | TokenProvider,
    ) -> None:
        """``username`` is the mailbox to log in to: to open a shared mailbox with a
        delegate's token, it is the shared mailbox's address and ``token`` the
        delegate's. Raises :class:`~mailoauth.errors.ConfigurationError` for an empty
        username, one with control characters, or the basic-auth ``delegate\\shared``
        form (see :func:`~mailoauth._core.settings.check_login_name`; the rest was
        checked by ``settings``)."""
        check_login_name(username)
        refuse_swapped(username, token)
        self.settings = settings
        self.username = username
        self._configured_plan = settings.plan
        #: The plan of the current connection: under ``AUTO`` what the server turned
        #: out to speak (see :meth:`_dial`).
        self.plan: TransportPlan = self._configured_plan
        self.tokens: TokenManager = wrap_provider(token)
        self.mechanism_used: str | None = None
        self._dialled: Connection | None = None
        # True from connect() (even one that failed: the connection is then "lost",
        # not "never opened") until aclose(): outside that, a command is a misuse.
        self._opened = False

    @classmethod
    def from_settings(
        cls: type[_C],
        settings: ConnectionSettings,
        username: str,
        token: str | AccessToken | TokenProvider,
        **client_options: Any,
    ) -> _C:
        """A client for ``settings`` (used as it is, not copied), logging in as
        ``username`` with ``token``; ``client_options`` are the client's own keywords
        (``local_hostname=``, ``max_message_size=``, ...). Raises as the constructor,
        and :class:`TypeError` for a connection option (it belongs in ``settings``)."""
        client = cls.__new__(cls)
        client.__dict__["_given_settings"] = settings
        init: Any = cls.__init__  # the subclass's: (host, port, username, token, ...)
        init(
            client,
            settings.host,
            settings.port,
            username,
            token,
            settings.security,
            **client_options,
        )
        return client

    def _settings_from(
        self, host: str, port: int, security: SecurityOptions, options: ConnectionOptions
    ) -> ConnectionSettings:
        """The settings for a subclass constructor: the ones :meth:`from_settings` was
        given, else made (and checked) from its positional arguments and options."""
        given: ConnectionSettings | None = self.__dict__.pop("_given_settings", None)
        if given is not None:
            if options:
                raise TypeError(
                    f"{type(self).__name__}.from_settings() got connection options "
                    f"{', '.join(sorted(options))}: set them on the settings "
                    f"(settings.replace(...)) or use the constructor"
                )
            return given
        return ConnectionSettings(host, port, security, **options)

    @property
    def host(self) -> str:
        """The server's host name, as given."""
        return self.settings.host

    @property
    def port(self) -> int:
        """The server's port."""
        return self.settings.port

    @property
    def security(self) -> SecurityOptions:
        """The security option asked for (see :attr:`plan` for what it became)."""
        return self.settings.security

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context given, if any."""
        return self.settings.ssl_context

    @property
    def timeout(self) -> float:
        """Seconds one reply may take as a whole."""
        return self.settings.timeout

    @property
    def min_rate(self) -> float:
        """The slowest a long transfer may go, in bytes per second."""
        return self.settings.min_rate

    @property
    def mechanism(self) -> str | None:
        """The SASL mechanism asked for, if any."""
        return self.settings.mechanism

    @property
    def allow_insecure_auth(self) -> bool:
        """Whether the token may go in clear (``SecurityOptions.NONE``)."""
        return self.settings.allow_insecure_auth

    @property
    def dialer(self) -> Dialer | None:
        """How connections are opened (None: directly)."""
        return self.settings.dialer

    @property
    def tls_resumed(self) -> bool:
        """Whether the current connection's TLS handshake resumed an earlier session
        (False without TLS or before :meth:`connect`)."""
        conn = self._dialled
        return conn is not None and conn.tls_resumed

    @property
    def connect_timeout(self) -> float:
        """Seconds :meth:`connect` may take in all."""
        return self.settings.effective_connect_timeout

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
            dialer=self.settings.effective_dialer,
            tls_resumption=self.settings.tls_resumption,
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
            f"<{type(self).__name__} {shown(self.username, 'username')}@{self.host}:{self.port} "
            f"security={self.security.name}>"
        )
