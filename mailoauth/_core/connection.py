"""The one place mailoauth opens sockets: TCP, implicit TLS and STARTTLS over anyio.

Every client's bytes cross a :class:`Connection`. Owning the socket here means TLS
policy, STARTTLS, timeouts and buffers are decided once for SMTP, IMAP and POP3. It
also keeps memory down: anyio's ``TLSStream`` has no per-connection read buffer, where
asyncio's own TLS transport allocates 256 KiB for every connection.

Foreign exceptions are mapped onto :mod:`mailoauth.errors` here, at the I/O boundary.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from mailoauth._core.routing import route_address
from mailoauth.errors import (
    ConnectionLostError,
    MailConnectionError,
    MailTimeoutError,
    TLSError,
)
from mailoauth.security import create_ssl_context

__all__ = ["RECEIVE_CHUNK", "Connection", "map_io_errors"]

#: Bytes asked of the socket per read; also the POP3 streaming chunk size.
RECEIVE_CHUNK = 65536


@contextmanager
def map_io_errors(what: str, host: str, port: int) -> Iterator[None]:
    """Translate anyio/OS/SSL exceptions raised while doing ``what`` into mailoauth's."""
    where = f"{host}:{port}"
    try:
        yield
    except TimeoutError as exc:
        raise MailTimeoutError(f"timed out {what} {where}; the connection was closed") from exc
    except (ssl.SSLCertVerificationError, ssl.CertificateError) as exc:
        raise TLSError(
            f"certificate of {where} could not be verified ({exc}); if the server uses a "
            f"private CA, pass ssl_context= trusting it"
        ) from exc
    except ssl.SSLError as exc:
        raise TLSError(f"TLS failed while {what} {where}: {exc}") from exc
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionLostError(f"{where} closed the connection while {what}") from exc
    except ConnectionError as exc:
        if isinstance(exc, MailConnectionError):
            raise
        raise ConnectionLostError(f"connection to {where} lost while {what}: {exc}") from exc
    except OSError as exc:
        raise MailConnectionError(f"could not reach {where} while {what}: {exc}") from exc


class Connection:
    """A byte stream to one server, plain or TLS, with a timeout on every wait.

    Use :meth:`open`; upgrade with :meth:`start_tls`. Not safe for concurrent use by
    several tasks: one task at a time.
    """

    #: The stream whose ``SSLObject`` :meth:`take_buffered` last looked up, and that
    #: object (``None`` for a plain stream); replaced when ``stream`` changes.
    _tls_cache: tuple[object, ssl.SSLObject | None] = (None, None)

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        self.stream = stream
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._tls_hostname = host
        self._closed = False

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
        context = ssl_context
        target_host, target_port = host, port
        route = route_address(host, port)  # set only by mailoauth.testing
        if route is not None:
            target_host, target_port = route.host, route.port
            context = route.ssl_context or context
        with map_io_errors("connecting to", host, port), anyio.fail_after(timeout):
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(target_host, target_port)
            if implicit_tls:
                context = context or create_ssl_context()
                try:
                    stream = await TLSStream.wrap(
                        stream,
                        hostname=target_host,
                        ssl_context=context,
                        standard_compatible=False,
                    )
                except BaseException:
                    await anyio.aclose_forcefully(stream)
                    raise
        conn = cls(stream, host=host, port=port, ssl_context=context, timeout=timeout)
        conn._tls_hostname = target_host
        return conn

    @property
    def tls_active(self) -> bool:
        return self.stream.extra(TLSAttribute.ssl_object, None) is not None

    @property
    def closed(self) -> bool:
        return self._closed

    async def start_tls(self) -> None:
        """Upgrade the plain stream to TLS (after the server's go-ahead to STARTTLS).

        Raises :class:`TLSError` if the handshake or certificate check fails; the
        connection is closed then.
        """
        context = self._ssl_context or create_ssl_context()
        self._ssl_context = context
        try:
            with (
                map_io_errors("starting TLS with", self.host, self.port),
                anyio.fail_after(self.timeout),
            ):
                self.stream = await TLSStream.wrap(
                    self.stream,
                    hostname=self._tls_hostname,
                    ssl_context=context,
                    standard_compatible=False,
                )
        except BaseException:
            await self.aclose()
            raise

    async def receive(
        self, max_bytes: int = RECEIVE_CHUNK, *, timeout: float | None = None
    ) -> bytes:
        """Read at least one byte; raises :class:`ConnectionLostError` at end of stream
        and :class:`MailTimeoutError` (closing the connection) when nothing comes."""
        try:
            with (
                map_io_errors("reading from", self.host, self.port),
                anyio.fail_after(self.timeout if timeout is None else timeout),
            ):
                data = await self.stream.receive(max_bytes)
        except BaseException:
            await self.aclose()
            raise
        if len(data) < max_bytes:
            more = self.take_buffered(max_bytes - len(data))
            if more:
                data += more
        return data

    def take_buffered(self, max_bytes: int = RECEIVE_CHUNK) -> bytes:
        """Up to ``max_bytes`` of plaintext that can be had without waiting: the rest
        of the TLS records already read from the socket (``b""`` if none, or plain).

        anyio's ``TLSStream.receive`` returns one TLS record at a time; a server that
        writes small records (Dovecot: about 4 KiB) would cost one await, one timeout
        scope and one parser pass per record. Reading on from the ``SSLObject`` what
        its buffer already holds batches them. Anything that is not data (an alert,
        close_notify, a record still incomplete) is left for the next ``receive``,
        which reports it through the stream as usual; so is a reply OpenSSL may queue
        (TLS 1.3 KeyUpdate), which the stream flushes on its next call.
        """
        stream = self.stream
        cached, ssl_object = self._tls_cache
        if cached is not stream:
            ssl_object = stream.extra(TLSAttribute.ssl_object, None)
            self._tls_cache = (stream, ssl_object)
        if ssl_object is None or self._closed:
            return b""
        parts = []
        size = 0
        while size < max_bytes:
            try:
                chunk = ssl_object.read(max_bytes - size)
            except ssl.SSLError:  # SSLWantReadError: nothing more buffered
                break
            if not chunk:  # close_notify: the next receive() ends the stream
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    async def send(self, data: bytes) -> None:
        """Write all of ``data``; same errors as :meth:`receive`."""
        try:
            with map_io_errors("writing to", self.host, self.port), anyio.fail_after(self.timeout):
                await self.stream.send(data)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close at once, without waiting for the peer."""
        if not self._closed:
            self._closed = True
            await anyio.aclose_forcefully(self.stream)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("tls" if self.tls_active else "plain")
        return f"<Connection {self.host}:{self.port} {state}>"
