"""What a TLS connection keeps after a big transfer: its memory BIOs are written at most
a TLS record's worth (about 17 KiB) at a time, so they never grow to a whole socket read
or a whole message (an OpenSSL memory BIO keeps the capacity of its largest write)."""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import cast

import pytest
import trustme

from mailoauth._core.connection import FEED_SIZE, WRITE_SLICE, Connection
from tests.unit.test_connection import FakeSocket, Recorder, TlsPeer, client_context, connect

pytestmark = pytest.mark.asyncio


class BioSpy:
    """A MemoryBIO's Python side, recording the largest write and read (the SSLObject
    keeps using the real BIO)."""

    def __init__(self, bio: ssl.MemoryBIO) -> None:
        self.bio = bio
        self.largest_write = 0
        self.largest_read = 0

    def write(self, data: bytes | memoryview) -> int:
        self.largest_write = max(self.largest_write, len(data))
        return self.bio.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self.bio.read(size)
        self.largest_read = max(self.largest_read, len(data))
        return data

    @property
    def pending(self) -> int:
        return self.bio.pending


def records(sizes: list[int]) -> tuple[bytes, list[int]]:
    """A stream of TLS application-data records of these payload sizes, and where each
    ends."""
    stream = bytearray()
    ends = []
    for size in sizes:
        stream += bytes([0x17, 3, 3, size >> 8, size & 0xFF]) + random.randbytes(size)
        ends.append(len(stream))
    return bytes(stream), ends


@pytest.mark.parametrize("seed", range(20))
async def test_the_record_framing_is_followed_across_reads_split_anywhere(seed: int) -> None:
    random.seed(seed)
    sizes = [random.choice([0, 1, 17, 300, 4096, 16406, 16640]) for _ in range(40)]
    stream, expected = records(sizes)
    conn, _ = connect()
    found: list[int] = []
    offset = 0
    while offset < len(stream):
        piece = stream[offset : offset + random.choice([1, 2, 3, 4, 5, 6, 700, 20000, 70000])]
        ends: list[int] = []
        conn._frame(memoryview(piece), ends)
        found += [offset + end for end in ends]
        offset += len(piece)
    assert found == expected
    assert conn._record_left == 0 and conn._record_head == b""


async def tls_pair() -> tuple[Connection, FakeSocket, TlsPeer, Recorder]:
    ca = trustme.CA()
    conn, sock = connect(ctx=client_context(ca))
    peer = TlsPeer(ca, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    recorder = Recorder()
    conn.attach(recorder)
    return conn, sock, peer, recorder


@pytest.mark.parametrize("read_size", [300_000, 65536, 17409, 5000])
async def test_a_big_read_is_fed_a_record_at_a_time_and_handed_on_whole(read_size: int) -> None:
    conn, _, peer, recorder = await tls_pair()
    spy = BioSpy(conn._incoming)
    conn._incoming = cast(ssl.MemoryBIO, spy)
    assert conn._ssl is not None
    tries = {"partial": 0}
    real_read = conn._ssl.read

    def counting_read(size: int = 1024) -> bytes:
        try:
            return real_read(size)
        except ssl.SSLWantReadError:
            tries["partial"] += 1
            raise

    conn._ssl.read = counting_read  # type: ignore[method-assign,assignment]
    message = random.randbytes(1_000_000)
    peer.ssl.write(message)
    wire = peer.outgoing.read()
    reads = 0
    for start in range(0, len(wire), read_size):
        conn.data_received(memoryview(wire)[start : start + read_size])
        reads += 1
    assert bytes(recorder.data) == message
    assert spy.largest_write <= FEED_SIZE  # not a whole 300 KB read
    assert tries["partial"] <= reads  # at most one try on a partial record per read


async def test_a_big_write_is_encrypted_a_record_at_a_time() -> None:
    conn, _sock, peer, _ = await tls_pair()
    spy = BioSpy(conn._outgoing)
    conn._outgoing = cast(ssl.MemoryBIO, spy)
    message = random.randbytes(1_000_000)
    conn.write(message)
    assert peer.received() == message
    assert spy.largest_read <= WRITE_SLICE + 256  # one record, not the whole message
    conn.write(b"small\r\n")
    assert peer.received() == b"small\r\n"
