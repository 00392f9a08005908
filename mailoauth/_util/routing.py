"""Routes for tests: send a connection meant for ``smtp.gmail.com:587`` (or a token
request meant for Google's endpoint) to a local test server instead.

:class:`Route` is what a routing dialer (``mailoauth._core.dialer.RoutingDialer``) and
the sandbox's HTTP transport map an address to: that is the way to route now, passed
as ``dialer=`` / ``http_client=`` to what is under test.

The process-wide table below is the deprecated way, kept for ``MailSandbox.routes()``
and the ``mailoauth_routes`` fixture: only :mod:`mailoauth.testing` sets it, for the
duration of a ``with`` block, and it applies only where no dialer was given. It is
process-wide rather than context-local so that it reaches every task and thread the
code under test starts (pytest fixtures run in tasks of their own). With no routes set,
lookups return their input unchanged, at the cost of one dict check.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["Route", "current_addresses", "override_routes", "route_address", "route_url"]


@dataclass(frozen=True)
class Route:
    """Where a (host, port) really goes, and the TLS context that trusts it."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None


_addresses: Mapping[tuple[str, int], Route] = MappingProxyType({})
_urls: Mapping[str, str] = MappingProxyType({})


def route_address(host: str, port: int) -> Route | None:
    """The route for ``host:port`` (host compared case-insensitively), or None."""
    return _addresses.get((host.lower(), port)) if _addresses else None


def current_addresses() -> Mapping[tuple[str, int], Route]:
    """The address routes in force (read-only; empty unless :func:`override_routes`)."""
    return _addresses


def route_url(url: str) -> str:
    """``url`` with a routed prefix replaced (longest prefix wins); else ``url``."""
    for prefix in sorted(_urls, key=len, reverse=True):
        if url.startswith(prefix):
            return _urls[prefix] + url[len(prefix) :]
    return url


@contextmanager
def override_routes(
    addresses: Mapping[tuple[str, int], Route], urls: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Within the block, connect to ``addresses`` and POST to ``urls`` as routed.

    Blocks nest; leaving one restores the routes that were in force before it.
    """
    global _addresses, _urls
    saved = (_addresses, _urls)
    _addresses = MappingProxyType(
        {**_addresses, **{(h.lower(), p): r for (h, p), r in addresses.items()}}
    )
    _urls = MappingProxyType({**_urls, **(urls or {})})
    try:
        yield
    finally:
        _addresses, _urls = saved
