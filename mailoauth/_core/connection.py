"""The one place mailoauth opens sockets: TCP, implicit TLS and STARTTLS.

Every client's bytes cross a :class:`Connection`. Owning the socket here means TLS
policy, STARTTLS, timeouts and buffers are decided once for SMTP, IMAP and POP3.

A connection is a plain-TCP asyncio protocol that does TLS itself, inline, with an
``ssl.SSLObject`` over two memory BIOs: bytes read from the socket are decrypted in
the same callback and handed on at once. That keeps memory down (asyncio's own TLS
transport holds a 256 KiB read buffer for every connection, most of what an idle IMAPS
session costs) and costs no extra task, event-loop iteration or system call per read.
The plaintext goes either to an attached asyncio protocol (aiosmtplib's, aioimaplib's:
see :meth:`Connection.attach`) or to a queue read with :meth:`Connection.receive`
(the POP3 driver).

Foreign exceptions are mapped onto :mod:`mailoauth.errors` here, at the I/O boundary.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import anyio

from mailoauth._core.routing import route_address
from mailoauth.errors import (
    ConnectionLostError,
    MailConnectionError,
    MailOAuthError,
    MailTimeoutError,
    TLSError,
)
from mailoauth.security import create_ssl_context

__all__ = ["RECEIVE_CHUNK", "Connection", "ProtocolTransport", "map_io_errors"]

log = logging.getLogger("mailoauth.transport")

#: Most plaintext decrypted per ``SSLObject.read`` call; also the largest chunk
#: :meth:`Connection.receive` returns.
RECEIVE_CHUNK: Final = 65536
#: In :meth:`Connection.receive` mode, stop reading the socket while this much
#: plaintext waits unread, and resume below :data:`RESUME_READING_AT`: memory stays
#: bounded however fast the server sends.
PAUSE_READING_AT: Final = 256 * 1024
RESUME_READING_AT: Final = 64 * 1024


@contextmanager
def map_io_errors(what: str, host: str, port: int) -> Iterator[None]:
    """Translate OS/SSL/timeout exceptions raised while doing ``what`` into mailoauth's."""
    where = f"{host}:{port}"
    try:
        yield
    except MailOAuthError:
        raise
    except TimeoutError as exc:
        raise MailTimeoutError(f"timed out {what} {where}; the connection was closed") from exc
    except (ssl.SSLCertVerificationError, ssl.CertificateError) as exc:
        raise TLSError(
            f"certificate of {where} could not be verified ({exc}); if the server uses a "
            f"private CA, pass ssl_context= trusting it"
        ) from exc
    except ssl.SSLError as exc:
        raise TLSError(f"TLS failed while {what} {where}: {exc}") from exc
    except ConnectionError as exc:
        raise ConnectionLostError(f"connection to {where} lost while {what}: {exc}") from exc
    except OSError as exc:
        raise MailConnectionError(f"could not reach {where} while {what}: {exc}") from exc


class Connection(asyncio.Protocol):
    """A connection to one server, plain or TLS, with a timeout on every wait.

    Use :meth:`open`; upgrade with :meth:`start_tls`. Read with :meth:`receive` or hand
    the connection to an asyncio protocol with :meth:`attach`. One task at a time.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        tls_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._tls_hostname = tls_hostname or host
        self._loop = asyncio.get_running_loop()
        self._raw: asyncio.Transport | None = None
        self._ssl: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._handshaking = False
        self._closed = False
        self._eof = False
        self._error: MailOAuthError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # receive() mode: plaintext waiting to be read
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        # attach() mode
        self._sink: asyncio.Protocol | None = None
        self._sink_lost = False

    # -- opening and TLS --------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        implicit_tls: bool,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> Connection:
        """Connect to ``host:port``, with TLS from the first byte if ``implicit_tls``.

        Raises :class:`MailTimeoutError`, :class:`TLSError` or
        :class:`MailConnectionError`.
        """
        target_host, target_port = host, port
        route = route_address(host, port)  # set only by mailoauth.testing
        if route is not None:
            target_host, target_port = route.host, route.port
            ssl_context = route.ssl_context or ssl_context
        conn = cls(
            host=host,
            port=port,
            ssl_context=ssl_context,
            timeout=timeout,
            tls_hostname=target_host,
        )
        try:
            with map_io_errors("connecting to", host, port), anyio.fail_after(timeout):
                await conn._loop.create_connection(lambda: conn, target_host, target_port)
                if implicit_tls:
                    await conn._handshake()
        except BaseException:
            conn.close()
            raise
        return conn

    async def start_tls(self) -> None:
        """Upgrade to TLS (after the server's go-ahead to STARTTLS). Plaintext received
        but not yet read is discarded: a compliant server sends nothing between its
        go-ahead and the handshake, so such bytes can only be injected (RFC 3207 §4.2).

        Raises :class:`TLSError` if the handshake or certificate check fails, and
        :class:`MailTimeoutError`; the connection is closed then.
        """
        if self._chunks:
            log.warning(
                "%s:%s sent %d bytes before the TLS handshake; discarded them",
                self.host,
                self.port,
                self._buffered,
            )
            self._chunks.clear()
            self._buffered = 0
        try:
            with (
                map_io_errors("starting TLS with", self.host, self.port),
                anyio.fail_after(self.timeout),
            ):
                await self._handshake()
        except BaseException:
            self.close()
            raise

    async def _handshake(self) -> None:
        context = self._ssl_context or create_ssl_context()
        self._ssl_context = context
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=self._tls_hostname
        )
        self._handshaking = True
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_outgoing()
                await self._wait()
        self._handshaking = False
        self._flush_outgoing()
        self._decrypt()  # application data that came in with the handshake's end

    @property
    def tls_active(self) -> bool:
        return self._ssl is not None and not self._handshaking

    @property
    def closed(self) -> bool:
        return self._closed

    # -- asyncio.Protocol: the socket side -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport

    def data_received(self, data: bytes) -> None:
        if self._ssl is None:
            self._deliver(data)
            return
        self._incoming.write(data)
        if self._handshaking:
            self._wake()
        else:
            self._decrypt()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        if self._sink is not None:
            self._sink.eof_received()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if exc is not None and self._error is None:
            self._error = ConnectionLostError(f"connection to {self.host}:{self.port} lost: {exc}")
        self._eof = True
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._report_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._sink is not None:
            self._sink.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self._sink is not None:
            self._sink.resume_writing()

    # -- decrypting and delivering ----------------------------------------------------

    def _decrypt(self) -> None:
        assert self._ssl is not None
        parts = []
        while True:
            try:
                chunk = self._ssl.read(RECEIVE_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
                    self._eof = True
                    break
                self._fail(TLSError(f"TLS failed reading from {self.host}:{self.port}: {exc}"))
                return
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            if not self._incoming.pending and not self._ssl.pending():
                break  # all read: skip the read that would only raise SSLWantReadError
        self._flush_outgoing()  # e.g. a TLS 1.3 KeyUpdate answer
        if parts:
            if self._sink is not None:
                # One call per socket read: parsers rescan partial lines on every call.
                self._sink.data_received(parts[0] if len(parts) == 1 else b"".join(parts))
            else:
                for part in parts:  # queued as read: no copy, and each at most a chunk
                    self._deliver(part)
        if self._eof:
            self._wake()

    def _deliver(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.data_received(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        if self._buffered > PAUSE_READING_AT and not self._reading_paused and self._raw:
            self._reading_paused = True
            self._raw.pause_reading()

    def _flush_outgoing(self) -> None:
        if self._outgoing.pending and self._raw is not None and not self._closed:
            self._raw.write(self._outgoing.read())

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        """Wait for more bytes (or the end); raises if the connection is gone."""
        if self._error is not None:
            raise self._error
        if self._eof or self._closed:
            raise ConnectionLostError(f"{self.host}:{self.port} closed the connection")
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _fail(self, error: MailOAuthError) -> None:
        if self._error is None:
            self._error = error
        self.close()

    def _report_lost(self, exc: Exception | None) -> None:
        if self._sink is not None and not self._sink_lost:
            self._sink_lost = True
            self._sink.connection_lost(self._error if exc is None else exc)

    # -- writing ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (encrypted when TLS is on) without waiting."""
        if self._closed or self._raw is None:
            return
        if self._ssl is not None:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                self._fail(TLSError(f"TLS failed writing to {self.host}:{self.port}: {exc}"))
                return
            self._flush_outgoing()
        else:
            self._raw.write(data)

    async def send(self, data: bytes) -> None:
        """Write all of ``data``, waiting (with the timeout) while the socket's buffer
        is full. Raises :class:`ConnectionLostError` or :class:`MailTimeoutError`."""
        if self._closed:
            raise self._error or ConnectionLostError(
                f"connection to {self.host}:{self.port} is closed"
            )
        self.write(data)
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                with (
                    map_io_errors("writing to", self.host, self.port),
                    anyio.fail_after(self.timeout),
                ):
                    await self._drain_waiter
            except BaseException:
                self.close()
                raise
            finally:
                self._drain_waiter = None
        if self._closed and self._error is not None:
            raise self._error

    # -- reading (receive() mode) -----------------------------------------------------

    async def receive(
        self, max_bytes: int = RECEIVE_CHUNK, *, timeout: float | None = None
    ) -> bytes:
        """At least one byte, at most ``max_bytes`` (whole chunks as they were read,
        joined up to that size: fewer awaits when the reader is behind). Raises
        :class:`ConnectionLostError` at the end of the stream, and
        :class:`MailTimeoutError` (closing the connection) when nothing comes."""
        if not self._chunks:
            try:
                with (
                    map_io_errors("reading from", self.host, self.port),
                    anyio.fail_after(self.timeout if timeout is None else timeout),
                ):
                    while not self._chunks:
                        await self._wait()
            except BaseException:
                self.close()
                raise
        chunks = self._chunks
        data = chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        elif chunks and len(data) + len(chunks[0]) <= max_bytes:
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= max_bytes:
                size += len(chunks[0])
                parts.append(chunks.popleft())
            data = b"".join(parts)
        self._buffered -= len(data)
        if self._reading_paused and self._buffered < RESUME_READING_AT and self._raw:
            self._reading_paused = False
            self._raw.resume_reading()
        return data

    # -- attach() mode ----------------------------------------------------------------

    def attach(self, protocol: asyncio.Protocol) -> ProtocolTransport:
        """Hand every byte from now on (and any already received) to ``protocol``,
        whose output goes back through the returned transport."""
        transport = ProtocolTransport(self, protocol)
        self._sink = protocol
        protocol.connection_made(transport)
        while self._chunks:
            self._buffered -= len(self._chunks[0])
            protocol.data_received(self._chunks.popleft())
        if self._closed:
            self._report_lost(None)
        return transport

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Close at once, without waiting for the peer (no TLS close_notify)."""
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()
        if not self._closed:
            self._closed = True
            self._wake()

    async def aclose(self) -> None:
        """:meth:`close`, for ``await`` sites."""
        self.close()

    def extra(self, name: str, default: Any = None) -> Any:
        """``get_extra_info`` of an asyncio transport, TLS included."""
        if name == "sslcontext":
            return self._ssl_context if self.tls_active else default
        if name in ("ssl_object", "sslobject"):
            return self._ssl if self.tls_active else default
        if self.tls_active and self._ssl is not None:
            if name == "peercert":
                return self._ssl.getpeercert()
            if name == "cipher":
                return self._ssl.cipher()
            if name == "version":
                return self._ssl.version()
        if self._raw is not None and name in ("peername", "sockname", "socket"):
            return self._raw.get_extra_info(name, default)
        return default

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("tls" if self.tls_active else "plain")
        return f"<Connection {self.host}:{self.port} {state}>"


class ProtocolTransport(asyncio.Transport):
    """The transport an attached protocol (aiosmtplib's, aioimaplib's) writes to.

    They parse and format; the socket, TLS and STARTTLS stay the connection's.
    """

    def __init__(self, connection: Connection, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.connection = connection
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.connection.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.connection.write(data)

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self.connection.closed

    def close(self) -> None:
        self.connection.close()

    def abort(self) -> None:
        self.connection.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.connection.extra(name, default)

    def is_reading(self) -> bool:
        return not self.connection.closed

    def pause_reading(self) -> None:  # the protocols never ask
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        raw = self.connection._raw
        return raw.get_write_buffer_size() if raw is not None else 0

    async def start_tls(self, discard_buffered: Callable[[], None]) -> None:
        """Upgrade to TLS once the protocol has read the server's go-ahead.

        ``discard_buffered`` must drop whatever the protocol buffered: a compliant
        server sends nothing between its go-ahead and the handshake (RFC 3207 §4.2), so
        such bytes can only be injected. Raises :class:`~mailoauth.errors.TLSError`.
        """
        discard_buffered()
        await self.connection.start_tls()
