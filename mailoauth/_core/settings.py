"""One value for how to reach a mail server: :class:`ConnectionSettings`.

The three clients, :class:`~mailoauth.poll.Mailbox`, the poll watchers, the pytest
plugin and the command all take or build one, so that the connection parameters are
declared, documented and checked in this one place.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final, TypedDict

from mailoauth._core.auth import choose_mechanism
from mailoauth._core.dialer import Dialer
from mailoauth._core.proxy import ProxyDialer, ProxyURL, proxy_from_environment
from mailoauth._providers import MS_SHARED_MAILBOX_HINT
from mailoauth._util.text import looks_like_token, refuse_controls, shown
from mailoauth.errors import ConfigurationError
from mailoauth.security import SecurityOptions, TransportPlan, plan_transport

__all__ = [
    "CONNECT_TIMEOUT_FACTOR",
    "DEFAULT_MIN_RATE",
    "DEFAULT_TIMEOUT",
    "ConnectionOptions",
    "ConnectionSettings",
    "check_login_name",
]

#: Seconds one reply (a greeting, a status line, the start of a response) may take as a
#: whole before the connection is closed.
DEFAULT_TIMEOUT = 30.0
#: ``connect_timeout`` defaults to this many times ``timeout``: connecting spans several
#: replies, a TLS handshake and a token request, each of which may take a while, but
#: together they may not take for ever.
CONNECT_TIMEOUT_FACTOR: Final = 2.0
#: The slowest a long transfer may go, in bytes per second, once ``timeout`` has been
#: spent: a transfer of N bytes may take ``timeout + N / min_rate`` seconds. 1 KiB/s is
#: far below any working link (a 50 MB message at 100 KB/s is well inside), and far
#: above a server that drips a byte at a time to hold a connection.
DEFAULT_MIN_RATE: Final = 1024.0


class ConnectionOptions(TypedDict, total=False):
    """The keyword options every client takes (see :class:`ConnectionSettings`)."""

    ssl_context: ssl.SSLContext | None
    timeout: float
    connect_timeout: float | None
    min_rate: float
    mechanism: str | None
    allow_insecure_auth: bool
    dialer: Dialer | None
    proxy: str | ProxyURL | None
    trust_env: bool
    tls_resumption: bool


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach one mail server; checked once, when made.

    Arguments:
        host: the server's name, as users type it (``imap.gmail.com``).
        port: the server's port (993).
        security: :class:`~mailoauth.SecurityOptions` (``AUTO``: implicit TLS on
            465/993/995, required STARTTLS elsewhere).
        ssl_context: the TLS context (default: the system's CAs, TLS 1.2+).
        timeout: seconds one reply may take as a whole (a long transfer gets one more
            second per ``min_rate`` bytes).
        connect_timeout: seconds TCP, TLS, greeting, STARTTLS, the token and AUTH may
            take together (default: :data:`CONNECT_TIMEOUT_FACTOR` x ``timeout``).
        min_rate: the slowest a long transfer may go, in bytes per second.
        mechanism: ``"XOAUTH2"`` or ``"OAUTHBEARER"`` (default: OAUTHBEARER if offered).
        allow_insecure_auth: with ``SecurityOptions.NONE``, send the token in clear.
        dialer: how the TCP connection is opened (default: directly; the sandbox's
            :attr:`~mailoauth.testing.sandbox.MailSandbox.dialer` reaches it under the
            providers' real host names; see :mod:`mailoauth._core.dialer`).
        proxy: an HTTP CONNECT (``http://user:pass@host:port``) or SOCKS5
            (``socks5://user:pass@host:port``) proxy to reach the server through
            (needs ``pip install 'mailoauth[proxy]'``); the proxy itself is reached
            with ``dialer``. Kept as a :class:`~mailoauth._core.proxy.ProxyURL`, whose
            repr hides the password.
        trust_env: without ``proxy``, use the proxy the environment names
            (``ALL_PROXY``, skipped for hosts in ``NO_PROXY``); off by default.
        tls_resumption: offer the TLS session of an earlier connection with the same
            ``ssl_context``, host, port, security and route, for an abbreviated
            handshake (on by default; see :mod:`mailoauth._core.tls_sessions`).

    Raises :class:`~mailoauth.errors.ConfigurationError` naming the argument that is
    wrong: an empty or malformed host, a port outside 1-65535, a non-positive timeout,
    connect timeout or rate, an unknown mechanism, or a plaintext connection without
    ``allow_insecure_auth``. Make variants with :meth:`replace`.
    """

    host: str
    port: int
    security: SecurityOptions = SecurityOptions.AUTO
    _: KW_ONLY
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float | None = None
    min_rate: float = DEFAULT_MIN_RATE
    mechanism: str | None = None
    allow_insecure_auth: bool = False
    dialer: Dialer | None = field(default=None, compare=False)
    proxy: str | ProxyURL | None = None
    trust_env: bool = False
    tls_resumption: bool = True

    def __post_init__(self) -> None:
        host, port = self.host, self.port
        if isinstance(host, str) and looks_like_token(host):
            raise ConfigurationError(
                "the host looks like an access token, not a host name (so it is not "
                "shown): is the token in the host's place? The order is (host, port, "
                "username, token, security)"
            )
        if not isinstance(host, str) or not host or " " in refuse_controls(host, "host"):
            raise ConfigurationError(f"host {host!r} is not a valid host name")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"port must be an int from 1 to 65535, not {port!r}")
        if not _positive(self.timeout, finite=False):
            raise ConfigurationError(f"timeout must be positive seconds, not {self.timeout!r}")
        if self.connect_timeout is not None and not _positive(self.connect_timeout, finite=False):
            raise ConfigurationError(
                f"connect_timeout must be positive seconds (or None for "
                f"{CONNECT_TIMEOUT_FACTOR:g} x timeout), not {self.connect_timeout!r}"
            )
        if not _positive(self.min_rate):
            raise ConfigurationError(
                f"min_rate must be a positive number of bytes per second, not {self.min_rate!r}"
            )
        if self.mechanism is not None:
            choose_mechanism((self.mechanism,), self.mechanism, "")  # validates
        if self.dialer is not None and not callable(getattr(self.dialer, "connect", None)):
            raise ConfigurationError(
                f"dialer must have an async connect(host, port, *, timeout) method "
                f"(see mailoauth.Dialer), not {self.dialer!r}"
            )
        object.__setattr__(self, "min_rate", float(self.min_rate))
        if self.proxy is not None:
            object.__setattr__(self, "proxy", ProxyURL.parse(self.proxy))
            ProxyDialer(self.proxy)  # python-socks is installed
        # The last check: a SecurityOptions member, and no token in clear unasked.
        self.plan  # noqa: B018

    @property
    def plan(self) -> TransportPlan:
        """What :attr:`security` means on :attr:`port`: implicit TLS, STARTTLS or
        neither, or (``AUTO`` on an unknown port) for the server to decide."""
        return plan_transport(
            self.security, self.port, allow_insecure_auth=self.allow_insecure_auth
        )

    @property
    def effective_connect_timeout(self) -> float:
        """:attr:`connect_timeout`, or its default from :attr:`timeout`."""
        if self.connect_timeout is None:
            return CONNECT_TIMEOUT_FACTOR * self.timeout
        return self.connect_timeout

    @property
    def effective_dialer(self) -> Dialer | None:
        """What opens the connection: :attr:`dialer`, through :attr:`proxy` (or, with
        :attr:`trust_env`, the environment's proxy for :attr:`host`) when there is one.
        Raises :class:`~mailoauth.errors.ConfigurationError` for a malformed
        ``ALL_PROXY`` or a proxy without python-socks installed."""
        proxy = self.proxy
        if proxy is None and self.trust_env:
            proxy = proxy_from_environment(self.host)
        if proxy is None:
            return self.dialer
        return ProxyDialer(proxy, inner=self.dialer)

    def replace(self, **changes: Any) -> ConnectionSettings:
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)

    def options(self) -> ConnectionOptions:
        """The keyword options, as the clients' constructors take them."""
        return ConnectionOptions(
            ssl_context=self.ssl_context,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            min_rate=self.min_rate,
            mechanism=self.mechanism,
            allow_insecure_auth=self.allow_insecure_auth,
            dialer=self.dialer,
            proxy=self.proxy,
            trust_env=self.trust_env,
            tls_resumption=self.tls_resumption,
        )


def check_login_name(username: object) -> str:
    """``username`` checked as the mailbox to log in to (the SASL ``user=`` /
    ``a=``): a shared mailbox's address when it is opened with a delegate's token.

    Raises :class:`~mailoauth.errors.ConfigurationError` for a non-string, an empty one,
    one with control characters, and the basic-auth form ``delegate\\shared``
    (``user\\alias``), which XOAUTH2 and OAUTHBEARER servers do not understand: the
    message names the OAuth way (the shared mailbox as username, the delegate's token).
    """
    if not isinstance(username, str) or not refuse_controls(username, "username"):
        raise ConfigurationError("username must be non-empty")
    if "\\" in username:
        delegate, _, mailbox = username.rpartition("\\")
        raise ConfigurationError(
            f"username '{shown(username, 'username')}' has the basic-auth form "
            f"'delegate\\shared' (user\\alias), which OAuth servers refuse: use "
            f"username='{shown(mailbox, 'mailbox')}' (the mailbox to open, as its full "
            f"address) with the token of '{shown(delegate, 'delegate')}'; "
            f"{MS_SHARED_MAILBOX_HINT}"
        )
    return username


def _positive(value: object, *, finite: bool = True) -> bool:
    """A number above 0 (not a bool, not NaN; infinite only if not ``finite``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value > 0 and (math.isfinite(value) or not finite)
