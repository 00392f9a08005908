"""The connection core without sockets: a fake socket transport, and TLS handshakes
run in memory against a server-side SSLObject."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

import pytest
import trustme

from mailoauth._core import connection as connection_module
from mailoauth._core.connection import (
    CLOSE_TIMEOUT,
    PAUSE_READING_AT,
    PLAINTEXT_HEAD,
    RECEIVE_CHUNK,
    RESUME_READING_AT,
    Connection,
)
from mailoauth.errors import ConnectionLostError, MailTimeoutError, TLSError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions

pytestmark = pytest.mark.asyncio


class FakeSocket(asyncio.Transport):
    """What asyncio's socket transport would do, recorded."""

    def __init__(self, *, peer_reads: bool = True) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        #: False: the peer stopped reading, so close() never gets the bytes out and
        #: never reports the connection lost (only abort() does).
        self.peer_reads = peer_reads
        self.protocol: Connection | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.peer_reads:
                self._lost()

    def abort(self) -> None:
        self.aborted = self.closed = True
        self._lost()

    def _lost(self) -> None:
        assert self.protocol is not None
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


def connect(
    timeout: float = 1.0, ctx: ssl.SSLContext | None = None, *, peer_reads: bool = True
) -> tuple[Connection, FakeSocket]:
    conn = Connection(host="localhost", port=1, ssl_context=ctx, timeout=timeout)
    sock = FakeSocket(peer_reads=peer_reads)
    sock.protocol = conn
    conn.connection_made(sock)
    return conn, sock


class TlsPeer:
    """The server side of a TLS session, in memory, pumping through a FakeSocket."""

    def __init__(self, ca: trustme.CA, conn: Connection, sock: FakeSocket) -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(server_ctx)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = server_ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.conn, self.sock = conn, sock

    def pump(self) -> None:
        if self.sock.sent:
            self.incoming.write(bytes(self.sock.sent))
            self.sock.sent.clear()
        with contextlib.suppress(ssl.SSLWantReadError):
            self.ssl.do_handshake()
        if self.outgoing.pending:
            self.conn.data_received(self.outgoing.read())

    async def handshake_with(self, upgrade: asyncio.Future[None]) -> None:
        while not upgrade.done():
            self.pump()
            await asyncio.sleep(0)
        upgrade.result()
        self.pump()  # the server reads the client's last handshake flight

    def send(self, data: bytes) -> None:
        self.ssl.write(data)
        self.conn.data_received(self.outgoing.read())

    def got_close_notify(self) -> bool:
        """Whether what the client sent ends with a TLS close_notify (an SSLObject
        reads that as the end of the stream; without one it waits for more)."""
        self.incoming.write(bytes(self.sock.sent))
        self.sock.sent.clear()
        try:
            return self.ssl.read(65536) == b""
        except ssl.SSLZeroReturnError:
            return True
        except ssl.SSLWantReadError:
            return False

    def received(self) -> bytes:
        self.incoming.write(bytes(self.sock.sent))
        self.sock.sent.clear()
        out = bytearray()
        while True:
            try:
                out += self.ssl.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_attached_protocol_gets_bytes_in_order_and_writes_reach_the_socket() -> None:
    conn, sock = connect()
    conn.data_received(b"* OK early greeting\r\n")  # before anything is attached
    proto = Recorder()
    transport = conn.attach(proto)
    conn.data_received(b"* CAPABILITY IMAP4rev1\r\n")
    assert bytes(proto.data) == b"* OK early greeting\r\n* CAPABILITY IMAP4rev1\r\n"
    transport.write(b"A1 NOOP\r\n")
    assert bytes(sock.sent) == b"A1 NOOP\r\n"
    transport.close()
    await asyncio.sleep(0)
    assert proto.lost == [None] and transport.is_closing()


async def test_receive_splits_at_max_bytes_and_ends_with_connection_lost() -> None:
    conn, _sock = connect()
    conn.data_received(b"abcdef")
    assert await conn.receive(4) == b"abcd"
    assert await conn.receive() == b"ef"
    conn.eof_received()
    with pytest.raises(ConnectionLostError):
        await conn.receive()


async def test_receive_times_out_and_closes() -> None:
    conn, sock = connect(timeout=0.05)
    with pytest.raises(MailTimeoutError, match="timed out reading from localhost:1"):
        await conn.receive()
    assert conn.closed and sock.closed


async def test_reading_pauses_above_the_watermark_and_resumes_below() -> None:
    conn, sock = connect()
    chunk = b"x" * RECEIVE_CHUNK
    while sock.reading:
        conn.data_received(chunk)
    assert conn._buffered > PAUSE_READING_AT
    while not sock.reading:
        await conn.receive()
    assert conn._buffered < RESUME_READING_AT


async def test_implicit_style_tls_in_memory_both_ways() -> None:
    ca = trustme.CA()
    conn, sock = connect(ctx=client_context(ca))
    peer = TlsPeer(ca, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    assert conn.tls_active and conn.extra("version") in ("TLSv1.2", "TLSv1.3")
    peer.send(b"+OK ready\r\n")
    assert await conn.receive() == b"+OK ready\r\n"
    await conn.send(b"CAPA\r\n")
    assert peer.received() == b"CAPA\r\n"


async def test_starttls_discards_plaintext_received_before_the_handshake() -> None:
    ca = trustme.CA()
    conn, sock = connect(ctx=client_context(ca))
    conn.data_received(b"+OK Begin TLS\r\n")
    assert await conn.receive() == b"+OK Begin TLS\r\n"
    conn.data_received(b"+OK injected by a man in the middle\r\n")
    peer = TlsPeer(ca, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    peer.send(b"+OK over TLS\r\n")
    assert await conn.receive() == b"+OK over TLS\r\n"


async def test_attached_starttls_calls_discard_before_the_handshake() -> None:
    ca = trustme.CA()
    conn, sock = connect(ctx=client_context(ca))
    proto = Recorder()
    transport = conn.attach(proto)
    conn.data_received(b"220 go ahead\r\n250 injected\r\n")
    discarded = []

    def discard() -> None:
        discarded.append(bytes(proto.data))
        proto.data.clear()

    peer = TlsPeer(ca, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(transport.start_tls(discard)))
    assert discarded == [b"220 go ahead\r\n250 injected\r\n"]
    peer.send(b"250 after TLS\r\n")
    assert bytes(proto.data) == b"250 after TLS\r\n"


async def test_certificate_from_another_ca_is_a_tls_error() -> None:
    conn, sock = connect(ctx=client_context(trustme.CA()))
    peer = TlsPeer(trustme.CA(), conn, sock)
    with pytest.raises(TLSError, match="certificate"):
        await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    assert conn.closed


async def test_garbage_after_the_handshake_fails_the_attached_protocol_with_tls_error() -> None:
    ca = trustme.CA()
    conn, sock = connect(ctx=client_context(ca))
    peer = TlsPeer(ca, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    proto = Recorder()
    conn.attach(proto)
    conn.data_received(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)  # a record that won't decrypt
    await asyncio.sleep(0)
    assert len(proto.lost) == 1 and isinstance(proto.lost[0], TLSError)


async def test_plaintext_answer_to_the_handshake_names_the_security_option() -> None:
    conn, sock = connect(ctx=client_context(trustme.CA()))
    upgrade = asyncio.ensure_future(conn.start_tls())
    await asyncio.sleep(0)
    assert sock.sent[:1] == b"\x16"  # the ClientHello went out
    conn.data_received(b"+OK POP3 ready\r\n")
    with pytest.raises(TLSError, match=r"plaintext greeting \('\+OK POP3 ready'\).*SSL_EXPLICIT"):
        await upgrade
    assert conn.plaintext_answer == b"+OK POP3 ready" and conn.closed


async def test_plaintext_before_an_implicit_handshake_fails_without_sending_anything() -> None:
    conn, sock = connect(ctx=client_context(trustme.CA()))
    conn.data_received(b"220 smtp.example.test ESMTP\r\n")
    with pytest.raises(TLSError, match="plaintext greeting"):
        await conn._handshake()
    assert sock.sent == b""


async def test_a_tls_alert_is_not_mistaken_for_a_plaintext_greeting() -> None:
    conn, _sock = connect(ctx=client_context(trustme.CA()))
    upgrade = asyncio.ensure_future(conn.start_tls())
    await asyncio.sleep(0)
    conn.data_received(b"\x15\x03\x03\x00\x02\x02\x28")  # alert: handshake_failure
    with pytest.raises(TLSError) as caught:
        await upgrade
    assert "plaintext" not in str(caught.value) and conn.plaintext_answer is None


async def test_only_the_first_plaintext_head_bytes_are_kept() -> None:
    conn, _sock = connect(ctx=client_context(trustme.CA()))
    upgrade = asyncio.ensure_future(conn.start_tls())
    await asyncio.sleep(0)
    conn.data_received(b"* OK " + b"x" * 500 + b"\r\n")
    with pytest.raises(TLSError):
        await upgrade
    assert len(conn._handshake_head) == PLAINTEXT_HEAD
    assert conn.bytes_received == 5 + 500 + 2


async def test_reply_deadline_grows_at_min_rate_and_not_for_a_drip() -> None:
    conn, _sock = connect()
    client = Pop3Client("localhost", 1, "u@example.test", "t0k3n", timeout=0.2, min_rate=100)
    client._dialled = conn
    with client.reply_deadline():
        for _ in range(10):  # 1 s in all, five times the timeout, at 200 bytes/s
            await asyncio.sleep(0.1)
            conn.data_received(b"x" * 20)
    assert conn.on_progress is None
    with pytest.raises(TimeoutError), client.reply_deadline():
        for _ in range(10):  # 10 bytes/s, under min_rate: over soon after the timeout
            await asyncio.sleep(0.1)
            conn.data_received(b"x")
    assert conn.on_progress is None


async def test_nested_reply_deadlines_leave_the_outer_one_in_charge() -> None:
    conn, _sock = connect()
    client = Pop3Client("localhost", 1, "u@example.test", "t0k3n", timeout=5.0)
    client._dialled = conn
    with client.reply_deadline():
        outer = conn.on_progress
        with client.reply_deadline():
            assert conn.on_progress is outer
        assert conn.on_progress is outer
    assert conn.on_progress is None


# -- closing: TLS close_notify on a clean close, none on an abort, never a hang -----------


async def tls_connection(**options: bool) -> tuple[Connection, FakeSocket, TlsPeer]:
    ca = trustme.CA()
    conn, sock = connect(ctx=client_context(ca), **options)
    peer = TlsPeer(ca, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    await conn.send(b"QUIT\r\n")
    assert peer.received() == b"QUIT\r\n"
    return conn, sock, peer


async def test_aclose_sends_tls_close_notify_then_closes_the_socket() -> None:
    conn, sock, peer = await tls_connection()
    assert conn._lost is None  # no future per open connection: aclose() makes it
    await conn.aclose()
    assert peer.got_close_notify()
    assert sock.closed and not sock.aborted and conn.closed
    assert conn._gone  # aclose() returned once the socket was gone


async def test_abort_sends_no_close_notify() -> None:
    conn, sock, peer = await tls_connection()
    conn.close()
    await asyncio.sleep(0)
    assert not peer.got_close_notify() and sock.closed and conn.closed


async def test_attached_transport_close_is_clean_and_abort_is_not() -> None:
    conn, _sock, peer = await tls_connection()
    conn.attach(Recorder()).close()
    assert peer.got_close_notify()
    conn, _sock, peer = await tls_connection()
    conn.attach(Recorder()).abort()
    assert not peer.got_close_notify()


async def test_no_close_notify_after_a_tls_error() -> None:
    conn, _sock, peer = await tls_connection()
    conn.attach(Recorder())
    conn.data_received(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)  # a record that won't decrypt
    await conn.aclose()
    assert not peer.got_close_notify()


async def test_aclose_of_a_plain_connection_just_closes() -> None:
    conn, sock = connect()
    await conn.aclose()
    assert sock.closed and sock.sent == b"" and conn.closed


async def test_close_gives_up_on_a_peer_that_takes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CLOSE_TIMEOUT > 0
    monkeypatch.setattr(connection_module, "CLOSE_TIMEOUT", 0.05)
    conn, sock, peer = await tls_connection(peer_reads=False)
    await asyncio.wait_for(conn.aclose(), 5)  # bounded by CLOSE_TIMEOUT, then aborted
    assert sock.aborted and conn._gone
    assert peer.got_close_notify()  # it was written before the wait
    conn, sock = connect(peer_reads=False)
    conn.close()  # an abort does not wait, but does not leave the socket open either
    for _ in range(100):
        if sock.aborted:
            break
        await asyncio.sleep(0.01)
    assert sock.aborted


class LoopbackTlsPeer(asyncio.Protocol):
    """A TLS server on a real loopback socket (OpenSSL through an SSLObject), recording
    whether the client ended the session with close_notify before its FIN. With a
    ``script``, it greets and answers each line the client sends."""

    def __init__(
        self,
        ctx: ssl.SSLContext,
        script: Callable[[bytes], bytes] | None = None,
        greeting: bytes = b"",
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.transport: asyncio.Transport | None = None
        self.close_notify = False
        self.ended = asyncio.get_running_loop().create_future()
        self.script, self.greeting = script, greeting
        self.lines: list[bytes] = []
        self._partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.incoming.write(data)
        try:
            self.ssl.do_handshake()
            if self.greeting:
                self.ssl.write(self.greeting)
                self.greeting = b""
            while chunk := self.ssl.read(65536):
                self._answer(chunk)
            self.close_notify = True  # read() returned b"": the end of the TLS stream
        except ssl.SSLZeroReturnError:
            self.close_notify = True
        except ssl.SSLWantReadError:
            pass
        if self.outgoing.pending:
            self.transport.write(self.outgoing.read())

    def _answer(self, chunk: bytes) -> None:
        if self.script is None:
            return
        *lines, self._partial = (self._partial + chunk).split(b"\r\n")
        for line in lines:
            self.lines.append(line)
            self.ssl.write(self.script(line))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


@pytest.mark.parametrize("clean", [True, False])
async def test_close_notify_reaches_a_real_tls_server_only_on_a_clean_close(clean: bool) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    peers: list[LoopbackTlsPeer] = []

    def factory() -> LoopbackTlsPeer:
        peers.append(LoopbackTlsPeer(server_ctx))
        return peers[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        conn = await Connection.open(
            "127.0.0.1", port, implicit_tls=True, ssl_context=client_context(ca), timeout=5
        )
        assert conn.tls_active
        if clean:
            await conn.aclose()
        else:
            conn.close()
        await asyncio.wait_for(peers[0].ended, 5)
        assert peers[0].close_notify is clean
    finally:
        server.close()
        await server.wait_closed()


def pop3_script(line: bytes) -> bytes:
    if line == b"CAPA":
        return b"+OK\r\nSASL XOAUTH2\r\nUSER\r\n.\r\n"
    if line.startswith(b"AUTH XOAUTH2 "):
        return b"+OK logged in\r\n"
    if line == b"QUIT":
        return b"+OK bye\r\n"
    return b"-ERR not scripted\r\n"


@pytest.mark.parametrize("clean", [True, False])
async def test_pop3_client_sends_close_notify_after_quit_and_not_on_abort(clean: bool) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    peers: list[LoopbackTlsPeer] = []

    def factory() -> LoopbackTlsPeer:
        peers.append(LoopbackTlsPeer(server_ctx, pop3_script, b"+OK POP3 ready\r\n"))
        return peers[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        client = Pop3Client(
            "127.0.0.1",
            port,
            "u@example.test",
            "t0k3n",
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=client_context(ca),
            timeout=5,
        )
        await client.connect()
        if clean:
            await client.aclose()
        else:
            await client.abort()
        await asyncio.wait_for(peers[0].ended, 5)
        assert (b"QUIT" in peers[0].lines) is clean
        assert peers[0].close_notify is clean
    finally:
        server.close()
        await server.wait_closed()


def imap_script(answer_logout: bool) -> Callable[[bytes], bytes]:
    caps = b"IMAP4rev1 AUTH=XOAUTH2 SASL-IR"

    def script(line: bytes) -> bytes:
        tag, _, command = line.partition(b" ")
        if command.startswith(b"AUTHENTICATE XOAUTH2 "):
            return tag + b" OK [CAPABILITY " + caps + b"] logged in\r\n"
        if command == b"CAPABILITY":
            return b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n"
        if command == b"LOGOUT" and answer_logout:
            return b"* BYE logging out\r\n" + tag + b" OK done\r\n"
        return b""

    return script


@pytest.mark.parametrize("answer_logout", [True, False])
async def test_imap_client_sends_close_notify_only_after_logout_is_answered(
    answer_logout: bool,
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    peers: list[LoopbackTlsPeer] = []
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] ready\r\n"

    def factory() -> LoopbackTlsPeer:
        peers.append(LoopbackTlsPeer(server_ctx, imap_script(answer_logout), greeting))
        return peers[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        client = ImapClient(
            "127.0.0.1",
            port,
            "u@example.test",
            "t0k3n",
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=client_context(ca),
            timeout=0.5,  # how long an unanswered LOGOUT is waited for
        )
        await client.connect()
        await client.aclose()
        await asyncio.wait_for(peers[0].ended, 5)
        assert any(line.endswith(b" LOGOUT") for line in peers[0].lines)
        assert peers[0].close_notify is answer_logout
    finally:
        server.close()
        await server.wait_closed()


# -- read back-pressure for attached protocols ------------------------------------------


class SlowConsumer(asyncio.Protocol):
    """A protocol whose reader does not read: it holds what arrives and, like asyncio's
    StreamReader, asks its transport to pause above ``limit`` and to resume below."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = bytearray()
        self.most_held = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.held += data
        self.most_held = max(self.most_held, len(self.held))
        if len(self.held) > self.limit and self.transport.is_reading():
            self.transport.pause_reading()

    def take(self) -> bytes:
        assert self.transport is not None
        data, self.held = bytes(self.held), bytearray()
        self.transport.resume_reading()
        return data


async def test_attached_protocol_pauses_and_resumes_the_socket() -> None:
    conn, sock = connect()
    consumer = SlowConsumer(limit=10_000)
    transport = conn.attach(consumer)
    while sock.reading:
        conn.data_received(b"x" * 4096)
    assert not transport.is_reading() and len(consumer.held) <= 10_000 + 4096
    consumer.take()
    assert sock.reading and transport.is_reading()


async def test_attach_takes_over_a_receive_queue_that_had_paused_the_socket() -> None:
    conn, sock = connect()
    while sock.reading:
        conn.data_received(b"x" * RECEIVE_CHUNK)
    consumer = SlowConsumer(limit=1 << 30)
    conn.attach(consumer)
    assert sock.reading and len(consumer.held) > PAUSE_READING_AT


class Flood(LoopbackTlsPeer):
    """A scripted server that sends ``total`` bytes at once, in plaintext or (with a
    context) once its TLS handshake is done, on a real loopback socket."""

    def __init__(self, ctx: ssl.SSLContext | None, total: int) -> None:
        super().__init__(ctx or ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        self.tls, self.total = ctx is not None, total

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.tls:
            self.flood()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.tls and self.total and self.ssl.version() is not None:
            self.flood()

    def flood(self) -> None:
        assert self.transport is not None
        for _ in range(self.total // RECEIVE_CHUNK):
            chunk = b"y" * RECEIVE_CHUNK
            if self.tls:
                self.ssl.write(chunk)
                chunk = self.outgoing.read()
            self.transport.write(chunk)
        self.total = 0


@pytest.mark.parametrize("tls", [False, True])
async def test_a_peer_sending_more_than_the_bound_waits_for_a_slow_consumer(tls: bool) -> None:
    """A scripted server sends 8 MB at once; the attached protocol holds at most its
    limit plus one socket read, and the rest waits in the server's buffers until the
    consumer reads."""
    total, limit = 8 * 1024 * 1024, 64 * 1024
    ca = trustme.CA()
    server_ctx = None
    if tls:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    floods: list[Flood] = []

    def factory() -> Flood:
        floods.append(Flood(server_ctx, total))
        return floods[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    conn = None
    try:
        port = server.sockets[0].getsockname()[1]
        conn = await Connection.open(
            "127.0.0.1", port, implicit_tls=tls, ssl_context=client_context(ca), timeout=5
        )
        consumer = SlowConsumer(limit)
        conn.attach(consumer)
        for _ in range(50):  # the consumer asks to pause at once; give the peer time
            await asyncio.sleep(0.01)
        assert not conn.reading
        server_side = floods[0].transport
        assert server_side is not None
        assert server_side.get_write_buffer_size() > 0  # the rest waits at the server
        # At most the limit, one socket read (asyncio reads 256 KiB at a time) and, with
        # TLS, what OpenSSL had buffered of that read.
        assert consumer.most_held <= limit + 2 * 256 * 1024
        received = 0
        for _ in range(100_000):
            received += len(consumer.take())
            if received == total:
                break
            await asyncio.sleep(0)
        assert received == total
        assert consumer.most_held <= limit + 2 * 256 * 1024
    finally:
        if conn is not None:
            await conn.aclose()
        server.close()
        await server.wait_closed()


async def test_connections_of_a_thread_read_into_one_shared_buffer() -> None:
    """Reads borrow the thread's buffer (no 256 KiB allocation per read); plaintext is
    copied out of it, so a chunk queued unread survives the next read."""
    conn, _sock = connect()
    other, _ = connect()
    buffer = conn.get_buffer(-1)
    assert buffer is other.get_buffer(-1) and len(buffer) == connection_module.READ_SIZE
    buffer[:5] = b"first"
    conn.buffer_updated(5)
    buffer[:6] = b"second"
    conn.buffer_updated(6)
    assert await conn.receive() == b"firstsecond"
    assert conn.bytes_received == 11

    def in_another_thread() -> memoryview:
        return connection_module._ReadBuffers().view

    assert await asyncio.to_thread(in_another_thread) is not buffer


async def test_tls_reads_through_the_shared_buffer() -> None:
    ca = trustme.CA()
    conn, sock = connect(ctx=client_context(ca))
    peer = TlsPeer(ca, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    peer.ssl.write(b"+OK over TLS\r\n")
    record = peer.outgoing.read()
    buffer = conn.get_buffer(-1)
    buffer[: len(record)] = record
    conn.buffer_updated(len(record))
    buffer[: len(record)] = b"\x00" * len(record)  # the next read overwrites it
    assert await conn.receive() == b"+OK over TLS\r\n"


async def test_receive_times_out_even_when_woken_without_data() -> None:
    conn, sock = connect(timeout=5.0)
    loop = asyncio.get_running_loop()
    waking = loop.call_later(0.01, conn._wake)  # a wake with nothing queued
    with pytest.raises(MailTimeoutError, match="timed out reading from localhost:1"):
        await conn.receive(timeout=0.05)
    waking.cancel()
    assert conn.closed and sock.closed


def receive_timers(conn: Connection) -> list[asyncio.TimerHandle]:
    loop = asyncio.get_running_loop()
    timers: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return [h for h in timers if not h.cancelled() and h._callback == conn._time_out]  # type: ignore[attr-defined]


async def test_receive_waits_share_one_timer_and_close_removes_it() -> None:
    """One loop timer serves waits that follow each other (no timer created and
    cancelled per RETR), and none is left once the connection is closed."""
    conn, _sock = connect(timeout=30.0)
    loop = asyncio.get_running_loop()
    for n in range(50):
        loop.call_soon(conn.data_received, b"+OK %d\r\n" % n)
        assert await conn.receive() == b"+OK %d\r\n" % n
        assert len(receive_timers(conn)) == 1
    conn.close()
    assert receive_timers(conn) == []


async def test_a_wait_outlives_the_timer_armed_by_an_earlier_shorter_wait() -> None:
    conn, _sock = connect(timeout=30.0)
    loop = asyncio.get_running_loop()
    loop.call_soon(conn.data_received, b"first")
    assert await conn.receive(timeout=0.05) == b"first"
    # The timer still fires at the first wait's deadline: it re-arms for this one.
    loop.call_later(0.1, conn.data_received, b"second")
    assert await conn.receive(timeout=0.3) == b"second"
    assert not conn.closed


async def test_a_shorter_wait_after_a_longer_one_still_times_out() -> None:
    conn, sock = connect(timeout=30.0)
    loop = asyncio.get_running_loop()
    loop.call_soon(conn.data_received, b"first")
    assert await conn.receive() == b"first"  # arms the timer 30 s out
    with pytest.raises(MailTimeoutError, match="timed out reading from localhost:1"):
        await conn.receive(timeout=0.05)
    assert conn.closed and sock.closed and receive_timers(conn) == []
