"""The one place mailoauth opens sockets: TCP, implicit TLS and STARTTLS.

Every client's bytes cross a :class:`Connection`. Owning the socket here means TLS
policy, STARTTLS, timeouts and buffers are decided once for SMTP, IMAP and POP3.

A connection is a plain-TCP asyncio protocol that does TLS itself, inline, with an
``ssl.SSLObject`` over two memory BIOs: bytes read from the socket are decrypted in
the same callback and handed on at once. That keeps memory down (asyncio's own TLS
transport holds a 256 KiB read buffer for every connection, most of what an idle IMAPS
session costs) and costs no extra task, event-loop iteration or system call per read.
The socket is read (``asyncio.BufferedProtocol``) into one buffer shared by all the
connections of a thread, not into a new 256 KiB ``bytes`` per read (whose allocation,
shrink and free are an mmap, mremap and munmap each): the bytes go from it into the TLS
memory BIO, or are copied out at their exact size for plaintext.
The plaintext goes either to an attached asyncio protocol (aiosmtplib's, aioimaplib's:
see :meth:`Connection.attach`), which may pause the socket's reading while its reader is
behind, or to a queue read with :meth:`Connection.receive` (the POP3 driver), which
pauses it above :data:`PAUSE_READING_AT`.

A clean close (:meth:`Connection.aclose`, an attached protocol's ``transport.close()``)
sends TLS close_notify; an abort (:meth:`Connection.close`, ``transport.abort()``) does
not; neither lets an unresponsive peer hold the socket past :data:`CLOSE_TIMEOUT`.

Foreign exceptions are mapped onto :mod:`mailoauth.errors` here, at the I/O boundary.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import re
import socket
import ssl
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import anyio

from mailoauth._core.dialer import Dialer, DialResult, resolve_dialer
from mailoauth._core.tls_sessions import SessionKey, session_cache_for
from mailoauth.errors import (
    ConnectionLostError,
    MailConnectionError,
    MailOAuthError,
    MailTimeoutError,
    TLSError,
)
from mailoauth.security import default_ssl_context

__all__ = [
    "CLOSE_TIMEOUT",
    "RECEIVE_CHUNK",
    "TLS_DETECT_WAIT",
    "Connection",
    "ProtocolTransport",
    "map_io_errors",
]

log = logging.getLogger("mailoauth.transport")

#: Most plaintext decrypted per ``SSLObject.read`` call; also the largest chunk
#: :meth:`Connection.receive` returns.
RECEIVE_CHUNK: Final = 65536
#: In :meth:`Connection.receive` mode, stop reading the socket while this much
#: plaintext waits unread, and resume below :data:`RESUME_READING_AT`: memory stays
#: bounded however fast the server sends.
PAUSE_READING_AT: Final = 256 * 1024
RESUME_READING_AT: Final = 64 * 1024
#: ``SecurityOptions.AUTO`` on a port not known for implicit TLS: seconds to wait for a
#: plaintext greeting before starting the TLS handshake (at most half the timeout). A
#: server that speaks TLS first sends nothing until the ClientHello; SMTP, IMAP and
#: POP3 servers that speak plaintext first greet at once. One that greets later still
#: works: it answers the ClientHello in plaintext and is dialled again for STARTTLS.
TLS_DETECT_WAIT: Final = 2.0
#: How many of the first bytes received during a TLS handshake are kept, to tell a
#: plaintext greeting (``220 ...``, ``* OK ...``, ``+OK ...``) from a TLS record.
PLAINTEXT_HEAD: Final = 80
#: A plaintext protocol line: printable ASCII, not a TLS record (whose first byte is a
#: content type from 0x14 to 0x17).
_PLAINTEXT_LINE: Final = re.compile(rb"[\x21-\x7e][\x20-\x7e]*(?:\r?\n|$)")
#: What to do when a server answers TLS in plaintext, unless the caller says otherwise.
PLAINTEXT_HINT: Final = "use SecurityOptions.SSL_EXPLICIT (STARTTLS) or AUTO"
#: Seconds a closed connection may take to hand its last bytes (a TLS close_notify
#: included) to a peer that has stopped reading; then the socket is aborted, so that no
#: close ever hangs on an unresponsive peer or keeps its socket open.
CLOSE_TIMEOUT: Final = 2.0
#: TLS 1.3 sends session tickets after the handshake, before the server's first
#: application data: the session to keep is looked for when application data arrives,
#: in this many reads at most, so that a server that issues no ticket costs nothing
#: later. (Each look copies the session: the ssl module re-encodes and re-parses it,
#: the server's certificate included.)
SESSION_LOOKS: Final = 2
#: Bytes asked of the socket per read (what asyncio's transports read at a time).
READ_SIZE: Final = 256 * 1024
#: Most bytes written into a TLS memory BIO at once. A BIO keeps the capacity of its
#: largest write (4/3 of it) for the life of the connection: a whole 256 KiB socket
#: read would leave 341 KiB behind in every connection that once received a big
#: response, a 10 MB message sent in one write 13 MB. A socket read is fed in slices
#: that end where a TLS record ends, each decrypted before the next (so no read is
#: tried on a partial record: each such try raises, ~5 us); a write is encrypted a
#: record's worth at a time. At least the largest record (2**14 + 256 + 5 bytes), so
#: that every slice holds a record's end.
FEED_SIZE: Final = 17 * 1024
#: Plaintext encrypted per ``SSLObject.write`` call: one full TLS record.
WRITE_SLICE: Final = 16 * 1024
_RECORD_HEADER: Final = 5  # type, version (2), length (2)


class _ReadBuffers(threading.local):
    """One read buffer per thread, for all the connections its event loop runs: a
    transport fills it (``get_buffer``) and hands it over (``buffer_updated``) in one
    synchronous step, so no two reads ever share it at once."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))


_read_buffers: Final = _ReadBuffers()


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
        raise TLSError(_certificate_text(exc, where)) from exc
    except ssl.SSLError as exc:
        raise TLSError(f"TLS failed while {what} {where}: {exc}") from exc
    except ConnectionError as exc:
        raise ConnectionLostError(_os_error_text(exc, what, host, port)) from exc
    except OSError as exc:
        raise MailConnectionError(_os_error_text(exc, what, host, port)) from exc


#: The fix for an unverified certificate, in the library's words (the command has its own).
PRIVATE_CA_FIX: Final = "if the server uses a private CA, pass ssl_context= trusting it"
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH: the chain is trusted, the name is not in it.
_HOSTNAME_MISMATCH: Final = 62


def _certificate_text(exc: ValueError, where: str) -> str:
    """Why the certificate failed: a name mismatch is named as one (a trusted
    certificate issued for other names, which no ssl_context= fixes)."""
    reason = getattr(exc, "verify_message", None) or str(exc)
    if getattr(exc, "verify_code", None) == _HOSTNAME_MISMATCH:
        return (
            f"the certificate of {where} is trusted but not issued for the host name "
            f"asked for ({reason}): connect with a name the certificate holds; trusting "
            f"another CA (ssl_context=, --cafile) does not fix a name mismatch"
        )
    return f"the certificate of {where} could not be verified ({reason}); {PRIVATE_CA_FIX}"


def _os_error_text(exc: OSError, what: str, host: str, port: int) -> str:
    """What went wrong, in words: refused, unreachable, an unknown name, or lost."""
    where = f"{host}:{port}"
    detail = str(exc.strerror or exc) if not exc.filename else str(exc)
    if what != "connecting to":
        return f"the connection to {where} was lost while {what} it: {detail}"
    if isinstance(exc, socket.gaierror):
        return (
            f"could not connect to {where}: the host name {host!r} does not resolve "
            f"({detail}); check its spelling and this machine's DNS"
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"{where} refused the connection (nothing listens on port {port} there, or a "
            f"firewall rejects it): check the host and port ({detail})"
        )
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return (
            f"could not connect to {where}: the network or host is unreachable from "
            f"here; check the host name and this machine's network or proxy ({detail})"
        )
    return f"could not connect to {where}: {detail}"


class Connection(asyncio.BufferedProtocol):
    """A connection to one server, plain or TLS, with a timeout on every wait.

    Use :meth:`open`; upgrade with :meth:`start_tls`. Read with :meth:`receive` or hand
    the connection to an asyncio protocol with :meth:`attach`. One task at a time.

    Slotted, and holding no buffer of its own once attached: 10,000 idle connections
    in one process each cost what OpenSSL and the attached protocol need, little more
    (``benchmarks/idle_memory.py``).
    """

    __slots__ = (
        "_abort_later",
        "_buffered",
        "_chunks",
        "_closed",
        "_deadline",
        "_drain_waiter",
        "_eof",
        "_error",
        "_gone",
        "_handshake_head",
        "_handshaking",
        "_incoming",
        "_loop",
        "_lost",
        "_outgoing",
        "_raw",
        "_raw_paused",
        "_read_buffer",
        "_reading_paused",
        "_record_head",
        "_record_left",
        "_route",
        "_session_key",
        "_session_looks",
        "_sink",
        "_sink_lost",
        "_sink_paused",
        "_ssl",
        "_ssl_context",
        "_timed_out",
        "_timer",
        "_tls_hostname",
        "_tls_resumption",
        "_waiter",
        "_write_paused",
        "bytes_received",
        "host",
        "on_progress",
        "plaintext_hint",
        "port",
        "timeout",
        "tls_detected",
        "tls_resumed",
    )

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        tls_hostname: str | None = None,
        tls_resumption: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._tls_hostname = tls_hostname or host
        #: Raw bytes received from the socket so far (TLS records included): what a
        #: minimum transfer rate is measured on.
        self.bytes_received = 0
        #: Called after every read from the socket while set (a reply deadline that
        #: grows with the bytes received: see ``BaseClient.reply_deadline``).
        self.on_progress: Callable[[], None] | None = None
        #: Whether ``AUTO`` found a server speaking TLS first on this connection.
        self.tls_detected = False
        #: Whether the TLS handshake resumed an earlier connection's session (an
        #: abbreviated handshake: see :mod:`mailoauth._core.tls_sessions`).
        self.tls_resumed = False
        self._tls_resumption = tls_resumption
        self._route = ""
        self._session_key: SessionKey | None = None
        self._session_looks = 0  # reads left in which to look for a TLS 1.3 ticket
        self.plaintext_hint = PLAINTEXT_HINT
        self._handshake_head = b""
        self._loop = asyncio.get_running_loop()
        self._read_buffer = _read_buffers.view  # this thread's, shared: see get_buffer()
        self._raw: asyncio.Transport | None = None
        self._ssl: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The TLS record framing of the bytes received since TLS started: how many bytes
        # of the current record are still to come, and a header split between reads.
        self._record_left = 0
        self._record_head = b""
        self._handshaking = False
        self._closed = False
        self._gone = False  # the socket is closed (connection_lost)
        self._lost: asyncio.Future[None] | None = None  # made when aclose() waits for it
        self._abort_later: asyncio.TimerHandle | None = None
        self._eof = False
        self._error: MailOAuthError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timed_out = False  # receive()'s timer fired
        self._deadline: float | None = None  # of the receive() under way
        self._timer: asyncio.TimerHandle | None = None  # see receive()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # receive() mode: plaintext waiting to be read
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        # attach() mode
        self._sink: asyncio.Protocol | None = None
        self._sink_lost = False
        #: The attached protocol asked to stop reading (its reader is behind).
        self._sink_paused = False
        #: Whether the socket's reading is paused, for either of the two reasons.
        self._raw_paused = False

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
        detect: bool = False,
        plaintext_hint: str = PLAINTEXT_HINT,
        dialer: Dialer | None = None,
        tls_resumption: bool = True,
    ) -> Connection:
        """Connect to ``host:port``, with TLS from the first byte if ``implicit_tls``.

        ``dialer`` opens the TCP connection (default: direct; see
        :mod:`mailoauth._core.dialer`); TLS, STARTTLS and the timeouts are done here
        over whatever socket it gives, and a TLS context or server name it names
        replaces ``ssl_context`` / ``host`` for the certificate check.

        With ``detect`` (``SecurityOptions.AUTO``) the server decides: when
        ``implicit_tls`` is false, no plaintext greeting within :data:`TLS_DETECT_WAIT`
        starts the TLS handshake (:attr:`tls_detected`); and a server that answers the
        handshake with a plaintext greeting is dialled again without TLS, for the
        caller's STARTTLS. Only a TLS ClientHello is ever sent before TLS is up.

        With ``tls_resumption`` the TLS handshakes (here and in :meth:`start_tls`)
        offer the session of an earlier connection with the same context, host, port,
        mode and route, and keep this one's for the next (:attr:`tls_resumed` says
        whether the server resumed).

        Raises :class:`MailTimeoutError`, :class:`MailConnectionError`, and
        :class:`TLSError` -- naming ``plaintext_hint`` when the server answered the
        handshake in plaintext (a STARTTLS port dialled with implicit TLS).
        """
        try:
            return await cls._open(
                host,
                port,
                implicit_tls,
                ssl_context,
                timeout,
                detect,
                plaintext_hint,
                dialer,
                tls_resumption,
            )
        except TLSError as exc:
            if not (detect and isinstance(exc.__cause__, _PlaintextAnswer)):
                raise
        log.info(
            "%s:%s answered the TLS handshake with a plaintext greeting; dialling again "
            "for STARTTLS",
            host,
            port,
        )
        return await cls._open(
            host, port, False, ssl_context, timeout, False, plaintext_hint, dialer, tls_resumption
        )

    @classmethod
    async def _open(
        cls,
        host: str,
        port: int,
        implicit_tls: bool,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        detect: bool,
        plaintext_hint: str,
        dialer: Dialer | None,
        tls_resumption: bool,
    ) -> Connection:
        conn = cls(
            host=host,
            port=port,
            ssl_context=ssl_context,
            timeout=timeout,
            tls_resumption=tls_resumption,
        )
        conn.plaintext_hint = plaintext_hint
        what = "connecting to"
        try:
            with anyio.fail_after(timeout):
                route = resolve_dialer(dialer)
                conn._route = sys.intern(repr(route))  # one copy for all its connections
                await conn._attach_socket(await route.connect(host, port, timeout=timeout))
                if detect and not implicit_tls:
                    wait = min(TLS_DETECT_WAIT, timeout / 2)
                    implicit_tls = conn.tls_detected = not await conn._greeted_within(wait)
                    what = (
                        f"waiting for an answer to the TLS handshake (AUTO started TLS: "
                        f"no plaintext greeting came within {wait:g}s) from"
                    )
                elif detect and conn._chunks:
                    implicit_tls = False  # greeted in plaintext before any TLS byte
                if implicit_tls:
                    await conn._handshake("implicit")
        except BaseException:
            conn.close()
            with map_io_errors(what, host, port):
                raise
        return conn

    async def _attach_socket(self, dialled: DialResult) -> None:
        """Run this protocol over the dialler's socket, with the TLS context and
        server name it asks for (a routed or proxied connection's)."""
        self._ssl_context = dialled.ssl_context or self._ssl_context
        self._tls_hostname = dialled.server_hostname or self.host
        try:
            await self._loop.create_connection(lambda: self, sock=dialled.sock)
        except BaseException:
            dialled.sock.close()
            raise

    async def _greeted_within(self, seconds: float) -> bool:
        """Whether the server sent anything (its plaintext greeting) within ``seconds``."""
        with anyio.move_on_after(seconds):
            while not self._chunks:
                await self._wait()
        return bool(self._chunks)

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
                await self._handshake("starttls")
        except BaseException:
            self.close()
            raise

    async def _handshake(self, mode: str = "implicit") -> None:
        if self._chunks:
            # Plaintext arrived before the first TLS byte was sent: a server that
            # greets in plaintext (start_tls() discards, so this is implicit TLS).
            self._handshake_head = self._chunks[0][:PLAINTEXT_HEAD]
            self._raise_if_plaintext()
        context = self._ssl_context or default_ssl_context()
        self._ssl_context = context
        session: ssl.SSLSession | None = None
        key: SessionKey | None = None
        if self._tls_resumption:
            key = (self.host.lower(), self.port, self._tls_hostname, mode, self._route)
            session = session_cache_for(context).get(key)
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=self._tls_hostname, session=session
        )
        self._handshaking = True
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_outgoing()
                try:
                    await self._wait()
                except ConnectionLostError:
                    self._raise_if_plaintext()
                    raise
            except ssl.SSLError:
                self._raise_if_plaintext()
                raise
        self._handshaking = False
        self._handshake_head = b""
        self.tls_resumed = self._ssl.session_reused
        if key is not None and session_cache_for(context).outcome(key, session, self.tls_resumed):
            self._session_key = key
            if self._ssl.version() == "TLSv1.3":
                self._session_looks = SESSION_LOOKS  # its tickets come after the handshake
            else:
                self._keep_session()
        self._flush_outgoing()
        self._decrypt()  # application data that came in with the handshake's end

    def _keep_session(self) -> bool:
        """Keep this connection's session for the next one with the same key, if it is
        one a server can resume (TLS 1.3: once its ticket has arrived)."""
        assert self._ssl is not None and self._ssl_context is not None
        key = self._session_key
        cache = session_cache_for(self._ssl_context)
        if key is None or not cache.wants(key):
            self._session_looks = 0  # another connection has kept one since
            return False
        session = self._ssl.session
        if session is None:
            return False
        if self._ssl.version() == "TLSv1.3" and not session.has_ticket:
            return False
        cache.put(key, session)
        self._session_looks = 0
        return True

    @property
    def plaintext_answer(self) -> bytes | None:
        """The plaintext line the server sent where a TLS handshake was expected, if
        it did (a STARTTLS or plaintext port dialled with implicit TLS)."""
        match = _PLAINTEXT_LINE.match(self._handshake_head)
        return match.group(0).rstrip(b"\r\n") if match else None

    def _raise_if_plaintext(self) -> None:
        answer = self.plaintext_answer
        if answer is None:
            return
        error = TLSError(
            f"{self.host}:{self.port} answered with a plaintext greeting "
            f"({answer.decode('ascii')[:60]!r}) where a TLS handshake was expected: that "
            f"port speaks STARTTLS or plaintext, not TLS from the first byte; "
            f"{self.plaintext_hint}"
        )
        raise error from _PlaintextAnswer(answer)  # the SSL error stays its __context__

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

    def get_buffer(self, sizehint: int) -> memoryview:
        """The thread's shared read buffer: it is only borrowed until
        :meth:`buffer_updated`, which takes the bytes out of it before returning."""
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the socket, possibly a view of the shared read buffer: written
        into the TLS memory BIO, or copied out as ``bytes`` for plaintext, never kept."""
        self.bytes_received += len(data)
        if self.on_progress is not None:
            self.on_progress()
        if self._ssl is None:
            self._deliver(bytes(data))
            return
        if len(data) > FEED_SIZE and not self._handshaking:
            parts = self._feed_records(data)
            if parts is not None:
                self._decrypt(parts)
            return
        self._frame(data)
        self._incoming.write(data)
        if self._handshaking:
            if len(self._handshake_head) < PLAINTEXT_HEAD:
                self._handshake_head += data[: PLAINTEXT_HEAD - len(self._handshake_head)]
            self._wake()
        else:
            self._decrypt()

    def _frame(self, data: bytes | memoryview, ends: list[int] | None = None) -> None:
        """Follow the TLS record framing over ``data``, the next bytes received in
        TLS; append to ``ends`` the offset just past each record that ends in it."""
        n = len(data)
        pos = self._record_left  # where the current record ends (the next header starts)
        if self._record_head:
            header = self._record_head + bytes(data[: _RECORD_HEADER - len(self._record_head)])
            if len(header) < _RECORD_HEADER:
                self._record_head = header
                return
            pos = _RECORD_HEADER - len(self._record_head) + (header[3] << 8 | header[4])
            self._record_head = b""
        while pos <= n:
            if pos and ends is not None:
                ends.append(pos)
            if pos + _RECORD_HEADER > n:  # the next header is not whole in data
                self._record_head = bytes(data[pos:])
                self._record_left = 0
                return
            pos += _RECORD_HEADER + (data[pos + 3] << 8 | data[pos + 4])
        self._record_left = pos - n

    def _feed_records(self, data: bytes | memoryview) -> list[bytes] | None:
        """Write a big read's whole records into the incoming BIO at most
        :data:`FEED_SIZE` bytes at a time, each slice decrypted before the next; the
        partial record left at the end is written too, for :meth:`_decrypt`. Returns
        the plaintext so far; None if TLS failed (the connection is closed)."""
        ends: list[int] = []
        self._frame(data, ends)
        parts: list[bytes] = []
        fed = 0
        i = 0
        while i < len(ends):
            # the last record end within FEED_SIZE (there is one: FEED_SIZE >= a record)
            while i + 1 < len(ends) and ends[i + 1] - fed <= FEED_SIZE:
                i += 1
            self._incoming.write(data[fed : ends[i]])
            fed = ends[i]
            i += 1
            if not self._read_into(parts):
                return None
            if self._eof:
                break
        if fed < len(data):
            self._incoming.write(data[fed:])
        return parts

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        if self._sink is not None:
            self._sink.eof_received()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._stop_timer()
        self._gone = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._abort_later is not None:
            self._abort_later.cancel()
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

    def _decrypt(self, parts: list[bytes] | None = None) -> None:
        """Decrypt what the incoming BIO holds and hand it on (after ``parts``, the
        plaintext of the same read decrypted already)."""
        if parts is None:
            parts = []
        if not self._read_into(parts):
            return
        if self._session_looks and parts:
            self._session_looks -= 1
            self._keep_session()
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

    def _read_into(self, parts: list[bytes]) -> bool:
        """Decrypt all the incoming BIO holds into ``parts``; False if TLS failed (the
        connection is closed then). Sets ``_eof`` at the peer's close_notify."""
        assert self._ssl is not None
        while True:
            try:
                chunk = self._ssl.read(RECEIVE_CHUNK)
            except ssl.SSLWantReadError:
                return True
            except ssl.SSLError as exc:
                if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
                    self._eof = True
                    return True
                self._fail(TLSError(f"TLS failed reading from {self.host}:{self.port}: {exc}"))
                return False
            if not chunk:
                self._eof = True
                return True
            parts.append(chunk)
            if not self._incoming.pending and not self._ssl.pending():
                return True  # all read: skip the read that would only raise SSLWantReadError

    def _deliver(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.data_received(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        if self._buffered > PAUSE_READING_AT and not self._reading_paused:
            self._reading_paused = True
            self._update_reading()

    def _update_reading(self) -> None:
        """Pause the socket's reading while the receive() queue is over its watermark or
        the attached protocol asked (:meth:`ProtocolTransport.pause_reading`); resume
        when neither holds. Bytes then wait in the kernel, and TCP slows the sender."""
        paused = self._reading_paused or self._sink_paused
        raw = self._raw
        if paused == self._raw_paused or raw is None or raw.is_closing():
            return
        self._raw_paused = paused
        if paused:
            raw.pause_reading()
        else:
            raw.resume_reading()

    def pause_reading(self) -> None:
        """For the attached protocol: stop reading the socket until :meth:`resume_reading`."""
        self._sink_paused = True
        self._update_reading()

    def resume_reading(self) -> None:
        """For the attached protocol: read the socket again."""
        self._sink_paused = False
        self._update_reading()

    @property
    def reading(self) -> bool:
        """Whether bytes are being read from the socket (not paused, not closed)."""
        return not self._closed and not self._raw_paused

    def _flush_outgoing(self) -> None:
        if self._outgoing.pending and self._raw is not None and not self._closed:
            self._raw.write(self._outgoing.read())

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _check_open(self) -> None:
        """Raise if no more bytes can come: the error that ended the connection, or
        :class:`ConnectionLostError` at the end of the stream."""
        if self._error is not None:
            raise self._error
        if self._eof or self._closed:
            raise ConnectionLostError(f"{self.host}:{self.port} closed the connection")

    async def _wait(self) -> None:
        """Wait for more bytes (or the end); raises if the connection is gone."""
        self._check_open()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _time_out(self) -> None:
        timer, self._timer = self._timer, None
        deadline = self._deadline
        if deadline is None:
            return  # no wait under way
        if timer is not None and timer.when() < deadline:
            self._timer = self._loop.call_at(deadline, self._time_out)  # an earlier wait's
            return
        self._timed_out = True
        self._wake()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

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
            if len(data) > WRITE_SLICE:
                self._write_slices(data)
                return
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                self._fail(TLSError(f"TLS failed writing to {self.host}:{self.port}: {exc}"))
                return
            self._flush_outgoing()
        else:
            self._raw.write(data)

    def _write_slices(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` a record at a time, taking each out of the outgoing BIO
        before the next (see :data:`FEED_SIZE`); the records go to the socket in one
        call."""
        assert self._ssl is not None and self._raw is not None
        view = memoryview(data)
        records = []
        try:
            for start in range(0, len(view), WRITE_SLICE):
                self._ssl.write(view[start : start + WRITE_SLICE])
                records.append(self._outgoing.read())
        except ssl.SSLError as exc:
            self._fail(TLSError(f"TLS failed writing to {self.host}:{self.port}: {exc}"))
            return
        self._raw.writelines(records)

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
        self,
        max_bytes: int = RECEIVE_CHUNK,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> bytes:
        """At least one byte, at most ``max_bytes`` (whole chunks as they were read,
        joined up to that size: fewer awaits when the reader is behind), waiting at
        most ``timeout`` seconds (default: the connection's), or until the event loop's
        :meth:`~asyncio.AbstractEventLoop.time` reaches ``deadline`` if given. Raises
        :class:`ConnectionLostError` at the end of the stream, and
        :class:`MailTimeoutError` (closing the connection) when nothing comes."""
        if not self._chunks:
            # The wait of every POP3 reply and every RETR, so it costs no timer of its
            # own: one loop timer serves the waits that follow each other, re-armed only
            # when a wait must end before it fires; one that fires before the current
            # wait's deadline re-arms itself for it (_time_out).
            loop = self._loop
            if deadline is None:
                deadline = loop.time() + (self.timeout if timeout is None else timeout)
            self._deadline = deadline
            self._timed_out = False
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._time_out)
            try:
                while not self._chunks:
                    if self._timed_out:
                        raise TimeoutError
                    self._check_open()
                    waiter = self._waiter = loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._waiter = None
            except BaseException:
                self.close()
                with map_io_errors("reading from", self.host, self.port):
                    raise
            finally:
                self._deadline = None
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
        if self._reading_paused and self._buffered < RESUME_READING_AT:
            self._reading_paused = False
            self._update_reading()
        return data

    # -- attach() mode ----------------------------------------------------------------

    def attach(self, protocol: asyncio.Protocol) -> ProtocolTransport:
        """Hand every byte from now on (and any already received) to ``protocol``,
        whose output goes back through the returned transport."""
        transport = ProtocolTransport(self, protocol)
        self._stop_timer()  # receive() is over for this connection
        self._sink = protocol
        protocol.connection_made(transport)
        while self._chunks:
            self._buffered -= len(self._chunks[0])
            protocol.data_received(self._chunks.popleft())
        self._chunks = _NO_CHUNKS  # everything goes to the protocol now: no queue held
        if self._reading_paused:  # the queue is the protocol's now: it decides
            self._reading_paused = False
            self._update_reading()
        if self._closed:
            self._report_lost(None)
        return transport

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Abort: close without a TLS close_notify (after an error or a timeout, or when
        the peer must not take the session as cleanly ended). Bytes already written
        still go out, for at most :data:`CLOSE_TIMEOUT` seconds."""
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()
            if not self._gone:
                self._abort_later = self._loop.call_later(CLOSE_TIMEOUT, self._raw.abort)
        self._stop_timer()
        if not self._closed:
            self._closed = True
            self._wake()

    def shutdown(self) -> None:
        """Close cleanly without waiting: over TLS, send close_notify first (RFC 8446
        §6.1), so that the peer can tell the end of the session from a truncation; then
        as :meth:`close`. The peer's close_notify is not awaited (the protocol's own
        goodbye, QUIT or LOGOUT, has been answered already). A connection that failed
        (a TLS or protocol error) is closed without it."""
        if self._ssl is not None and self.tls_active and not self._closed and self._error is None:
            raw = self._raw
            try:
                self._ssl.unwrap()
            except ssl.SSLWantReadError:
                pass  # ours is written; the peer's has not come: not waited for
            except (ssl.SSLError, ValueError) as exc:
                log.debug("no TLS close_notify to %s:%s: %r", self.host, self.port, exc)
            if raw is not None and not raw.is_closing() and self._outgoing.pending:
                raw.write(self._outgoing.read())
        self.close()

    async def aclose(self) -> None:
        """:meth:`shutdown`, then wait until the socket is closed: at most
        :data:`CLOSE_TIMEOUT` seconds, after which it is aborted. Never raises for a
        dead connection."""
        self.shutdown()
        if self._raw is None or self._gone:
            return
        if self._lost is None:
            self._lost = self._loop.create_future()
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await asyncio.shield(self._lost)
        if not self._gone:
            self._raw.abort()

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


#: The receive() queue of an attached connection, which never queues (its bytes go to
#: the protocol): one shared empty deque instead of one per connection (~760 bytes).
_NO_CHUNKS: Final[collections.deque[bytes]] = collections.deque(maxlen=0)


#: A ProtocolTransport's ``_extra``, which nothing reads: not a dict per connection.
_NO_EXTRA: Final = types.MappingProxyType[str, Any]({})


class _PlaintextAnswer(Exception):
    """The ``__cause__`` of the :class:`TLSError` for a plaintext answer to a TLS
    handshake; lets :meth:`Connection.open` fall back to STARTTLS under ``AUTO``."""


class ProtocolTransport(asyncio.Transport):
    """The transport an attached protocol (aiosmtplib's, aioimaplib's) writes to.

    They parse and format; the socket, TLS and STARTTLS stay the connection's.
    """

    __slots__ = ("_protocol", "connection")

    def __init__(self, connection: Connection, protocol: asyncio.Protocol) -> None:
        super().__init__(_NO_EXTRA)  # get_extra_info() asks the connection
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
        """Close cleanly: TLS close_notify, then the socket (see ``Connection.shutdown``)."""
        self.connection.shutdown()

    def abort(self) -> None:
        """Close without close_notify (see ``Connection.close``)."""
        self.connection.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.connection.extra(name, default)

    def is_reading(self) -> bool:
        return self.connection.reading

    def pause_reading(self) -> None:
        """Stop reading the socket: the protocol's reader is behind (read
        back-pressure; ``ImapProtocol`` asks while IDLE lines wait unread)."""
        self.connection.pause_reading()

    def resume_reading(self) -> None:
        self.connection.resume_reading()

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
