"""Prometheus metrics of ``mailoauth poll --metrics-port`` (the ``metrics`` extra).

:class:`PollMetrics` owns a registry of its own (not prometheus-client's global one)
and serves it over HTTP from a daemon thread. What it counts:

- ``mailoauth_poll_events_total{event}``: events reported (``new_message``,
  ``mailbox_failed``), and ``mailoauth_poll_redelivered_total``: new messages reported
  again after a takeover or a crash (``redelivered=True``);
- ``mailoauth_poll_failures_total{reason, permanent}``: failed mailboxes, by the
  error's class name (a bounded set of labels, never the server's text);
- ``mailoauth_token_requests_total{credential}``: requests to each credential's token
  endpoint, i.e. refreshes (a token loaded from a shared store costs none);
- ``mailoauth_fleet_lease_moves_total{direction}``: mailboxes this worker acquired or
  released (fleet only), and ``mailoauth_poll_mailboxes``: those it watches now;
- ``mailoauth_poll_connections_open``: mail server connections open now (counted by
  the dialer that opens them: a socket counts until it is closed);
- ``mailoauth_poll_delivery_lag_seconds``: from a message's arrival (its newest
  ``Received:`` timestamp, else its ``Date:``) to its event.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any, Final

from mailoauth._core.dialer import DIRECT, Dialer, DialResult
from mailoauth.errors import ConfigurationError
from mailoauth.poll.spec import MailboxFailed, NewMessage, PollEvent

__all__ = ["LAG_BUCKETS", "CountingDialer", "PollMetrics"]

#: Histogram buckets of the delivery lag, in seconds: IDLE delivers in about a second,
#: polling within its interval (60 s by default), a backlog later.
LAG_BUCKETS: Final = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_INSTALL: Final = "--metrics-port needs prometheus-client: pip install 'mailoauth[metrics]'"


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(_INSTALL) from None
    return prometheus_client


class CountingDialer:
    """A dialer that opens connections with ``inner`` and counts those still open.

    A socket it handed out counts until it is closed (its file descriptor is -1) or
    collected; :meth:`open_count` is safe to call from another thread (the metrics
    server's).
    """

    def __init__(self, inner: Dialer = DIRECT) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
        result = await self.inner.connect(host, port, timeout=timeout)
        with self._lock:
            self._sockets.add(result.sock)
        return result

    def open_count(self) -> int:
        with self._lock:
            sockets = list(self._sockets)
        return sum(1 for sock in sockets if sock.fileno() != -1)

    def __repr__(self) -> str:
        return f"CountingDialer({self.inner!r})"


class PollMetrics:
    """The worker's metrics, in a registry of their own. Raises
    :class:`~mailoauth.errors.ConfigurationError` naming ``pip install
    'mailoauth[metrics]'`` when prometheus-client is not installed."""

    def __init__(self, dialer: CountingDialer | None = None) -> None:
        prom = _prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.dialer = dialer or CountingDialer()
        reg = self.registry
        self.events = prom.Counter(
            "mailoauth_poll_events", "Events reported, by kind", ["event"], registry=reg
        )
        self.redelivered = prom.Counter(
            "mailoauth_poll_redelivered",
            "New messages reported again (redelivered=true) after a takeover or a crash",
            registry=reg,
        )
        self.failures = prom.Counter(
            "mailoauth_poll_failures",
            "Mailbox failures, by the error's class and whether the mailbox was set aside",
            ["reason", "permanent"],
            registry=reg,
        )
        self.token_requests = prom.Counter(
            "mailoauth_token_requests",
            "Requests to the token endpoint (refreshes), by credential",
            ["credential"],
            registry=reg,
        )
        self.lease_moves = prom.Counter(
            "mailoauth_fleet_lease_moves",
            "Mailbox leases this worker acquired or released",
            ["direction"],
            registry=reg,
        )
        self.mailboxes = prom.Gauge(
            "mailoauth_poll_mailboxes", "Mailboxes this worker watches now", registry=reg
        )
        connections = prom.Gauge(
            "mailoauth_poll_connections_open",
            "Mail server connections open now",
            registry=reg,
        )
        connections.set_function(self.dialer.open_count)
        self.delivery_lag = prom.Histogram(
            "mailoauth_poll_delivery_lag_seconds",
            "Seconds from a message's arrival (newest Received:, else Date:) to its event",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        for kind in ("new_message", "mailbox_failed"):
            self.events.labels(kind)  # present (at 0) before the first event
        for direction in ("acquired", "released"):
            self.lease_moves.labels(direction)
        self._owned: frozenset[str] = frozenset()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- what is counted ---------------------------------------------------------------

    def observe(self, event: PollEvent, lag: float | None = None) -> None:
        """Count ``event``; ``lag`` is its delivery lag in seconds, when known."""
        if isinstance(event, NewMessage):
            self.events.labels("new_message").inc()
            if event.redelivered:
                self.redelivered.inc()
            if lag is not None:
                self.delivery_lag.observe(max(0.0, lag))
        elif isinstance(event, MailboxFailed):
            self.events.labels("mailbox_failed").inc()
            permanent = "true" if event.permanent else "false"
            self.failures.labels(type(event.error).__name__, permanent).inc()

    def token_request(self, credential: str) -> None:
        """Count one request to ``credential``'s token endpoint."""
        self.token_requests.labels(credential).inc()

    def watching(self, keys: Iterable[str]) -> None:
        """The mailboxes watched now: counts the leases gained and lost since the last
        call (the first call counts what the worker started with as acquired)."""
        owned = frozenset(keys)
        gained, lost = len(owned - self._owned), len(self._owned - owned)
        if gained:
            self.lease_moves.labels("acquired").inc(gained)
        if lost:
            self.lease_moves.labels("released").inc(lost)
        self._owned = owned
        self.mailboxes.set(len(owned))

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format (what a scrape gets)."""
        data: bytes = self._prom.generate_latest(self.registry)
        return data

    # -- serving -----------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve the metrics at ``http://host:port/metrics`` from a daemon thread; the
        port listened on (``port`` 0 picks a free one). Raises :class:`OSError` when
        the address cannot be bound."""
        server, thread = self._prom.start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving (waits for the serving thread, which answers within its poll
        interval)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
