"""How a connection is opened: a parameter, not a global (as httpcore's network backends).

The connection core asks a :class:`Dialer` for a connected socket, then runs TLS,
STARTTLS and its timeouts over it itself, the same whichever dialer was used:

- :class:`DirectDialer` (the default) resolves the name and connects over TCP;
- :class:`RoutingDialer` sends chosen ``(host, port)`` pairs elsewhere (the sandbox uses
  it so that code under test keeps the real provider host names) and hands the rest on;
- a proxy dialer (HTTP CONNECT, SOCKS5) fits the same shape: connect to the proxy with an
  inner dialer, do the proxy handshake on that socket, return it.

A dialer is passed as ``dialer=`` to the clients, :class:`~mailoauth.ConnectionSettings`
and :class:`~mailoauth.poll.Mailbox`; it must be safe to share between connections.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mailoauth._util import routing
from mailoauth._util.routing import Route

__all__ = [
    "DIRECT",
    "DialResult",
    "Dialer",
    "DirectDialer",
    "RoutingDialer",
    "resolve_dialer",
]


@dataclass(frozen=True)
class DialResult:
    """A connected socket, and how TLS over it is to be checked.

    ``ssl_context`` (when set) replaces the caller's TLS context, and
    ``server_hostname`` (when set) is the name the certificate is checked against
    instead of the host asked for: a dialer that routes elsewhere says what the other
    end's certificate is. The socket is handed over: the core owns and closes it.
    """

    sock: socket.socket = field(repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    server_hostname: str | None = None


@runtime_checkable
class Dialer(Protocol):
    """Opens the TCP connection for ``host:port`` (the address the caller asked for).

    Returns a connected socket; raises :class:`OSError` (the core maps it to
    :class:`~mailoauth.errors.MailConnectionError`) when it cannot. ``timeout`` is
    what the core allows the whole connect (it also enforces it).
    """

    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult: ...


class DirectDialer:
    """Resolve ``host`` and connect to its addresses in turn, over plain TCP."""

    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
        """Raises :class:`OSError` (:class:`socket.gaierror` for an unknown name) when
        no address accepts; the message names every address tried."""
        loop = asyncio.get_running_loop()
        try:
            # An address literal needs no lookup: resolved here, without the thread
            # pool round trip (as asyncio's create_connection does for IP literals).
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        errors: list[str] = []
        last: OSError | None = None
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                # asyncio's strerror ("Connect call failed (...)") does not say why.
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                errors.append(f"{address[0]} port {port}: {reason}")
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return DialResult(sock)
        if last is None:  # getaddrinfo returned nothing (it normally raises instead)
            raise OSError(f"{host} resolved to no address")
        raise OSError(last.errno, "; ".join(errors))

    def __repr__(self) -> str:
        return "DirectDialer()"


#: The default dialer: direct TCP.
DIRECT = DirectDialer()


class RoutingDialer:
    """Connect to ``routes[(host, port)]`` instead of ``host:port`` (host compared
    case-insensitively), trusting the route's TLS context and checking the route's
    host name; any other address goes to ``fallback`` unchanged.

    The connection keeps the name asked for (in errors, in OAUTHBEARER's ``host=``):
    only where the bytes go changes.
    """

    def __init__(
        self, routes: Mapping[tuple[str, int], Route], *, fallback: Dialer = DIRECT
    ) -> None:
        self.routes: Mapping[tuple[str, int], Route] = {
            (h.lower(), p): r for (h, p), r in routes.items()
        }
        self.fallback = fallback

    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
        """Raises as the fallback dialer does."""
        route = self.routes.get((host.lower(), port))
        if route is None:
            return await self.fallback.connect(host, port, timeout=timeout)
        result = await self.fallback.connect(route.host, route.port, timeout=timeout)
        return DialResult(
            result.sock,
            route.ssl_context or result.ssl_context,
            result.server_hostname or route.host,
        )

    def __repr__(self) -> str:
        return f"RoutingDialer({len(self.routes)} routes, fallback={self.fallback!r})"


def resolve_dialer(dialer: Dialer | None) -> Dialer:
    """``dialer``, or the default: :data:`DIRECT`, unless the deprecated process-wide
    route table (``MailSandbox.routes()``) is in force, whose routes then apply."""
    if dialer is not None:
        return dialer
    legacy = routing.current_addresses()
    return RoutingDialer(legacy) if legacy else DIRECT
