"""TLS session resumption: the sessions a client family may offer again.

A poller reconnects to the same few servers all the time; offering the session (a TLS
1.3 ticket, a TLS 1.2 ticket or session id) of an earlier connection lets the server
skip the certificate, the key exchange's signature and, on our side, the certificate
check: an abbreviated handshake (RFC 8446 §2.2, RFC 5077).

Sessions are kept per :class:`ssl.SSLContext` (one :class:`TLSSessionCache` each, held
in a :class:`weakref.WeakKeyDictionary`, so it lives as long as the context: the clients
of one family share their context, and the ssl module refuses a session of another
context anyway) and, within it, per :data:`SessionKey`: the host and port asked for, the
name the certificate was checked against, implicit TLS or STARTTLS, and the route (the
dialer, by its secret-free repr). A session is never offered to another host, port,
security setting, route or context. The cache is bounded (LRU, :data:`MAX_SESSIONS`
keys per context) and a session past its lifetime (the server's hint, capped at
:data:`MAX_SESSION_AGE`) is dropped when looked up.

A server that does not resume simply runs a full handshake: resumption is never a
reason for a connection to fail.
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Final

__all__ = [
    "MAX_SESSIONS",
    "MAX_SESSION_AGE",
    "SessionKey",
    "TLSSessionCache",
    "session_cache_for",
]

#: Most sessions kept per SSL context (one per key); the least recently used goes first.
MAX_SESSIONS: Final = 256
#: Longest a session is offered again, in seconds, whatever lifetime the server
#: announces: TLS 1.3 caps ticket lifetimes at 7 days (RFC 8446 §4.6.1); a day is
#: plenty for reconnects and keeps an old key out of use.
MAX_SESSION_AGE: Final = 24 * 3600

#: ``(host, port, tls_server_name, mode, route)``: host lower-cased as asked for,
#: ``mode`` ``"implicit"`` or ``"starttls"``, ``route`` the dialer's repr.
SessionKey = tuple[str, int, str, str, str]


class TLSSessionCache:
    """Sessions to offer again, one per :data:`SessionKey`, for one SSL context.

    Thread-safe (a context may be shared by clients on several event loops).
    ``clock`` returns seconds since the epoch, as ``SSLSession.time`` counts them.
    """

    def __init__(
        self, max_sessions: int = MAX_SESSIONS, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be positive")
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: collections.OrderedDict[SessionKey, ssl.SSLSession] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, key: SessionKey) -> ssl.SSLSession | None:
        """The session to offer for ``key``, or None (none kept, or it expired)."""
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if self._expired(session):
                del self._sessions[key]
                return None
            self._sessions.move_to_end(key)
            return session

    def put(self, key: SessionKey, session: ssl.SSLSession) -> None:
        """Keep ``session`` for ``key`` (replacing the one kept: a newer ticket), unless
        it has already expired; the least recently used key goes past the bound."""
        if self._expired(session):
            return
        with self._lock:
            self._sessions[key] = session
            self._sessions.move_to_end(key)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def discard(self, key: SessionKey) -> None:
        """Forget the session for ``key`` (if any)."""
        with self._lock:
            self._sessions.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: ssl.SSLSession) -> bool:
        lifetime = min(session.timeout, MAX_SESSION_AGE)
        return self._clock() >= session.time + lifetime

    def __repr__(self) -> str:
        return f"<TLSSessionCache {len(self)}/{self.max_sessions} sessions>"


_CACHES: weakref.WeakKeyDictionary[ssl.SSLContext, TLSSessionCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def session_cache_for(context: ssl.SSLContext) -> TLSSessionCache:
    """The session cache of ``context`` (made on first use; goes with the context)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(context)
        if cache is None:
            cache = _CACHES[context] = TLSSessionCache()
        return cache
