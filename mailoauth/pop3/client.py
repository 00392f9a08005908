"""Pop3Client: the async driver of the sans-IO :class:`~mailoauth.pop3.protocol.Pop3Protocol`.

The protocol object parses; this module owns nothing but a loop that moves bytes
between it and a core :class:`~mailoauth._core.connection.Connection`.

No message is ever lost: deletions (:meth:`Pop3Client.delete`) take effect only when
the session ends with QUIT, and QUIT is sent only by a clean :meth:`Pop3Client.aclose`.
A client leaving ``async with`` on an exception, cancelled, or after any protocol or
network error closes the connection *without* QUIT, so the server keeps every message.

Deadlines (the rule of :mod:`mailoauth._core.client_base`): every reply -- the
greeting, a status line, the wait for a listing or a message -- has ``timeout`` seconds
as a whole, however the server splits it into reads; a listing or a message body may
take ``timeout`` plus one second per ``min_rate`` bytes. Time the caller spends between
the chunks of :meth:`Pop3Client.iter_message` (or the messages of
:meth:`Pop3Client.retrieve_many`) is not counted against the server.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from email.parser import BytesParser
from types import TracebackType
from typing import TYPE_CHECKING, Final

import anyio

from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth._core.client_base import BaseClient
from mailoauth._core.connection import Connection
from mailoauth._core.settings import ConnectionOptions
from mailoauth.errors import (
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    LimitExceededError,
    MailOAuthError,
    MailTimeoutError,
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

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "MailboxStat", "Pop3Client"]

log = logging.getLogger("mailoauth.pop3")

#: With PIPELINING, how many commands may be outstanding at once. Bounded so that
#: neither side can deadlock on full socket buffers (1,024 RETR lines are about
#: 12 KiB, far below what the kernel buffers hold), and large enough that the server
#: never waits for the next command while the client parses: with 64, 2,000 small
#: messages from Dovecot took 1.6x as long as with all commands sent at once; with 256,
#: 1.3x; with 1,024, 1.05x (benchmarks/pop3.py).
PIPELINE_WINDOW: Final = 1024
#: Default ``max_message_size``: the largest message :meth:`Pop3Client.retrieve` and
#: :meth:`Pop3Client.retrieve_many` hold in memory, in octets. Above the largest
#: message size an Exchange Online administrator can configure, 150 MB
#: (https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits);
#: :meth:`Pop3Client.iter_message` streams a message of any size in bounded memory.
DEFAULT_MAX_MESSAGE_SIZE: Final = 200 * 1024 * 1024

_parser = BytesParser(policy=email.policy.default)
# What a timeout says was awaited, by command (not formatted per message).
_REPLY_TO: Final = {"RETR": "the reply to RETR", "TOP": "the reply to TOP"}


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

    ``timeout`` bounds each reply as a whole, ``min_rate`` (bytes/s) a long listing or
    message, ``connect_timeout`` all of :meth:`connect` (see the module docstring).
    ``max_message_size`` bounds what :meth:`retrieve` and :meth:`retrieve_many` hold in
    memory (:class:`~mailoauth.errors.LimitExceededError` above it);
    :meth:`iter_message` and :meth:`retrieve_to_file` stream any size.
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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        settings = self._settings_from(host, port, security, options)
        super().__init__(settings, username, token)
        if isinstance(max_message_size, bool) or not (
            isinstance(max_message_size, int) and max_message_size > 0
        ):
            raise ConfigurationError(
                f"max_message_size must be a positive int (octets), not {max_message_size!r}"
            )
        self.max_message_size = max_message_size
        self._conn: Connection | None = None
        self._proto = Pop3Protocol()
        self._caps: Capabilities | None = None
        self._broken = False
        # Message sizes from LIST in this session, checked before a RETR.
        self._sizes: dict[int, int] = {}
        # The reply being awaited: when it began, what it is, and, once its data flows,
        # how many bytes of it have been received (None before).
        self._reply_start = 0.0
        self._awaiting = "the greeting"
        self._streamed: int | None = None
        # The event loop of the session (asyncio.get_running_loop() is a getpid()
        # system call on every use: it is cached for the per-message path).
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the I/O loop -----------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        conn = self._live()
        await self._io(conn.send(data))

    def _begin_reply(self, what: str) -> None:
        """A new reply is awaited: it has ``timeout`` seconds as a whole."""
        self._reply_start = self._loop_time()
        self._awaiting = what
        self._streamed = None

    def _begin_data(self) -> None:
        """The reply's data follows: from now on it may take longer, at ``min_rate``."""
        self._streamed = 0

    def _loop_time(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def _reply_deadline(self) -> float:
        """The loop time by which the awaited reply (or its next bytes) must come."""
        if self._streamed is None:
            return self._reply_start + self.timeout
        return self.transfer_deadline(self._reply_start, self._streamed)

    async def _next_event(self) -> Event:
        conn = self._live()
        proto = self._proto
        while True:
            try:
                event = proto.next_event()
            except MailOAuthError:  # the server broke the protocol: the session is over
                self._broken = True
                raise
            if event is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    self._broken = True
                    raise ConnectionLostError(f"{self.host}:{self.port} closed the connection")
                return event
            await self._receive_more(conn)

    async def _receive_more(self, conn: Connection) -> None:
        """Wait for more of the awaited reply (within its deadline) and hand it to the
        protocol; the end of the stream is handed on as ``b""``, for the protocol to
        say what it cut short."""
        try:
            data = await conn.receive(deadline=self._reply_deadline())
        except BaseException as exc:
            data = self._receive_failed(exc)
        self._received(data)

    def _receive_failed(self, exc: BaseException) -> bytes:
        """After ``receive()`` raised ``exc``: the session is over. ``b""`` (the end of
        the stream, for the protocol to say what it cut short) for a lost connection;
        else raises (a timeout as one naming the reply awaited)."""
        self._broken = True
        if isinstance(exc, ConnectionLostError):
            return b""
        if isinstance(exc, MailTimeoutError):
            raise self._timeout_error() from exc
        raise exc

    def _received(self, data: bytes) -> None:
        if self._streamed is not None:
            self._streamed += len(data)
        try:
            self._proto.receive_data(data)
        except MailOAuthError:
            self._broken = True
            raise

    def _timeout_error(self) -> MailTimeoutError:
        where = f"{self.host}:{self.port}"
        if self._streamed is None:
            return MailTimeoutError(
                f"timed out waiting for {self._awaiting} from {where} (timeout="
                f"{self.timeout:g}s for the whole reply); the connection was closed "
                f"without QUIT, so nothing was deleted"
            )
        elapsed = self._loop_time() - self._reply_start
        return MailTimeoutError(
            f"{where} sent {self._awaiting} too slowly ({self._streamed} bytes in "
            f"{elapsed:.1f}s: under min_rate={self.min_rate:g} bytes/s after "
            f"timeout={self.timeout:g}s); the connection was closed without QUIT, so "
            f"nothing was deleted. On a link that slow, pass a smaller min_rate="
        )

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
        self._require_opened()
        if self._conn is None or self._conn.closed:
            raise ConnectionLostError(
                f"the POP3 session with {self.host}:{self.port} is closed (connecting failed, "
                f"or the connection was lost; nothing was deleted); call connect() for a new "
                f"session"
            )
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
        self._begin_reply(f"the reply to {build.__name__.upper()}")
        event = await self._next_event()
        if not isinstance(event, Reply):
            self._broken = True
            raise ProtocolError(f"expected a status reply from {self.host}, got {event!r}")
        if not event.ok:
            raise CommandError(
                f"{self.host}:{self.port} refused {event.command}: -ERR {event.text}",
                command=event.command,
                reply=f"-ERR {event.text}",
                response_code=event.code,
                host=self.host,
                port=self.port,
            )
        return event

    async def _data(self, build: Callable[..., bytes], *args: int) -> Event:
        await self._reply(build, *args)
        self._begin_data()
        return await self._next_event()

    # -- connecting -------------------------------------------------------------------

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._proto = Pop3Protocol()
        self._broken = False
        self._sizes = {}
        self._conn = await self._dial()
        try:
            self._begin_reply("the greeting")
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
        mechanism = choose_mechanism(
            self._caps.sasl_mechanisms, self.mechanism, "pop3", host=self.host, port=self.port
        )

        async def exchange(mech: Mechanism) -> SaslOutcome:
            await self._send(self._proto.auth(mech))
            self._begin_reply("the reply to AUTH")
            challenge = None
            while isinstance(event := await self._next_event(), AuthChallenge):
                challenge = event.challenge or challenge
                await self._send(self._proto.auth_continue())
                self._begin_reply("the reply to AUTH")
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
            self._opened = False
            await self._abort()  # no QUIT: the server keeps every message

    async def _close(self) -> None:
        """QUIT (applying deletions) if the session is sound, then close."""
        if self._conn is None:
            return
        if not self._broken and not self._conn.closed:
            try:
                with anyio.fail_after(self.timeout):
                    await self._reply(self._proto.quit)
            except BaseException:
                await self._abort()
                raise
            await self._abort(clean=True)
            return
        await self._abort()

    async def abort(self) -> None:
        """Close without QUIT: the server discards this session's deletions. Commands
        after this raise :class:`~mailoauth.errors.UsageError` until :meth:`connect`."""
        self._opened = False
        await self._abort()

    async def _abort(self, *, clean: bool = False) -> None:
        """Drop the connection: after QUIT's answer (``clean``) with a TLS close_notify,
        else without one."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if clean:
            await conn.aclose()
        else:
            conn.close()

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
        """LIST: message number -> size in octets. The sizes are remembered for the
        session: :meth:`retrieve` and :meth:`retrieve_many` then refuse a message over
        ``max_message_size`` before asking for it."""
        event = await self._data(self._proto.list)
        assert isinstance(event, Listing)
        self._sizes = dict(event.entries)
        return dict(event.entries)

    async def uidl(self) -> dict[int, str]:
        """UIDL: message number -> unique id (stable across sessions)."""
        event = await self._data(self._proto.uidl)
        assert isinstance(event, UidListing)
        return dict(event.entries)

    async def _body_chunks(self) -> AsyncIterator[bytes]:
        self._begin_data()
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
                handed = self._loop_time()
                yield chunk
                self._reply_start += self._loop_time() - handed  # the caller's time
            finished = True
        finally:
            if not finished:
                self._broken = True
                await self._abort()

    async def retrieve(self, number: int) -> bytes:
        """RETR: the message's bytes exactly as stored (dot-unstuffed).

        Raises :class:`~mailoauth.errors.LimitExceededError` for a message larger than
        ``max_message_size``: before asking for it when :meth:`list` gave its size,
        else as soon as that many bytes have come (the session is then closed without
        QUIT). Stream such a message with :meth:`iter_message` instead.
        """
        if self._sizes:
            self._check_size(number)
        conn = self._live()
        command = self._proto.retr(number)
        try:
            await conn.send(command)
        except BaseException:
            self._broken = True
            raise
        return await self._bounded_message(conn, number, "RETR")

    async def _bounded_message(self, conn: Connection, number: int, verb: str) -> bytes:
        """The reply to a RETR or TOP just sent: the message, within
        ``max_message_size``. A small one is taken whole once it is buffered
        (:meth:`Pop3Protocol.next_message`: one step, not three events); a longer one
        is read chunk by chunk, events already parsed straight from the protocol."""
        proto = self._proto
        next_message = proto.next_message
        start = self._reply_start = self._loop_time()
        deadline = start + self.timeout
        self._awaiting = _REPLY_TO[verb]
        self._streamed = None
        try:  # the protocol raises for a server that breaks it: the session is over
            # Nothing buffered (the usual case, one RETR at a time): wait at once.
            event = next_message() if proto.buffered_bytes else NEED_DATA
            while event is NEED_DATA:
                try:
                    data = await conn.receive(deadline=deadline)
                except BaseException as exc:
                    data = self._receive_failed(exc)
                if self._streamed is None:
                    self._streamed = 0  # under way: what follows may take longer, at min_rate
                else:
                    self._streamed += len(data)
                    deadline = self.transfer_deadline(start, self._streamed)
                proto.receive_data(data)
                event = next_message()
        except MailOAuthError:
            self._broken = True
            raise
        if type(event) is bytes:
            if len(event) > self.max_message_size:
                await self._too_large(number, len(event))
            return event
        if type(event) is not Reply:
            self._broken = True
            raise ProtocolError(f"expected a status reply from {self.host}, got {event!r}")
        if not event.ok:
            raise CommandError(
                f"{self.host}:{self.port} refused {event.command} {number}: -ERR {event.text}",
                command=event.command,
                reply=f"-ERR {event.text}",
                response_code=event.code,
                host=self.host,
                port=self.port,
            )
        return await self._streamed_message(conn, number)

    async def _streamed_message(self, conn: Connection, number: int) -> bytes:
        """The data of a message whose ``+OK`` was read, joined, within
        ``max_message_size`` (checked as it comes)."""
        next_buffered = self._proto.next_event
        if self._streamed is None:
            self._streamed = 0
        chunks = []
        size = 0
        limit = self.max_message_size
        while True:
            try:
                event = next_buffered()
                while event is NEED_DATA:
                    await self._receive_more(conn)
                    event = next_buffered()
            except MailOAuthError:
                self._broken = True
                raise
            if type(event) is MessageData:
                size += len(event.data)
                if size > limit:
                    await self._too_large(number, size)
                chunks.append(event.data)
            elif type(event) is MessageEnd:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            else:
                self._broken = True
                raise ProtocolError(f"unexpected {event!r} inside a message from {self.host}")

    def _check_size(self, number: int) -> None:
        size = self._sizes.get(number)
        if size is not None and size > self.max_message_size:
            raise self._too_large_error(number, f"LIST gives {size} octets", closed=False)

    def _too_large_error(self, number: int, what: str, *, closed: bool) -> LimitExceededError:
        state = (
            "the session was closed without QUIT, so nothing was deleted"
            if closed
            else "it was not retrieved; the session goes on"
        )
        return LimitExceededError(
            f"message {number} on {self.host}:{self.port} is larger than max_message_size "
            f"({self.max_message_size} octets; {what}): {state}. Stream it with "
            f"iter_message() or retrieve_to_file(), which hold one chunk at a time, or "
            f"pass a larger max_message_size="
        )

    async def _too_large(self, number: int, received: int) -> None:
        self._broken = True
        await self._abort()
        raise self._too_large_error(number, f"{received} octets came", closed=True)

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
        after the messages before it were yielded, and a message over
        ``max_message_size`` raises :class:`~mailoauth.errors.LimitExceededError` as
        :meth:`retrieve` does (before asking for it when :meth:`list` gave its size)."""
        todo = list(numbers)
        refused: int | None = None
        for index, number in enumerate(todo):
            if self._sizes.get(number, 0) > self.max_message_size:
                refused, todo = number, todo[:index]
                break
        window = PIPELINE_WINDOW if self._caps and "PIPELINING" in self._caps else 1
        conn = self._live()
        sent = 0
        for done, number in enumerate(todo):
            # Keep between window/2 and window commands in flight.
            if sent < len(todo) and sent - done <= window // 2:
                batch = todo[sent : done + window]
                await self._send(self._proto.retr_many(batch))
                sent += len(batch)
            try:
                message = await self._bounded_message(conn, number, "RETR")
            except CommandError:
                self._broken = sent > done + 1  # replies still in flight: session unusable
                raise
            yield number, message
        if refused is not None:
            raise self._too_large_error(
                refused, f"LIST gives {self._sizes[refused]} octets", closed=False
            )

    async def top(self, number: int, lines: int = 0) -> bytes:
        """TOP: the header and the first ``lines`` lines of the body. Bounded by
        ``max_message_size`` like :meth:`retrieve` (checked while reading)."""
        conn = self._live()
        await self._io(conn.send(self._proto.top(number, lines)))
        return await self._bounded_message(conn, number, "TOP")

    async def delete(self, number: int) -> None:
        """DELE: mark for deletion. Applied only at a clean QUIT (:meth:`aclose`)."""
        await self._reply(self._proto.dele, number)

    async def reset(self) -> None:
        """RSET: unmark every message marked for deletion in this session."""
        await self._reply(self._proto.rset)

    async def noop(self) -> None:
        """NOOP: keep the session alive."""
        await self._reply(self._proto.noop)
