"""SmtpPool: many messages over a few SMTP connections that share one token manager."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final

import anyio

from mailoauth.errors import ConfigurationError, MailOAuthError, UsageError
from mailoauth.security import SecurityOptions
from mailoauth.smtp.client import DEFAULT_WINDOW, Outgoing, SendResult, SmtpClient
from mailoauth.tokens.access_token import AccessToken, TokenProvider
from mailoauth.tokens.manager import TokenManager, wrap_provider

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mailoauth._core.settings import ConnectionOptions

__all__ = ["DEFAULT_POOL_SIZE", "MAX_POOL_SIZE", "SmtpPool"]

log = logging.getLogger("mailoauth.smtp")

#: Connections a pool opens by default: measured against Postfix on 2 cores, more
#: than 4 gave no more messages/s (benchmarks/smtp.py).
DEFAULT_POOL_SIZE: Final = 4
#: The most connections one pool may hold: servers limit connections per client
#: (Gmail and Exchange Online throttle well below this).
MAX_POOL_SIZE: Final = 32


class SmtpPool:
    """Send many messages over up to ``size`` SMTP connections at once.

    ``SmtpPool(host, port, username, token, security, size=4, window=4, ...)`` takes
    what :class:`~mailoauth.SmtpClient` takes (the connection options and
    ``local_hostname=`` too); its connections share one
    :class:`~mailoauth.TokenManager`, so that a token rejected by several of them at
    once is refreshed once for the whole pool.

    ::

        async with SmtpPool("smtp.gmail.com", 587, user, provider) as pool:
            results = await pool.send_many(messages)
            failed = [r for r in results if isinstance(r, Exception)]

    :meth:`send_many` returns one result per message, in the order given: its
    :class:`~mailoauth.SendResult` or the error it met (a
    :class:`~mailoauth.errors.CommandError` for a refusal, a
    :class:`~mailoauth.errors.ConfigurationError` for a message that could not be sent,
    a transport error, or the authentication or token error that kept a connection from
    opening). Each connection sends batches of up to ``window`` messages (see
    :meth:`SmtpClient.send_many <mailoauth.SmtpClient.send_many>`: pipelined when the
    server offers PIPELINING and CHUNKING); one that dies is opened again for its next
    batch. A connection is opened when first needed; ``async with`` (or
    :meth:`aclose`) closes them all. Raises
    :class:`~mailoauth.errors.ConfigurationError` for ``size`` outside 1 to
    :data:`MAX_POOL_SIZE` or ``window`` < 1, and
    :class:`~mailoauth.errors.UsageError` when used after :meth:`aclose`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        token: str | AccessToken | TokenProvider,
        security: SecurityOptions = SecurityOptions.AUTO,
        *,
        size: int = DEFAULT_POOL_SIZE,
        window: int = DEFAULT_WINDOW,
        local_hostname: str | None = None,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        if not 1 <= size <= MAX_POOL_SIZE:
            raise ConfigurationError(f"size must be from 1 to {MAX_POOL_SIZE}, not {size}")
        if window < 1:
            raise ConfigurationError(f"window must be at least 1, not {window}")
        self.size = size
        self.window = window
        #: The token manager every connection of the pool uses.
        self.tokens: TokenManager = wrap_provider(token)
        self._clients = [
            SmtpClient(
                host,
                port,
                username,
                self.tokens,
                security,
                local_hostname=local_hostname,
                **options,
            )
            for _ in range(size)
        ]
        self._closed = False
        # One send_many at a time: a client serves one task at a time.
        self._sending = asyncio.Lock()

    @property
    def clients(self) -> tuple[SmtpClient, ...]:
        """The pool's clients (open or not), for inspection."""
        return tuple(self._clients)

    async def send_many(self, messages: Iterable[Outgoing]) -> list[SendResult | MailOAuthError]:
        """Send every message; one result per message, in order (see the class).

        A message is an :class:`email.message.Message` (its envelope from its headers)
        or a ``(sender, recipients, data)`` tuple. At most ``size`` connections work at
        once, each on ``window`` messages at a time, so memory beyond the messages
        themselves stays bounded; concurrent calls run one after the other. Raises
        :class:`~mailoauth.errors.UsageError` after :meth:`aclose`; a cancellation
        closes the connections in the middle of a batch.
        """
        async with self._sending:
            if self._closed:
                raise UsageError("this SmtpPool is closed: make a new one")
            return await self._send_many(list(messages))

    async def _send_many(self, items: list[Outgoing]) -> list[SendResult | MailOAuthError]:
        results: list[SendResult | MailOAuthError | None] = [None] * len(items)
        next_index = 0
        # A connection that could not open stops taking messages; the last error is
        # the result of whatever no connection could take.
        failures: list[MailOAuthError] = []

        async def work(client: SmtpClient) -> None:
            nonlocal next_index
            while next_index < len(items):
                start = next_index
                end = next_index = min(start + self.window, len(items))
                if not client.connected:
                    try:
                        await client.connect()
                    except MailOAuthError as exc:
                        log.info("SMTP pool connection to %s failed: %s", client.host, exc)
                        results[start:end] = [exc] * (end - start)
                        failures.append(exc)
                        return
                results[start:end] = await client.send_many(items[start:end], window=self.window)

        needed = min(self.size, -(-len(items) // self.window))
        async with anyio.create_task_group() as group:
            for client in self._clients[:needed]:
                group.start_soon(work, client)
        if next_index < len(items):  # every connection failed to open
            for k in range(next_index, len(items)):
                results[k] = failures[-1]
        done: list[SendResult | MailOAuthError] = []
        for result in results:
            assert result is not None
            done.append(result)
        return done

    async def aclose(self) -> None:
        """Close every connection (QUIT where possible). Never raises for a dead one."""
        self._closed = True
        await asyncio.gather(*(client.aclose() for client in self._clients))

    async def __aenter__(self) -> SmtpPool:
        if self._closed:
            raise UsageError("this SmtpPool is closed: make a new one")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        client = self._clients[0]
        open_ = sum(c.connected for c in self._clients)
        return (
            f"<SmtpPool {client.username}@{client.host}:{client.port} "
            f"size={self.size} open={open_}>"
        )
