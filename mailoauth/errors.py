"""The one exception tree of mailoauth.

Every error the library raises on purpose is a :class:`MailOAuthError`. Foreign
exceptions (``OSError``, ``ssl.SSLError``, httpx, aiosmtplib, aioimaplib) are mapped
onto this tree at the I/O boundaries, explicitly and with ``raise ... from exc``.

    MailOAuthError
    ├── ConfigurationError (ValueError)        wrong arguments; fix the call
    │   └── InsecureTransportError             a bearer token would cross plaintext
    ├── TokenError                             getting an access token failed
    │   ├── TokenExpiredError                  a static token has expired; pass a provider
    │   ├── PermanentTokenError                the grant is dead (invalid_grant, ...)
    │   ├── TransientTokenError                5xx, timeout, network: try again later
    │   └── LockLostError                      a token store lock lapsed: stale save refused
    ├── AuthenticationError                    the mail server rejected the token
    ├── MailConnectionError (ConnectionError)  connecting or talking to the server failed
    │   ├── TLSError                           handshake, certificate, STARTTLS refused
    │   └── ConnectionLostError                the server closed the connection
    ├── MailTimeoutError (TimeoutError)        a network wait ran out; connection closed
    ├── ProtocolError                          the server said something unexpected
    │   └── LimitExceededError                 a line or response over a named limit
    └── CommandError                           the server refused a command (NO / -ERR / 5xx)

Messages name the cause and the fix. None of them ever contains an access token, a
refresh token, a client secret or a password.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailoauth.sasl import ErrorChallenge

__all__ = [
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
]


class MailOAuthError(Exception):
    """Root of every error mailoauth raises on purpose."""


class ConfigurationError(MailOAuthError, ValueError):
    """The arguments do not make sense together; the message says which to change."""


class InsecureTransportError(ConfigurationError):
    """A bearer token would be sent over a connection without TLS.

    Raised before anything is sent. Use TLS (``SecurityOptions.AUTO``) or, for a test
    server on loopback only, pass ``allow_insecure_auth=True``.
    """


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
    """The token endpoint failed in a way that may pass (5xx, timeout, network)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LockLostError(TokenError):
    """A token store refused a save because this holder's lock had lapsed.

    The lease ran out (a stall, a paused VM) and another worker holds the lock now, so
    it may have saved a newer grant: overwriting it could lose the newest refresh token.
    Nothing was written; the next call loads what the store holds and carries on.
    """


class AuthenticationError(MailOAuthError):
    """The mail server rejected the bearer token (after the one retry).

    ``server_reply`` is the server's final reply line (never containing our token);
    ``challenge`` is the decoded SASL error challenge when the server sent one;
    ``mechanism`` is the SASL mechanism that was tried.
    """

    def __init__(
        self,
        message: str,
        *,
        server_reply: str = "",
        challenge: ErrorChallenge | None = None,
        mechanism: str = "",
        temporary: bool = False,
    ) -> None:
        super().__init__(message)
        self.server_reply = server_reply
        self.challenge = challenge
        self.mechanism = mechanism
        self.temporary = temporary


class MailConnectionError(MailOAuthError, ConnectionError):
    """Connecting to, or talking to, the mail server failed."""


class TLSError(MailConnectionError):
    """TLS could not be set up: handshake or certificate failure, or STARTTLS refused."""


class ConnectionLostError(MailConnectionError):
    """The server closed the connection, or it was reset."""


class MailTimeoutError(MailOAuthError, TimeoutError):
    """A network wait ran out. The connection has been closed and is not reused."""


class ProtocolError(MailOAuthError):
    """The server sent something the protocol does not allow here."""


class LimitExceededError(ProtocolError):
    """A line or response went over one of the named limits; the connection is closed."""


class CommandError(MailOAuthError):
    """The server refused a command (IMAP ``NO``/``BAD``, POP3 ``-ERR``, SMTP 4xx/5xx).

    ``command`` is the command's name (never its secret arguments); ``reply`` the
    server's answer.
    """

    def __init__(self, message: str, *, command: str = "", reply: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.reply = reply
