"""A fault-injecting TCP proxy, and a scripted misbehaving server, for tests.

:class:`FaultProxy` listens on ``127.0.0.1`` (port 0) in front of a real server and
forwards bytes both ways. Each accepted connection follows the next :class:`Fault`
given to :meth:`FaultProxy.script` (pass-through when none is queued):

- reset (RST, via ``SO_LINGER`` 0) after N bytes from the server, or when a pattern is
  seen from the server (optionally after N more bytes) or from the client;
- stall: stop forwarding when a pattern is seen, keeping both sockets open;
- inject bytes towards the client right after a server pattern (a fake response
  slipped in after a STARTTLS go-ahead, before the handshake);
- strip STARTTLS/STLS from what the server advertises (a downgrading man in the
  middle).

Every byte the client sent is kept (:attr:`ProxiedConnection.client_bytes`), so a test
can assert that a secret never crossed the wire in plaintext.

:class:`ScriptedServer` is a tiny server that sends a greeting and answers each line
with whatever a function returns: fixed bytes, or a stream of chunks -- endless
(:func:`endless`), or dripped a byte at a time to hold a connection (:func:`drip`).
Both run on the caller's event loop: ``async with FaultProxy(host, port) as proxy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

__all__ = [
    "Fault",
    "FaultProxy",
    "ProxiedConnection",
    "ScriptedServer",
    "drip",
    "endless",
    "garbage",
    "lines",
]

_CHUNK: Final = 65536
#: Lines that advertise STARTTLS: SMTP ``250-STARTTLS``, POP3 ``STLS`` in CAPA.
_STARTTLS_LINE: Final = re.compile(rb"^(?:250[ -])?(?:STARTTLS|STLS)\r\n", re.IGNORECASE)
#: The IMAP capability atom inside a CAPABILITY line or a greeting's response code.
_STARTTLS_ATOM: Final = re.compile(rb" STARTTLS(?=[ \]\r])", re.IGNORECASE)


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one connection. The default forwards everything.

    ``reset_after_server_bytes``: forward that many server bytes, then reset both sides.
    ``reset_on_server``: when the server sends this, forward it and ``extra_bytes`` more,
    then reset. ``reset_on_client``: when the client sends this, reset without
    forwarding it. ``stall_on_server`` / ``stall_on_client``: from that point on forward
    nothing more in either direction, but keep both connections open.
    ``inject_after_server``: ``(pattern, data)``; after forwarding the server bytes that
    contain ``pattern``, send ``data`` to the client as if the server had.
    ``strip_starttls``: remove STARTTLS/STLS from the server's capability lists.
    """

    reset_after_server_bytes: int | None = None
    reset_on_server: bytes | None = None
    extra_bytes: int = 0
    reset_on_client: bytes | None = None
    stall_on_server: bytes | None = None
    stall_on_client: bytes | None = None
    inject_after_server: tuple[bytes, bytes] | None = None
    strip_starttls: bool = False


@dataclass
class ProxiedConnection:
    """One connection through the proxy: what crossed it and what was done to it."""

    fault: Fault
    client_bytes: bytearray = field(default_factory=bytearray)
    server_bytes: bytearray = field(default_factory=bytearray)
    was_reset: bool = False
    stalled: bool = False
    injected: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Reset(Exception):
    pass


class FaultProxy:
    """A TCP proxy to ``upstream_host:upstream_port`` that injects :class:`Fault` s.

    Use ``async with``; :attr:`port` is where clients connect. :attr:`connections`
    records every connection in order.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.connections: list[ProxiedConnection] = []
        self._plans: deque[Fault] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not running; use 'async with'")
        return int(self._server.sockets[0].getsockname()[1])

    def script(self, *faults: Fault) -> None:
        """Queue faults for the next connections, one each, in order."""
        self._plans.extend(faults)

    @property
    def client_bytes(self) -> bytes:
        """Everything every client sent through the proxy."""
        return b"".join(bytes(c.client_bytes) for c in self.connections)

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = ProxiedConnection(self._plans.popleft() if self._plans else Fault())
        self.connections.append(record)
        self._writers.add(c_writer)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.transport.abort()
            record.closed.set()
            return
        self._writers.add(s_writer)
        stall = asyncio.Event()
        pumps = [
            asyncio.ensure_future(self._server_to_client(record, s_reader, c_writer, stall)),
            asyncio.ensure_future(self._client_to_server(record, c_reader, s_writer, stall)),
        ]
        try:
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # aclose(): asyncio's server would log it
                c_writer.transport.abort()
                s_writer.transport.abort()
                return
            if any(isinstance(t.exception(), _Reset) for t in done if not t.cancelled()):
                record.was_reset = True
                _rst(c_writer)
                _rst(s_writer)
            else:
                c_writer.transport.abort()
                s_writer.transport.abort()
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._writers.discard(c_writer)
            self._writers.discard(s_writer)
            record.closed.set()
            self._tasks.discard(task)

    async def _server_to_client(
        self,
        record: ProxiedConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stall: asyncio.Event,
    ) -> None:
        fault = record.fault
        pending = b""  # an incomplete line, held back while stripping STARTTLS
        reset_at: int | None = fault.reset_after_server_bytes
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                return
            if stall.is_set():
                continue  # a stalled server: read and drop, so a close is still seen
            before = len(record.server_bytes)
            record.server_bytes += data
            seen = bytes(record.server_bytes)
            if fault.stall_on_server and fault.stall_on_server in seen:
                record.stalled = True
                stall.set()
                continue
            if fault.reset_on_server and reset_at is None:
                index = seen.find(fault.reset_on_server)
                if index >= 0:
                    reset_at = index + len(fault.reset_on_server) + fault.extra_bytes
            if reset_at is not None and len(seen) >= reset_at:
                data = data[: max(0, reset_at - before)]
                if data:
                    writer.write(data)
                    await writer.drain()
                raise _Reset
            if fault.strip_starttls:
                lines = (pending + data).split(b"\r\n")
                pending = lines.pop()
                data = b"".join(_strip(line + b"\r\n") for line in lines)
            writer.write(data)
            if fault.inject_after_server and not record.injected:
                pattern, extra = fault.inject_after_server
                if pattern in seen:
                    record.injected = True
                    writer.write(extra)
            await writer.drain()

    async def _client_to_server(
        self,
        record: ProxiedConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stall: asyncio.Event,
    ) -> None:
        fault = record.fault
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                return
            record.client_bytes += data
            if stall.is_set():
                continue
            seen = bytes(record.client_bytes)
            if fault.reset_on_client and fault.reset_on_client in seen:
                raise _Reset
            if fault.stall_on_client and fault.stall_on_client in seen:
                record.stalled = True
                stall.set()
                continue
            writer.write(data)
            await writer.drain()


def _strip(line: bytes) -> bytes:
    if _STARTTLS_LINE.match(line):
        return b""
    return _STARTTLS_ATOM.sub(b"", line)


Reply = bytes | AsyncIterator[bytes] | None
"""What a :class:`ScriptedServer` answers: bytes, an async stream of chunks, or
nothing (``None``: say nothing, keep the connection open)."""


async def endless(chunk: bytes, prefix: bytes = b"") -> AsyncIterator[bytes]:
    """``prefix`` then ``chunk`` for ever: an endless line or an endless response."""
    if prefix:
        yield prefix
    while True:
        yield chunk


async def drip(
    data: bytes, interval: float, *, prefix: bytes = b"", forever: bool = False
) -> AsyncIterator[bytes]:
    """``prefix`` at once, then ``data`` one byte every ``interval`` seconds (over and
    over with ``forever``): a server holding a connection open by answering slowly. It
    stops when the client goes away (:class:`ScriptedServer` stops writing then)."""
    if prefix:
        yield prefix
    while True:
        for index in range(len(data)):
            yield data[index : index + 1]
            await asyncio.sleep(interval)
        if not forever:
            return


class ScriptedServer:
    """A server on ``127.0.0.1`` that sends ``greeting`` and answers each line it
    receives with ``answer(line)``; :attr:`received` keeps every byte it was sent.

    ``greeting`` may itself be endless (an async iterator factory). Streams are written
    with back-pressure, so an endless answer costs the server no memory; the server
    stops writing when the client goes away.
    """

    def __init__(
        self,
        greeting: bytes | Callable[[], AsyncIterator[bytes]],
        answer: Callable[[bytes], Reply] = lambda line: None,
    ) -> None:
        self.greeting = greeting
        self.answer = answer
        self.received = bytearray()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ScriptedServer is not running; use 'async with'")
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            greeting = self.greeting if isinstance(self.greeting, bytes) else self.greeting()
            await _write(writer, greeting)
            buffer = b""
            while data := await reader.read(_CHUNK):
                self.received += data
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    await _write(writer, self.answer(line + b"\n"))
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the client left, or the server is closing
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)


async def _write(writer: asyncio.StreamWriter, reply: Reply) -> None:
    if reply is None:
        return
    if isinstance(reply, bytes):
        writer.write(reply)
        await writer.drain()
        return
    async for chunk in reply:
        if writer.is_closing():
            return
        writer.write(chunk)
        await writer.drain()


def lines(*items: bytes) -> bytes:
    """CRLF-terminated lines, joined."""
    return b"".join(item + b"\r\n" for item in items)


def garbage(seed: int, size: int = 4096) -> bytes:
    """Deterministic random bytes (a server answering noise)."""
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(size))
