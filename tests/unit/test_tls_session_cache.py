"""The TLS session cache: keys, LRU bound, expiry, one cache per SSL context."""

from __future__ import annotations

import gc
import ssl
from dataclasses import dataclass
from typing import cast

import pytest

from mailoauth._core import tls_sessions
from mailoauth._core.tls_sessions import (
    MAX_SESSION_AGE,
    MAX_SESSIONS,
    SessionKey,
    TLSSessionCache,
    session_cache_for,
)
from mailoauth.security import create_ssl_context, default_ssl_context


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
