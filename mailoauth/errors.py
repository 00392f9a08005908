"""The one exception tree of mailoauth.

Every error the library raises on purpose is a :class:`MailOAuthError`. Foreign
exceptions (``OSError``, ``ssl.SSLError``, httpx, aiosmtplib, aioimaplib) are mapped
onto this tree at the I/O boundaries, explicitly and with ``raise ... from exc``.

    MailOAuthError                             .retryable: may the same call succeed later?
    ├── ConfigurationError (ValueError)        wrong arguments; fix the call
    │   └── InsecureTransportError             a bearer token would cross plaintext
    ├── UsageError                             a client used in the wrong state; fix the code
    ├── TokenError                             getting an access token failed
    │   ├── TokenExpiredError                  a static token has expired; pass a provider
    │   ├── PermanentTokenError                the grant is dead (invalid_grant, ...)
    │   ├── TransientTokenError                5xx, timeout, network: try again later
    │   └── LockLostError                      a token store lock lapsed: stale save refused
    ├── AuthenticationError                    the mail server rejected the token
    ├── TransportError                         the network failed us (retryable)
    │   ├── MailConnectionError (ConnectionError)  connecting or talking failed
    │   │   ├── TLSError                       handshake, certificate, STARTTLS refused
    │   │   └── ConnectionLostError            closed, reset or refused by the server
    │   └── MailTimeoutError (TimeoutError)    a network wait ran out; connection closed
    ├── ProtocolError                          the server said something unexpected
    │   └── LimitExceededError                 a line or response over a named limit
    └── CommandError                           the server refused a command (NO / -ERR / 5xx)

``retryable`` is the one notion of "temporary": True for transport errors, transient
token errors, protocol errors (a new connection may fare better), a lapsed lock, an
authentication failure the server called temporary and a refusal that is not
permanent by its code; False for everything else (a dead grant, a wrong argument, a
misuse, a token rejected twice, a refusal with a permanent code).

Deprecated: a :class:`UsageError` for a client that is not open is also a
``ConnectionLostError``, and one for a missing ``select()`` also a ``ConfigurationError``
(what those raised before UsageError existed), so that old ``except`` clauses keep
working; catch UsageError.

Messages name the cause and the fix. None of them ever contains an access token, a
refresh token, a client secret or a password.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Final

if TYPE_CHECKING:
    from mailoauth.sasl import ErrorChallenge

__all__ = [
    "PERMANENT_RESPONSE_CODES",
    "AuthenticationError",
    "CommandError",
    "ConfigurationError",
    "ConnectionLostError",
    "InsecureTransportError",
    "LimitExceededError",
    "LockLostError",
    "MailConnectionError",
    "MailOAuthError",
    "MailTimeoutError",
    "PermanentTokenError",
    "ProtocolError",
    "TLSError",
    "TokenError",
    "TokenExpiredError",
    "TransientTokenError",
    "TransportError",
    "UsageError",
]

#: IMAP response codes (RFC 5530) and POP3 ones (RFC 3206) that will not pass by
#: waiting: a :class:`CommandError` carrying one is not :attr:`~MailOAuthError.retryable`.
#: Any other code, or none ([UNAVAILABLE], [LIMIT], [INUSE], [SYS/TEMP], a throttling
#: NO...), is.
PERMANENT_RESPONSE_CODES: Final = frozenset(
    {"NONEXISTENT", "NOPERM", "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "CANNOT"}
)

# Only for a CommandError built without its fields (by a caller, or code written before
# they existed): the raise sites in mailoauth pass the fields themselves.
_SMTP_REPLY = re.compile(r"([2-5][0-9][0-9])(?:[ -]+([245]\.[0-9]{1,3}\.[0-9]{1,3})\b)?")
_RESPONSE_CODE = re.compile(r"(?:[+-]?[A-Za-z]+ )?\[([A-Za-z0-9/._-]+)(?: [^\]\r\n]*)?\]")


class MailOAuthError(Exception):
    """Root of every error mailoauth raises on purpose."""

    _retryable: ClassVar[bool] = False

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed if tried again later, unchanged (after a
        backoff, on a new connection). False means waiting will not help: fix the
        arguments, the code, the grant or the account first."""
        return self._retryable


class ConfigurationError(MailOAuthError, ValueError):
    """The arguments do not make sense together; the message says which to change."""


class InsecureTransportError(ConfigurationError):
    """A bearer token would be sent over a connection without TLS.

    Raised before anything is sent. Use TLS (``SecurityOptions.AUTO``) or, for a test
    server on loopback only, pass ``allow_insecure_auth=True``.
    """


class UsageError(MailOAuthError):
    """A client was used in a state that does not allow the call: a command before
    ``connect()`` (or ``async with``) or after ``aclose()``, a message command before
    ``select()``. Nothing was sent; the message names the call to make first."""


class TokenError(MailOAuthError):
    """An access token could not be obtained."""


class TokenExpiredError(TokenError):
    """A static access token has expired and nothing can refresh it."""


class PermanentTokenError(TokenError):
    """The token endpoint refused the grant for good; retrying will not help.

    ``error`` and ``error_description`` are the OAuth error fields when the endpoint sent
    them (``invalid_grant``, ``invalid_client``, ``unauthorized_client``, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        error_description: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.error_description = error_description
        self.status_code = status_code


class TransientTokenError(TokenError):
    """The token endpoint failed in a way that may pass (5xx, timeout, network).

    ``status_code`` is the HTTP status when there was one; ``retry_after`` the seconds
    the endpoint asked to wait (its ``Retry-After`` header, with a 429 or 503), else
    None: a caller retrying the same credential should wait at least that long.
    """

    _retryable = True

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class LockLostError(TokenError):
    """A token store refused a save because this holder's lock had lapsed.

    The lease ran out (a stall, a paused VM) and another worker holds the lock now, so
    it may have saved a newer grant: overwriting it could lose the newest refresh token.
    Nothing was written; the next call loads what the store holds and carries on.
    """

    _retryable = True


class AuthenticationError(MailOAuthError):
    """The mail server rejected the bearer token (after the one retry).

    ``server_reply`` is the server's final reply line (never containing our token);
    ``challenge`` is the decoded SASL error challenge when the server sent one;
    ``mechanism`` is the SASL mechanism that was tried; ``host`` and ``port`` the
    server's. ``temporary`` (the same as :attr:`retryable`) is True when the server
    could not check the token right now (IMAP ``[UNAVAILABLE]``, SMTP 454, POP3
    ``[SYS/TEMP]``): the token was not judged, and trying later may succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        server_reply: str = "",
        challenge: ErrorChallenge | None = None,
        mechanism: str = "",
        temporary: bool = False,
        host: str = "",
        port: int | None = None,
    ) -> None:
        super().__init__(message)
        self.server_reply = server_reply
        self.challenge = challenge
        self.mechanism = mechanism
        self.temporary = temporary
        self.host = host
        self.port = port

    @property
    def retryable(self) -> bool:
        return self.temporary


class TransportError(MailOAuthError):
    """The network between us and the mail server failed: a timeout, a refused or
    lost connection, a TLS failure. The connection is closed; a new one may work."""

    _retryable = True


class MailConnectionError(TransportError, ConnectionError):
    """Connecting to, or talking to, the mail server failed."""


class TLSError(MailConnectionError):
    """TLS could not be set up: handshake or certificate failure, or STARTTLS refused."""


class ConnectionLostError(MailConnectionError):
    """The server closed the connection, or it was reset; or, while connecting, refused
    it (the message says which, with the host and port)."""


class MailTimeoutError(TransportError, TimeoutError):
    """A network wait ran out. The connection has been closed and is not reused."""


class ProtocolError(MailOAuthError):
    """The server sent something the protocol does not allow here."""

    _retryable = True


class LimitExceededError(ProtocolError):
    """A line or response went over one of the named limits; the connection is closed."""


# Deprecated bases of UsageError. Before it, a command on a client that was not open
# raised ConnectionLostError, and an IMAP message command before select() raised
# ConfigurationError. What is raised now is a UsageError that is also the old class, so
# that an existing ``except`` clause still catches it; catch UsageError instead: a later
# release drops the old bases. Neither is retryable.
class _NotOpenError(UsageError, ConnectionLostError):
    """A command on a client that is not open: :class:`UsageError` (and, for old code,
    a :class:`ConnectionLostError`, which it used to be)."""

    _retryable = False


class _NotSelectedError(UsageError, ConfigurationError):
    """A mailbox command before ``select()``: :class:`UsageError` (and, for old code, a
    :class:`ConfigurationError`, which it used to be)."""


class CommandError(MailOAuthError):
    """The server refused a command (IMAP ``NO``/``BAD``, POP3 ``-ERR``, SMTP 4xx/5xx).

    Attributes, for code to read instead of the message:

    - ``command``: the command's name (never its secret arguments);
    - ``reply``: the server's answer as text;
    - ``code``: the SMTP reply code (``550``), else None;
    - ``enhanced_code``: the SMTP enhanced status code (RFC 3463, ``"5.7.1"``), else None;
    - ``response_code``: the IMAP response code (RFC 5530, ``"UNAVAILABLE"``) or POP3
      one (RFC 2449/3206, ``"SYS/TEMP"``) in upper case, without brackets or
      arguments, else None;
    - ``host`` and ``port``: the server's.

    :attr:`retryable` follows from them: False for an SMTP 5xx reply and for a code in
    :data:`PERMANENT_RESPONSE_CODES`, True otherwise (4xx, throttling, a refusal
    without a code), unless the raise site knows better and says so (``retryable=``,
    e.g. a server without IDLE). When none of the codes is given, they are read from
    ``reply``.
    """

    def __init__(
        self,
        message: str,
        *,
        command: str = "",
        reply: str = "",
        code: int | None = None,
        enhanced_code: str | None = None,
        response_code: str | None = None,
        host: str = "",
        port: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.command = command
        self.reply = reply
        if code is None and enhanced_code is None and response_code is None and reply:
            code, enhanced_code, response_code = _codes_from_text(reply)
        self.code = code
        self.enhanced_code = enhanced_code
        self.response_code = None if response_code is None else response_code.upper()
        self.host = host
        self.port = port
        self._given_retryable = retryable

    @property
    def retryable(self) -> bool:
        if self._given_retryable is not None:
            return self._given_retryable
        if self.code is not None and 500 <= self.code < 600:
            return False
        return self.response_code not in PERMANENT_RESPONSE_CODES


def _codes_from_text(reply: str) -> tuple[int | None, str | None, str | None]:
    """(SMTP code, enhanced status code, IMAP/POP3 response code) found in ``reply``."""
    smtp = _SMTP_REPLY.match(reply)
    if smtp is not None:
        return int(smtp.group(1)), smtp.group(2), None
    found = _RESPONSE_CODE.match(reply)
    return None, None, None if found is None else found.group(1)
