"""One clock for a test: the fake servers, the token manager and ImapClient read it.

Tests that let tokens expire move this clock forward instead of sleeping::

    clock = FakeClock()
    oauth = FakeOAuthServer(clock=clock.time)           # token lifetimes, introspection
    tokens = TokenManager(provider, clock=clock.now)    # refresh ahead of expiry
    async with ImapClient(host, port, user, tokens) as imap:  # re-auth: the manager's clock
        clock.advance(3600)                              # the session's token has expired
    provider = OAuth2TokenProvider(..., sleep=clock.sleep)   # backoff without waiting

It runs at the speed of real time plus an offset that :meth:`FakeClock.advance` grows,
so it never goes backwards, and timeouts, real servers (Dovecot asks the fake OAuth
server whether a token is active) and the event loop keep working unchanged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

__all__ = ["FakeClock"]


class FakeClock:
    """Real time shifted forward by :meth:`advance`; thread-safe (the fake OAuth server
    reads it from its HTTP threads)."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()
        #: What :meth:`sleep` was asked to wait, in order.
        self.sleeps: list[float] = []

    def time(self) -> float:
        """Seconds since the epoch, as :func:`time.time`."""
        with self._lock:
            return time.time() + self._offset

    def now(self) -> dt.datetime:
        """The current aware UTC time, as :func:`mailoauth.tokens.utcnow`."""
        return dt.datetime.fromtimestamp(self.time(), dt.timezone.utc)

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward. Raises :class:`ValueError` for a negative
        or non-finite amount: a clock that goes backwards breaks token lifetimes."""
        if not 0 <= seconds < float("inf"):
            raise ValueError(f"a clock only moves forward by a finite amount, not {seconds!r}")
        with self._lock:
            self._offset += seconds

    async def sleep(self, seconds: float) -> None:
        """An instant sleep that moves the clock forward instead (and records the wait
        in :attr:`sleeps`): pass it where code takes ``sleep=``, as the token
        providers' retry backoff does. Yields to the event loop once."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    @property
    def offset(self) -> float:
        """How far ahead of real time the clock is, in seconds."""
        return self._offset

    def __repr__(self) -> str:
        return f"<FakeClock +{self._offset:g}s>"
