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

What it costs, and the policy that follows (CPython 3.11, OpenSSL 3.0). The ssl module
copies a session each time it is read (``SSLObject.session``) or offered
(``wrap_bio(session=...)``) by encoding and re-parsing it, the server's certificate
included: ~0.15 ms of CPU each, about what an abbreviated handshake saves over a full
one; and taking every connection's new ticket cost ~6 KB per connection held open
(``benchmarks/idle_memory.py``; nothing once the policy below was in). So a connection
takes the server's new session only when it has to:

- a session the server resumed is offered again (RFC 8446 §C.4 would have each TLS 1.3
  ticket used once, for unlinkability; the connections of one client family to one
  server are linked by their account anyway, and no early data is sent), unless the
  server turned out to take each ticket only once (it refused a session it had
  resumed before): then every connection takes the next ticket;
- a server that refuses :data:`GIVE_UP_AFTER` fresh sessions in a row (one that never
  resumes, as Dovecot in its default high-security mode) is offered none, and none is
  taken from it, for :data:`GIVE_UP_FOR` seconds.
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
    "GIVE_UP_AFTER",
    "GIVE_UP_FOR",
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
#: Fresh sessions refused in a row after which a server is taken for one that never
#: resumes.
GIVE_UP_AFTER: Final = 3
#: Seconds such a server is offered no session (and none is taken from it).
GIVE_UP_FOR: Final = 3600.0

#: ``(host, port, tls_server_name, mode, route)``: host lower-cased as asked for,
#: ``mode`` ``"implicit"`` or ``"starttls"``, ``route`` the dialer's repr.
SessionKey = tuple[str, int, str, str, str]


class _Entry:
    """What is known of one key: its session, and how the server treats sessions."""

    __slots__ = ("off_until", "refusals", "refused", "session", "single_use", "uses")

    def __init__(self) -> None:
        self.session: ssl.SSLSession | None = None
        self.uses = 0  # connections that resumed with this session
        self.refused = False  # this session was refused at least once
        self.single_use = False  # the server takes each ticket once
        self.refusals = 0  # fresh sessions refused in a row
        self.off_until = 0.0  # no session offered or taken before this time


class TLSSessionCache:
    """Sessions to offer again, one per :data:`SessionKey`, for one SSL context, and
    what the connection should do with its own (:meth:`outcome`).

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
        self._entries: collections.OrderedDict[SessionKey, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: SessionKey) -> ssl.SSLSession | None:
        """The session to offer for ``key``, or None (none kept, it expired, or the
        server does not resume)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.session is None:
                return None
            if self._expired(entry.session):
                entry.session = None
                return None
            self._entries.move_to_end(key)
            return entry.session

    def put(self, key: SessionKey, session: ssl.SSLSession) -> None:
        """Keep ``session`` for ``key`` (replacing the one kept), unless it has already
        expired; the least recently used key goes past the bound."""
        if self._expired(session):
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.session = session
            entry.uses = 0
            entry.refused = False
            entry.off_until = 0.0
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_sessions:
                self._entries.popitem(last=False)

    def outcome(self, key: SessionKey, offered: ssl.SSLSession | None, resumed: bool) -> bool:
        """Record how a handshake for ``key`` went (``offered``: the session it offered,
        from :meth:`get`); return whether the connection should keep its own session
        with :meth:`put` (see the module docstring for the policy)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return True
            if offered is None:
                return entry.off_until <= self._clock()
            if resumed:
                if entry.session is offered:
                    entry.uses += 1
                entry.refusals = 0
                return entry.single_use
            if entry.session is offered:
                if entry.uses:
                    entry.single_use = True  # resumed it before, refuses it now
                elif not entry.refused:
                    entry.refused = True
                    entry.refusals += 1
                    if entry.refusals >= GIVE_UP_AFTER:
                        entry.session = None
                        entry.off_until = self._clock() + GIVE_UP_FOR
                        return False
            return True

    def wants(self, key: SessionKey) -> bool:
        """Whether a connection that :meth:`outcome` told to keep its session still
        needs to read it: not once another connection has kept a fresh one for ``key``
        (a poller's first connections all open before any has a session, and reading
        one is the ~0.15 ms copy the module docstring speaks of)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.session is None or entry.refused or entry.single_use:
                return True
            return self._expired(entry.session)

    def discard(self, key: SessionKey) -> None:
        """Forget everything about ``key``."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        """How many keys have a session to offer."""
        return sum(1 for entry in self._entries.values() if entry.session is not None)

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
