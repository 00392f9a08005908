"""Pop3Client: the async driver of the sans-IO :class:`~mailoauth.pop3.protocol.Pop3Protocol`.

The protocol object parses; this module owns nothing but a loop that moves bytes
between it and a core :class:`~mailoauth._core.connection.Connection`.

No message is ever lost: deletions (:meth:`Pop3Client.delete`) take effect only when
the session ends with QUIT, and QUIT is sent only by a clean :meth:`Pop3Client.aclose`.
A client leaving ``async with`` on an exception, cancelled, or after any protocol or
network error closes the connection *without* QUIT, so the server keeps every message.
"""

from __future__ import annotations

import email.message
import email.policy
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from email.parser import BytesParser
from types import TracebackType
from typing import Final

import anyio

from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth._core.client_base import DEFAULT_TIMEOUT, BaseClient
from mailoauth._core.connection import Connection
from mailoauth.errors import (
    CommandError,
    ConnectionLostError,
    MailOAuthError,
    ProtocolError,
    TLSError,
)
from mailoauth.pop3.protocol import (
    NEED_DATA,
    AuthChallenge,
    Capabilities,
    ConnectionClosed,
    Event,
    Greeting,
    Listing,
    MessageData,
    MessageEnd,
    Pop3Protocol,
    Reply,
    Stat,
    UidListing,
)
from mailoauth.sasl import Mechanism
from mailoauth.security import SecurityOptions
from mailoauth.tokens.access_token import AccessToken, TokenProvider

__all__ = ["MailboxStat", "Pop3Client"]

log = logging.getLogger("mailoauth.pop3")

#: With PIPELINING, how many commands may be outstanding at once. Bounded so that
#: neither side can deadlock on full socket buffers (1,024 RETR lines are about
#: 12 KiB, far below what the kernel buffers hold), and large enough that the server
#: never waits for the next command while the client parses: with 64, 2,000 small
#: messages from Dovecot took 1.6x as long as with all commands sent at once; with 256,
#: 1.3x; with 1,024, 1.05x (benchmarks/pop3.py).
PIPELINE_WINDOW: Final = 1024

_parser = BytesParser(policy=email.policy.default)


@dataclass(frozen=True)
class MailboxStat:
    """STAT: how many messages the maildrop holds and their total size in octets."""

    count: int
    size: int


class Pop3Client(BaseClient):
    """Read (and delete) mail over POP3, authenticated with a bearer token.

    ``token`` is an access token string, an :class:`~mailoauth.AccessToken` or a
    :class:`~mailoauth.TokenProvider`. Use ``async with``; a clean exit sends QUIT,
    which is when the server applies deletions. Errors:
    :class:`~mailoauth.errors.CommandError` (``-ERR``),
    :class:`~mailoauth.errors.AuthenticationError`, :class:`~mailoauth.errors.TLSError`,
    :class:`~mailoauth.errors.MailTimeoutError`,
    :class:`~mailoauth.errors.ConnectionLostError`,
    :class:`~mailoauth.errors.ProtocolError`. One task at a time per client.
    """

    protocol_name = "pop3"

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
        super().__init__(
            host,
            port,
            username,
            token,
            security,
            ssl_context=ssl_context,
            timeout=timeout,
            mechanism=mechanism,
            allow_insecure_auth=allow_insecure_auth,
        )
        self._conn: Connection | None = None
        self._proto = Pop3Protocol()
        self._caps: Capabilities | None = None
        self._broken = False

    # -- the I/O loop -----------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        conn = self._live()
        await self._io(conn.send(data))

    async def _next_event(self) -> Event:
        conn = self._live()
        while True:
            event = self._proto.next_event()
            if event is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    self._broken = True
                    raise ConnectionLostError(f"{self.host}:{self.port} closed the connection")
                return event
            try:
                data = await self._io(conn.receive())
            except ConnectionLostError:
                data = b""  # let the protocol say what was cut short
            self._guarded(self._proto.receive_data, data)

    async def _io(self, awaitable: object) -> bytes:
        try:
            return await awaitable  # type: ignore[misc, no-any-return]
        except BaseException:
            self._broken = True
            raise

    def _guarded(self, func: object, *args: object) -> None:
        try:
            func(*args)  # type: ignore[operator]
        except MailOAuthError:
            self._broken = True
            raise

    def _live(self) -> Connection:
        if self._conn is None or self._conn.closed:
            raise ConnectionLostError("Pop3Client is not connected; call connect() first")
        if self._broken:
            raise ConnectionLostError(
                "this POP3 session was abandoned after an error (without QUIT, so nothing "
                "was deleted); open a new Pop3Client"
            )
        return self._conn

    async def _reply(self, build: Callable[..., bytes], *args: int) -> Reply:
        """Send the command ``build(*args)`` makes and read its status reply."""
        self._live()  # a dead session says so before the protocol objects to the state
        await self._send(build(*args))
        event = await self._next_event()
        if not isinstance(event, Reply):
            self._broken = True
            raise ProtocolError(f"expected a status reply from {self.host}, got {event!r}")
        if not event.ok:
            raise CommandError(
                f"{self.host}:{self.port} refused {event.command}: -ERR {event.text}",
                command=event.command,
                reply=f"-ERR {event.text}",
            )
        return event

    async def _data(self, build: Callable[..., bytes], *args: int) -> Event:
        await self._reply(build, *args)
        return await self._next_event()

    # -- connecting -------------------------------------------------------------------

    async def _open(self) -> None:
        self._proto = Pop3Protocol()
        self._broken = False
        self._conn = await Connection.open(
            self.host,
            self.port,
            implicit_tls=self.plan.implicit_tls,
            ssl_context=self.ssl_context,
            timeout=self.timeout,
        )
        try:
            greeting = await self._next_event()
            if not isinstance(greeting, Greeting) or not greeting.ok:
                raise ProtocolError(f"{self.host}:{self.port} refused the session: {greeting}")
            await self._read_capabilities()
            if self.plan.starttls:
                await self._starttls()
            await self._authenticate()
            await self._read_capabilities()
        except BaseException:
            await self._abort()
            raise

    async def _read_capabilities(self) -> None:
        try:
            event = await self._data(self._proto.capa)
        except CommandError:
            self._caps = Capabilities({})
            return
        assert isinstance(event, Capabilities)
        self._caps = event

    async def _starttls(self) -> None:
        assert self._caps is not None and self._conn is not None
        if "STLS" not in self._caps:
            raise TLSError(
                f"{self.host}:{self.port} does not offer STLS, and STARTTLS is required "
                f"({self.security.name}); the connection was closed. If the server uses "
                f"implicit TLS, use port 995 or SSL_IMPLICIT"
            )
        try:
            await self._reply(self._proto.stls)
        except CommandError as exc:
            raise TLSError(f"{self.host}:{self.port} refused STLS: {exc.reply}") from exc
        injected = self._proto.start_tls()
        if injected:
            log.warning(
                "%s:%s sent %d bytes between STLS and the TLS handshake; discarded them",
                self.host,
                self.port,
                len(injected),
            )
        await self._conn.start_tls()
        # RFC 2595 §4: forget what was learnt before TLS; ask again over TLS.
        self._caps = None
        await self._read_capabilities()

    async def _authenticate(self) -> None:
        assert self._caps is not None
        mechanism = choose_mechanism(self._caps.sasl_mechanisms, self.mechanism, "pop3")

        async def exchange(mech: Mechanism) -> SaslOutcome:
            await self._send(self._proto.auth(mech))
            challenge = None
            while isinstance(event := await self._next_event(), AuthChallenge):
                challenge = event.challenge or challenge
                await self._send(self._proto.auth_continue())
            if not isinstance(event, Reply):
                raise ProtocolError(f"unexpected {event!r} during AUTH from {self.host}")
            reply = ("+OK " if event.ok else "-ERR ") + event.text
            temporary = bool(event.code and event.code.upper().startswith(("SYS/TEMP", "IN-USE")))
            return SaslOutcome(event.ok, reply, challenge, temporary)

        await authenticate(
            tokens=self.tokens,
            username=self.username,
            host=self.host,
            port=self.port,
            protocol="pop3",
            mechanism=mechanism,
            exchange=exchange,
        )
        self.mechanism_used = mechanism

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            await self._abort()  # no QUIT: the server keeps every message

    async def _close(self) -> None:
        """QUIT (applying deletions) if the session is sound, then close."""
        if self._conn is None:
            return
        if not self._broken and not self._conn.closed:
            try:
                with anyio.fail_after(self.timeout):
                    await self._reply(self._proto.quit)
            finally:
                await self._abort()
            return
        await self._abort()

    async def abort(self) -> None:
        """Close without QUIT: the server discards this session's deletions."""
        await self._abort()

    async def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    # -- commands ---------------------------------------------------------------------

    async def capabilities(self) -> dict[str, tuple[str, ...]]:
        """CAPA as read after authentication: capability name -> arguments."""
        self._live()
        return dict(self._caps.capabilities) if self._caps else {}

    async def stat(self) -> MailboxStat:
        """STAT: message count and total size."""
        event = await self._data(self._proto.stat)
        assert isinstance(event, Stat)
        return MailboxStat(event.count, event.size)

    async def list(self) -> dict[int, int]:
        """LIST: message number -> size in octets."""
        event = await self._data(self._proto.list)
        assert isinstance(event, Listing)
        return dict(event.entries)

    async def uidl(self) -> dict[int, str]:
        """UIDL: message number -> unique id (stable across sessions)."""
        event = await self._data(self._proto.uidl)
        assert isinstance(event, UidListing)
        return dict(event.entries)

    async def _body_chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event()
            if isinstance(event, MessageData):
                yield event.data
            elif isinstance(event, MessageEnd):
                return
            else:
                self._broken = True
                raise ProtocolError(f"unexpected {event!r} inside a message from {self.host}")

    async def iter_message(self, number: int) -> AsyncIterator[bytes]:
        """RETR as a stream of chunks: memory stays bounded by the chunk size however
        large the message. Leaving the loop early abandons the session (no QUIT)."""
        await self._reply(self._proto.retr, number)
        finished = False
        try:
            async for chunk in self._body_chunks():
                yield chunk
            finished = True
        finally:
            if not finished:
                self._broken = True
                await self._abort()

    async def retrieve(self, number: int) -> bytes:
        """RETR: the message's bytes exactly as stored (dot-unstuffed)."""
        await self._reply(self._proto.retr, number)
        return b"".join([chunk async for chunk in self._body_chunks()])

    async def retrieve_message(self, number: int) -> email.message.EmailMessage:
        """RETR, parsed as an :class:`email.message.EmailMessage`."""
        message = _parser.parsebytes(await self.retrieve(number))
        assert isinstance(message, email.message.EmailMessage)
        return message

    async def retrieve_to_file(self, number: int, path: str | os.PathLike[str]) -> int:
        """RETR streamed into the file at ``path``; returns the bytes written."""
        written = 0
        async with await anyio.open_file(path, "wb") as out:
            async for chunk in self.iter_message(number):
                await out.write(chunk)
                written += len(chunk)
        return written

    async def retrieve_many(self, numbers: Iterable[int]) -> AsyncIterator[tuple[int, bytes]]:
        """RETR each message, pipelined when the server offers PIPELINING (RFC 2449), so
        a mailbox of many small messages is not paid for in round trips. Yields
        ``(number, bytes)`` in the order given; a ``-ERR`` raises :class:`CommandError`
        after the messages before it were yielded."""
        todo = list(numbers)
        window = PIPELINE_WINDOW if self._caps and "PIPELINING" in self._caps else 1
        next_buffered = self._proto.next_event
        sent = 0
        for done, number in enumerate(todo):
            # Keep between window/2 and window commands in flight.
            if sent < len(todo) and sent - done <= window // 2:
                batch = todo[sent : done + window]
                await self._send(self._proto.retr_many(batch))
                sent += len(batch)
            # Events already buffered come straight from the protocol; only when it
            # needs data does the loop await _next_event(). Per small message, the
            # wrappers would cost as much as the parsing.
            try:
                event = next_buffered()
                if event is NEED_DATA or type(event) is ConnectionClosed:
                    event = await self._next_event()
                if type(event) is Reply and event.ok:
                    chunks = []
                    while True:
                        event = next_buffered()
                        if event is NEED_DATA or type(event) is ConnectionClosed:
                            event = await self._next_event()
                        if type(event) is not MessageData:
                            break
                        chunks.append(event.data)
            except MailOAuthError:  # the server broke the protocol: session unusable
                self._broken = True
                raise
            if type(event) is Reply:  # -ERR
                self._broken = sent > done + 1  # replies still in flight: session unusable
                raise CommandError(
                    f"{self.host}:{self.port} refused RETR {number}: -ERR {event.text}",
                    command="RETR",
                    reply=f"-ERR {event.text}",
                )
            if type(event) is not MessageEnd:
                self._broken = True
                raise ProtocolError(f"unexpected {event!r} inside a message from {self.host}")
            yield number, b"".join(chunks)

    async def top(self, number: int, lines: int = 0) -> bytes:
        """TOP: the header and the first ``lines`` lines of the body."""
        await self._reply(self._proto.top, number, lines)
        return b"".join([chunk async for chunk in self._body_chunks()])

    async def delete(self, number: int) -> None:
        """DELE: mark for deletion. Applied only at a clean QUIT (:meth:`aclose`)."""
        await self._reply(self._proto.dele, number)

    async def reset(self) -> None:
        """RSET: unmark every message marked for deletion in this session."""
        await self._reply(self._proto.rset)

    async def noop(self) -> None:
        """NOOP: keep the session alive."""
        await self._reply(self._proto.noop)
