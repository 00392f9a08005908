"""An :class:`asyncio.Transport` over a core :class:`Connection`.

aiosmtplib and aioimaplib are written as asyncio protocols: they parse what
``data_received`` hands them and format into ``transport.write``. This adapter lets
them do exactly that over the core's anyio stream, so they never open a socket of
their own. One reader task feeds the protocol; one writer task drains writes in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute

from mailoauth._core.connection import RECEIVE_CHUNK, Connection
from mailoauth.errors import ConnectionLostError

__all__ = ["StreamTransport"]

log = logging.getLogger("mailoauth.transport")


class StreamTransport(asyncio.Transport):
    """Feeds ``protocol`` from ``connection`` and writes its output back.

    :meth:`start_tls` upgrades the stream between two reads (STARTTLS, STLS).
    """

    def __init__(self, connection: Connection, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._conn = connection
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._pending = bytearray()
        self._want_write = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._lost_reported = False
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        protocol.connection_made(self)
        self._start_tasks()

    # -- asyncio.Transport API used by the protocols ----------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._pending += data
        self._drained.clear()
        self._want_write.set()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
        self._loop.create_task(self._conn.aclose())
        self._report_lost(None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        stream = self._conn.stream
        if name == "sslcontext":
            return self._conn._ssl_context if self._conn.tls_active else default
        if name in ("ssl_object", "sslobject"):
            return stream.extra(TLSAttribute.ssl_object, default)
        if name == "peercert":
            return stream.extra(TLSAttribute.peer_certificate, default)
        if name == "cipher":
            return stream.extra(TLSAttribute.cipher, default)
        if name == "peername":
            return stream.extra(SocketAttribute.remote_address, default)
        if name == "sockname":
            return stream.extra(SocketAttribute.local_address, default)
        if name == "socket":
            return stream.extra(SocketAttribute.raw_socket, default)
        return default

    def is_reading(self) -> bool:
        return self._reader is not None and not self._reader.done()

    def pause_reading(self) -> None:  # the protocols never ask; kept for completeness
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    # -- STARTTLS ---------------------------------------------------------------------

    async def pause_for_tls(self) -> None:
        """Flush writes, then stop reading so the handshake owns the stream."""
        await self.drain()
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
        tasks = [t for t in (self._reader, self._writer) if t is not None]
        # gather() swallows the tasks' CancelledError but not our own cancellation.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def start_tls(self, discard_buffered: Callable[[], None]) -> None:
        """Upgrade to TLS once the caller has read the server's go-ahead.

        ``discard_buffered`` is called after reading stops and before the handshake: it
        must drop whatever the protocol buffered, since a compliant server sends nothing
        between its go-ahead and the handshake (RFC 3207 §4.2): such bytes can only be
        injected. Raises :class:`~mailoauth.errors.TLSError` when the handshake fails.
        """
        await self.pause_for_tls()
        discard_buffered()
        await self._conn.start_tls()
        self._start_tasks()

    async def drain(self) -> None:
        """Wait until every written byte has been handed to the stream."""
        if self._closing:
            raise ConnectionLostError(
                f"connection to {self._conn.host}:{self._conn.port} is closed"
            )
        with anyio.fail_after(self._conn.timeout):
            await self._drained.wait()

    # -- the two tasks ----------------------------------------------------------------

    def _start_tasks(self) -> None:
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())

    async def _read_loop(self) -> None:
        stream = self._conn.stream
        try:
            while True:
                data = await stream.receive(RECEIVE_CHUNK)
                self._protocol.data_received(data)
        except anyio.EndOfStream:
            self._protocol.eof_received()
            self._fail(None)
        except (anyio.ClosedResourceError, asyncio.CancelledError):
            raise
        except Exception as exc:  # connection reset, TLS alert: the protocol must know
            log.debug("read from %s:%s failed: %r", self._conn.host, self._conn.port, exc)
            self._fail(exc)

    async def _write_loop(self) -> None:
        stream = self._conn.stream
        try:
            while True:
                await self._want_write.wait()
                self._want_write.clear()
                while self._pending:
                    data = bytes(self._pending)
                    del self._pending[:]
                    await stream.send(data)
                self._drained.set()
        except (anyio.ClosedResourceError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.debug("write to %s:%s failed: %r", self._conn.host, self._conn.port, exc)
            self._fail(exc)

    def _fail(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        task = asyncio.current_task()
        for other in (self._reader, self._writer):
            if other is not None and other is not task:
                other.cancel()
        self._drained.set()
        self._loop.create_task(self._conn.aclose())
        self._report_lost(exc)

    def _report_lost(self, exc: Exception | None) -> None:
        if not self._lost_reported:
            self._lost_reported = True
            self._protocol.connection_lost(exc)
