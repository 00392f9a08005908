"""StreamTransport: an asyncio protocol fed from a core Connection, with no sockets."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from anyio.streams.stapled import StapledObjectStream

from mailoauth._core.connection import Connection
from mailoauth._core.stream_transport import StreamTransport
from mailoauth.errors import ConnectionLostError, MailTimeoutError

pytestmark = pytest.mark.asyncio


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory duplex byte pipe."""

    def __init__(self, pipe: StapledObjectStream[bytes]) -> None:
        self.pipe = pipe

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.pipe.receive()

    async def send(self, item: bytes) -> None:
        await self.pipe.send(item)

    async def send_eof(self) -> None:
        await self.pipe.send_eof()

    async def aclose(self) -> None:
        await self.pipe.aclose()


def pipe() -> tuple[MemoryByteStream, MemoryByteStream]:
    a_send, b_recv = anyio.create_memory_object_stream[bytes](100)
    b_send, a_recv = anyio.create_memory_object_stream[bytes](100)
    return (
        MemoryByteStream(StapledObjectStream(a_send, a_recv)),
        MemoryByteStream(StapledObjectStream(b_send, b_recv)),
    )


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[Exception | None] = []
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_data_flows_both_ways_in_order() -> None:
    ours, theirs = pipe()
    proto = Recorder()
    transport = StreamTransport(
        Connection(ours, host="h", port=1, ssl_context=None, timeout=1), proto
    )
    transport.write(b"A1 NOOP\r\n")
    transport.write(b"A2 NOOP\r\n")
    await transport.drain()
    assert await theirs.receive() == b"A1 NOOP\r\nA2 NOOP\r\n"
    await theirs.send(b"* OK hi\r\n")
    await settle()
    assert bytes(proto.data) == b"* OK hi\r\n"
    transport.close()
    await settle()
    assert proto.lost == [None] and transport.is_closing()


async def test_peer_eof_reports_connection_lost_once() -> None:
    ours, theirs = pipe()
    proto = Recorder()
    transport = StreamTransport(
        Connection(ours, host="h", port=1, ssl_context=None, timeout=1), proto
    )
    await theirs.aclose()
    await settle()
    assert proto.eof and proto.lost == [None]
    transport.close()
    assert proto.lost == [None]
    with pytest.raises(ConnectionLostError):
        await transport.drain()


async def test_bytes_before_the_handshake_are_discarded() -> None:
    ours, theirs = pipe()
    proto = Recorder()
    conn = Connection(ours, host="h", port=1, ssl_context=None, timeout=1)
    transport = StreamTransport(conn, proto)
    await theirs.send(b"220 go ahead\r\n250 injected by a MITM\r\n")
    await settle()
    discarded: list[bytes] = []

    async def fake_start_tls() -> None:  # the handshake itself is tested against servers
        pass

    conn.start_tls = fake_start_tls  # type: ignore[method-assign]

    def discard() -> None:
        discarded.append(bytes(proto.data))
        proto.data.clear()

    await transport.start_tls(discard)
    assert discarded == [b"220 go ahead\r\n250 injected by a MITM\r\n"]
    await theirs.send(b"after\r\n")
    await settle()
    assert bytes(proto.data) == b"after\r\n"
    transport.close()


async def test_connection_receive_times_out_and_closes() -> None:
    ours, _theirs = pipe()
    conn = Connection(ours, host="h", port=1, ssl_context=None, timeout=0.05)
    with pytest.raises(MailTimeoutError, match="timed out reading from h:1"):
        await conn.receive()
    assert conn.closed
