"""Connection security: :class:`SecurityOptions`, the TLS policy, and the one place
that builds an :class:`ssl.SSLContext`.

``AUTO`` means TLS either way, found out without ever sending plaintext: implicit TLS
on the well-known implicit-TLS ports (465, 993, 995), required STARTTLS on the
well-known STARTTLS ports (25, 110, 143, 587), and elsewhere whatever the server speaks
-- a plaintext greeting means *required* STARTTLS, silence means a server waiting for
the TLS ClientHello (implicit TLS on a port not known for it). Unlike the
Auto of some other libraries it never falls back to plaintext: a server that does not
offer STARTTLS is an error.
"""

from __future__ import annotations

import enum
import functools
import ssl
from dataclasses import dataclass
from typing import Final

from mailoauth.errors import ConfigurationError, InsecureTransportError

__all__ = [
    "IMPLICIT_TLS_PORTS",
    "STARTTLS_PORTS",
    "SecurityOptions",
    "TransportPlan",
    "create_ssl_context",
    "default_ssl_context",
    "plan_transport",
]

#: SMTPS (RFC 8314), IMAPS, POP3S.
IMPLICIT_TLS_PORTS: Final = frozenset({465, 993, 995})
#: SMTP, POP3, IMAP, submission: a server there greets in plaintext. AUTO never probes
#: them with a TLS ClientHello, which an MTA that delays its greeting on purpose
#: (Postfix postscreen on 25) would count as a client talking before its turn.
STARTTLS_PORTS: Final = frozenset({25, 110, 143, 587})


class SecurityOptions(enum.Enum):
    """How a client secures its connection."""

    #: Implicit TLS on 465/993/995, required STARTTLS elsewhere unless the server turns
    #: out to speak TLS first (it sends no greeting: see
    #: :data:`mailoauth._core.connection.TLS_DETECT_WAIT`). Never plaintext.
    AUTO = "auto"
    #: TLS from the first byte (SMTPS, IMAPS, POP3S).
    SSL_IMPLICIT = "ssl_implicit"
    #: Plain connect, then STARTTLS/STLS; an error if the server does not offer it.
    SSL_EXPLICIT = "ssl_explicit"
    #: No TLS. A bearer token is sent only with ``allow_insecure_auth=True``.
    NONE = "none"


@dataclass(frozen=True)
class TransportPlan:
    """What the connection core will do: TLS at connect, STARTTLS after the greeting,
    or neither.

    ``detect`` (``AUTO`` only): let the server decide between the two. Before the
    first byte the core waits briefly for a plaintext greeting (when ``implicit_tls``
    is false) and starts the TLS handshake if none comes; a plaintext answer to the
    handshake means a STARTTLS server, dialled again for STARTTLS. Nothing but a TLS
    ClientHello is ever sent before TLS is up.
    """

    implicit_tls: bool
    starttls: bool
    detect: bool = False

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self.starttls


def plan_transport(
    security: SecurityOptions, port: int, *, allow_insecure_auth: bool = False
) -> TransportPlan:
    """Resolve ``security`` for ``port`` into a :class:`TransportPlan`.

    Raises :class:`~mailoauth.errors.InsecureTransportError` for ``NONE`` unless
    ``allow_insecure_auth`` is true: a bearer token would otherwise cross the network in
    plaintext.
    """
    if not isinstance(security, SecurityOptions):
        raise ConfigurationError(f"security must be a SecurityOptions member, not {security!r}")
    if security is SecurityOptions.SSL_IMPLICIT:
        return TransportPlan(implicit_tls=True, starttls=False)
    if security is SecurityOptions.SSL_EXPLICIT:
        return TransportPlan(implicit_tls=False, starttls=True)
    if security is SecurityOptions.AUTO:
        if port in STARTTLS_PORTS:
            return TransportPlan(implicit_tls=False, starttls=True)
        implicit = port in IMPLICIT_TLS_PORTS
        return TransportPlan(implicit_tls=implicit, starttls=not implicit, detect=True)
    if not allow_insecure_auth:
        raise InsecureTransportError(
            "SecurityOptions.NONE would send the bearer token in plaintext. Use "
            "SecurityOptions.AUTO (TLS), or for a test server on loopback pass "
            "allow_insecure_auth=True"
        )
    return TransportPlan(implicit_tls=False, starttls=False)


def create_ssl_context(*, cafile: str | None = None) -> ssl.SSLContext:
    """A client context with certificate and host name verification on, TLS 1.2+.

    ``cafile`` adds a private CA (test servers, corporate CAs).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """The context of every connection given none: :func:`create_ssl_context`, made
    once per process. Loading the system's CAs costs milliseconds and memory per
    context, and connections must share a context to resume each other's TLS sessions
    (see :mod:`mailoauth._core.tls_sessions`). Not to be modified; the system's CAs
    (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` included) are read when it is first made."""
    return create_ssl_context()
