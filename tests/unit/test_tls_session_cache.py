"""The TLS session cache: keys, LRU bound, expiry, one cache per SSL context."""

from __future__ import annotations

import asyncio
import gc
import ssl
from dataclasses import dataclass
from typing import cast

import pytest
import trustme

from mailoauth._core import tls_sessions
from mailoauth._core.connection import SESSION_LOOKS, Connection
from mailoauth._core.tls_sessions import (
    GIVE_UP_AFTER,
    GIVE_UP_FOR,
    MAX_SESSION_AGE,
    MAX_SESSIONS,
    SessionKey,
    TLSSessionCache,
    session_cache_for,
)
from mailoauth.security import create_ssl_context, default_ssl_context
from tests.unit.test_connection import FakeSocket, TlsPeer, client_context


@dataclass
class FakeSession:
    """What the cache reads of an ``ssl.SSLSession``: its start and lifetime."""

    time: int
    timeout: int


def session(start: int = 1000, lifetime: int = 7200) -> ssl.SSLSession:
    return cast(ssl.SSLSession, FakeSession(start, lifetime))


def key(host: str = "imap.example.com", port: int = 993, mode: str = "implicit") -> SessionKey:
    return (host, port, host, mode, "DirectDialer()")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_session_is_offered_only_for_its_own_key() -> None:
    cache = TLSSessionCache(clock=Clock())
    s = session()
    cache.put(key(), s)
    assert cache.get(key()) is s
    assert cache.get(key(port=143)) is None
    assert cache.get(key(host="imap.example.org")) is None
    assert cache.get(key(mode="starttls")) is None
    assert cache.get(("imap.example.com", 993, "imap.example.com", "implicit", "Proxy")) is None


def test_a_newer_session_replaces_the_kept_one() -> None:
    cache = TLSSessionCache(clock=Clock())
    first, second = session(), session()
    cache.put(key(), first)
    cache.put(key(), second)
    assert cache.get(key()) is second
    assert len(cache) == 1


def test_expired_sessions_are_dropped() -> None:
    clock = Clock(1000.0)
    cache = TLSSessionCache(clock=clock)
    cache.put(key(), session(start=1000, lifetime=60))
    clock.now = 1059.0
    assert cache.get(key()) is not None
    clock.now = 1060.0
    assert cache.get(key()) is None
    assert len(cache) == 0  # dropped, not only hidden
    cache.put(key(), session(start=0, lifetime=60))  # already expired: not kept
    assert len(cache) == 0


def test_lifetime_is_capped_whatever_the_server_announces() -> None:
    clock = Clock(1000.0)
    cache = TLSSessionCache(clock=clock)
    cache.put(key(), session(start=1000, lifetime=10 * MAX_SESSION_AGE))
    clock.now = 1000.0 + MAX_SESSION_AGE
    assert cache.get(key()) is None


def test_least_recently_used_goes_first() -> None:
    cache = TLSSessionCache(3, clock=Clock())
    for port in (1, 2, 3):
        cache.put(key(port=port), session())
    assert cache.get(key(port=1)) is not None  # now the most recently used
    cache.put(key(port=4), session())
    assert len(cache) == 3
    assert cache.get(key(port=2)) is None
    assert all(cache.get(key(port=p)) is not None for p in (1, 3, 4))
    cache.discard(key(port=1))
    assert cache.get(key(port=1)) is None
    cache.clear()
    assert len(cache) == 0


def test_a_resumed_session_is_offered_again_and_no_new_one_taken() -> None:
    cache = TLSSessionCache(clock=Clock())
    assert cache.outcome(key(), None, False)  # first connection: keep its session
    s = session()
    cache.put(key(), s)
    for _ in range(3):
        offered = cache.get(key())
        assert offered is s
        assert not cache.outcome(key(), offered, True)  # resumed: nothing to copy


def test_a_session_is_wanted_until_one_is_kept() -> None:
    clock = Clock()
    cache = TLSSessionCache(clock=clock)
    assert cache.wants(key())  # nothing kept yet
    cache.put(key(), session(start=1000, lifetime=60))
    assert not cache.wants(key())  # another connection kept one: reading ours is waste
    assert cache.wants(key(port=143))
    clock.now = 1061
    assert cache.wants(key())  # the kept one expired
    cache.put(key(), session(start=1061))
    assert cache.outcome(key(), cache.get(key()), False)  # a fresh one refused: want another
    assert cache.wants(key())
    cache.put(key(), session(start=1061))
    assert not cache.wants(key())
    assert not cache.outcome(key(), cache.get(key()), True)
    assert cache.outcome(key(), cache.get(key()), False)  # resumed once, refused now
    cache.put(key(), session(start=1061))
    assert cache.wants(key())  # single use: every connection takes the next ticket


def test_a_server_taking_each_ticket_once_gets_a_fresh_one_every_time() -> None:
    cache = TLSSessionCache(clock=Clock())
    first = session()
    cache.put(key(), first)
    assert not cache.outcome(key(), cache.get(key()), True)
    assert cache.outcome(key(), cache.get(key()), False)  # the same ticket, refused
    cache.put(key(), session())
    assert cache.outcome(key(), cache.get(key()), True)  # from now on: take each new one


def test_a_server_that_never_resumes_is_given_up_for_a_while() -> None:
    clock = Clock()
    cache = TLSSessionCache(clock=clock)
    cache.put(key(), session())
    for _ in range(GIVE_UP_AFTER - 1):
        offered = cache.get(key())
        assert offered is not None
        assert cache.outcome(key(), offered, False)  # refused: try the next one
        cache.outcome(key(), offered, False)  # a concurrent refusal of the same: counted once
        cache.put(key(), session())
    assert not cache.outcome(key(), cache.get(key()), False)
    assert cache.get(key()) is None
    assert not cache.outcome(key(), None, False)  # nothing offered, nothing taken
    clock.now += GIVE_UP_FOR
    assert cache.outcome(key(), None, False)  # time to try again
    cache.put(key(), session(start=int(clock.now)))
    assert cache.get(key()) is not None


def test_a_success_resets_the_refusals() -> None:
    cache = TLSSessionCache(clock=Clock())
    for _ in range(GIVE_UP_AFTER - 1):
        cache.put(key(), session())
        cache.outcome(key(), cache.get(key()), False)
    cache.put(key(), session())
    assert not cache.outcome(key(), cache.get(key()), True)
    for _ in range(GIVE_UP_AFTER - 1):
        cache.put(key(), session())
        assert cache.outcome(key(), cache.get(key()), False)
    assert cache.get(key()) is not None


def test_default_bound() -> None:
    assert TLSSessionCache().max_sessions == MAX_SESSIONS
    with pytest.raises(ValueError):
        TLSSessionCache(0)


def test_one_cache_per_context_and_it_goes_with_the_context() -> None:
    a, b = create_ssl_context(), create_ssl_context()
    assert session_cache_for(a) is session_cache_for(a)
    assert session_cache_for(a) is not session_cache_for(b)
    before = len(tls_sessions._CACHES)
    del a
    gc.collect()
    assert len(tls_sessions._CACHES) == before - 1


def test_connections_without_a_context_share_one() -> None:
    """No ssl_context given: every connection uses the same default context, so they
    can resume each other's sessions (and the system CAs are loaded once)."""
    assert default_ssl_context() is default_ssl_context()
    assert default_ssl_context().verify_mode is ssl.CERT_REQUIRED
    assert default_ssl_context().check_hostname
    assert default_ssl_context().minimum_version is ssl.TLSVersion.TLSv1_2


def test_repr_shows_no_session() -> None:
    cache = TLSSessionCache(clock=Clock())
    cache.put(key(), session())
    assert repr(cache) == f"<TLSSessionCache 1/{MAX_SESSIONS} sessions>"


# -- the connection keeps and offers sessions (TLS in memory, no sockets) ---------------


class SharedKeyPeer(TlsPeer):
    """A TLS server in memory whose context (session cache, ticket key) is ``server_ctx``,
    so that a second connection to it can resume."""

    def __init__(self, server_ctx: ssl.SSLContext, conn: Connection, sock: FakeSocket) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = server_ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.conn, self.sock = conn, sock


def server_context(ca: trustme.CA, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


async def tls_connection(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, resumption: bool = True
) -> tuple[Connection, SharedKeyPeer]:
    conn = Connection(
        host="localhost", port=1, ssl_context=client_ctx, timeout=5.0, tls_resumption=resumption
    )
    sock = FakeSocket()
    sock.protocol = conn
    conn.connection_made(sock)
    peer = SharedKeyPeer(server_ctx, conn, sock)
    await peer.handshake_with(asyncio.ensure_future(conn.start_tls()))
    return conn, peer


@pytest.mark.asyncio
async def test_tls13_ticket_is_kept_once_data_arrives_and_resumes_the_next() -> None:
    ca = trustme.CA()
    server_ctx, client_ctx = server_context(ca), client_context(ca)
    cache = session_cache_for(client_ctx)
    conn, peer = await tls_connection(server_ctx, client_ctx)
    assert conn.extra("version") == "TLSv1.3"
    assert not conn.tls_resumed
    assert len(cache) == 0  # the handshake is done, but no application data yet
    peer.send(b"* OK ready\r\n")
    assert await conn.receive() == b"* OK ready\r\n"
    key = ("localhost", 1, "localhost", "starttls", "")
    kept = cache.get(key)
    assert kept is not None and kept.has_ticket
    again, peer2 = await tls_connection(server_ctx, client_ctx)
    assert again.tls_resumed
    peer2.send(b"* OK again\r\n")
    assert await again.receive() == b"* OK again\r\n"
    assert cache.get(key) is kept  # resumed: offered again, no copy of the new ticket


@pytest.mark.asyncio
async def test_connections_opened_together_read_one_session_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = trustme.CA()
    server_ctx, client_ctx = server_context(ca), client_context(ca)
    first, peer1 = await tls_connection(server_ctx, client_ctx)
    second, peer2 = await tls_connection(server_ctx, client_ctx)  # no ticket kept yet
    assert not first.tls_resumed and not second.tls_resumed
    reads: list[bool] = []
    real = cast(property, vars(ssl.SSLObject)["session"])

    def counted(self: ssl.SSLObject) -> ssl.SSLSession | None:
        reads.append(True)
        return cast("ssl.SSLSession | None", real.fget(self) if real.fget else None)

    monkeypatch.setattr(ssl.SSLObject, "session", property(counted, real.fset))
    peer1.send(b"* OK one\r\n")
    assert await first.receive() == b"* OK one\r\n"
    assert len(reads) == 1 and len(session_cache_for(client_ctx)) == 1
    peer2.send(b"* OK two\r\n")
    assert await second.receive() == b"* OK two\r\n"
    assert len(reads) == 1  # the second saw the first's session kept and read none
    assert second._session_looks == 0


@pytest.mark.asyncio
async def test_tls12_session_is_kept_at_the_end_of_the_handshake() -> None:
    ca = trustme.CA()
    server_ctx = server_context(ca, ssl.TLSVersion.TLSv1_2)
    client_ctx = client_context(ca)
    conn, _ = await tls_connection(server_ctx, client_ctx)
    assert conn.extra("version") == "TLSv1.2"
    assert len(session_cache_for(client_ctx)) == 1
    again, _ = await tls_connection(server_ctx, client_ctx)
    assert again.tls_resumed


@pytest.mark.asyncio
async def test_a_server_that_cannot_resume_gets_a_full_handshake() -> None:
    ca = trustme.CA()
    client_ctx = client_context(ca)
    conn, peer = await tls_connection(server_context(ca), client_ctx)
    peer.send(b"* OK\r\n")
    await conn.receive()
    assert len(session_cache_for(client_ctx)) == 1
    # Another server (another ticket key) is offered the session and refuses it.
    other, peer2 = await tls_connection(server_context(ca), client_ctx)
    assert not other.tls_resumed
    peer2.send(b"* OK other\r\n")
    assert await other.receive() == b"* OK other\r\n"


@pytest.mark.asyncio
async def test_resumption_off_keeps_and_offers_nothing() -> None:
    ca = trustme.CA()
    server_ctx, client_ctx = server_context(ca), client_context(ca)
    for _ in range(2):
        conn, peer = await tls_connection(server_ctx, client_ctx, resumption=False)
        peer.send(b"* OK\r\n")
        await conn.receive()
        assert not conn.tls_resumed
    assert len(session_cache_for(client_ctx)) == 0


@pytest.mark.asyncio
async def test_a_tls13_server_without_tickets_is_looked_at_only_a_few_times() -> None:
    ca = trustme.CA()
    server_ctx, client_ctx = server_context(ca), client_context(ca)
    server_ctx.num_tickets = 0
    conn, peer = await tls_connection(server_ctx, client_ctx)
    for n in range(SESSION_LOOKS + 2):
        peer.send(b"* line %d\r\n" % n)
        await conn.receive()
    assert conn._session_looks == 0  # stopped looking: the reads cost nothing more
    assert len(session_cache_for(client_ctx)) == 0
