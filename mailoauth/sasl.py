"""SASL XOAUTH2 and OAUTHBEARER (RFC 7628) client mechanisms. Pure: no I/O.

A mechanism produces the initial response, answers a server challenge and decodes
the JSON error challenge a server sends when it rejects a token::

    mech = OAuthBearer(user, token, host="imap.example.com", port=993)
    line = b"AUTHENTICATE OAUTHBEARER " + mech.initial_response_b64()
    ...  # server: "+ eyJzdGF0dXMiOi..."  -> mech.respond(challenge) -> b"AQ=="

Both mechanisms refuse control characters (CR, LF, NUL, the field separator ``\x01``
and the rest of :data:`mailoauth._util.text.CONTROL_CHARACTERS`) in the username, host and
token (:class:`~mailoauth.errors.ConfigurationError`, a ``ValueError``) before anything
is encoded: a ``\x01`` in the username would let it forge an ``auth=`` field.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from mailoauth._util.text import refuse_controls
from mailoauth.errors import ConfigurationError

__all__ = [
    "MECHANISMS",
    "POP3_MAX_AUTH_LINE",
    "SMTP_MAX_COMMAND_LINE",
    "ErrorChallenge",
    "Mechanism",
    "MechanismName",
    "OAuthBearer",
    "XOAuth2",
    "create_mechanism",
    "decode_error_challenge",
    "escape_saslname",
    "fits_initial_response",
]

MechanismName = Literal["XOAUTH2", "OAUTHBEARER"]
MECHANISMS: Final[tuple[MechanismName, ...]] = ("OAUTHBEARER", "XOAUTH2")

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
SMTP_MAX_COMMAND_LINE: Final = 512
#: RFC 5034 §4: a POP3 AUTH command line with initial response is at most 255 octets.
POP3_MAX_AUTH_LINE: Final = 255


def escape_saslname(name: str) -> str:
    """Escape a username for the GS2 header (RFC 5801): ``=`` -> ``=3D``, ``,`` -> ``=2C``."""
    return name.replace("=", "=3D").replace(",", "=2C")


@dataclass(frozen=True)
class ErrorChallenge:
    """A server's SASL error challenge, decoded (RFC 7628 §3.2.2).

    ``raw`` is the decoded text as sent; the other fields are its JSON members when
    present (``status`` is ``"400"``/``"401"`` for XOAUTH2 servers, ``"invalid_token"``
    and friends for OAUTHBEARER).
    """

    raw: str
    status: str | None = None
    schemes: str | None = None
    scope: str | None = None
    openid_configuration: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for an error message: status and scope the server asked for."""
        parts = []
        if self.status:
            parts.append(f"status={self.status}")
        if self.scope:
            parts.append(f"scope={self.scope}")
        if self.schemes:
            parts.append(f"schemes={self.schemes}")
        return ", ".join(parts) if parts else repr(self.raw[:200])


def decode_error_challenge(data: bytes | str) -> ErrorChallenge | None:
    """Decode a base64 error challenge (the text after ``+ `` or ``334 ``).

    Returns ``None`` for an empty challenge. Never raises on bad input: text that is
    not base64 or not JSON comes back as ``ErrorChallenge(raw=...)`` with no fields.
    """
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    data = data.strip()
    if not data:
        return None
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        decoded = data
    text = decoded.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return ErrorChallenge(raw=text)
    if not isinstance(obj, dict):
        return ErrorChallenge(raw=text)

    def _str(key: str) -> str | None:
        value = obj.get(key)
        return None if value is None else str(value)

    known = {"status", "schemes", "scope", "openid-configuration"}
    return ErrorChallenge(
        raw=text,
        status=_str("status"),
        schemes=_str("schemes"),
        scope=_str("scope"),
        openid_configuration=_str("openid-configuration"),
        extra={k: v for k, v in obj.items() if k not in known},
    )


class Mechanism(Protocol):
    """A SASL client mechanism for a bearer token."""

    name: MechanismName

    def initial_response(self) -> bytes:
        """The client's first message, raw (not base64)."""
        ...

    def initial_response_b64(self) -> bytes:
        """The client's first message, base64-encoded."""
        ...

    def respond(self, challenge: bytes) -> bytes:
        """The base64 answer to a server challenge (after an initial response was sent,
        a challenge can only be an error challenge)."""
        ...


class _BearerMechanism:
    name: MechanismName

    def initial_response(self) -> bytes:
        raise NotImplementedError

    def initial_response_b64(self) -> bytes:
        return base64.b64encode(self.initial_response())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} user={self.username!r} token=<redacted>>"

    username: str


class XOAuth2(_BearerMechanism):
    """Google/Microsoft XOAUTH2: ``user=U\\x01auth=Bearer T\\x01\\x01``.

    After an error challenge the client must send an empty response.
    """

    name: MechanismName = "XOAUTH2"

    def __init__(self, username: str, token: str) -> None:
        refuse_controls(username, "username")
        refuse_controls(token, "access token")
        self.username = username
        self._token = token

    def initial_response(self) -> bytes:
        return f"user={self.username}\x01auth=Bearer {self._token}\x01\x01".encode()

    def respond(self, challenge: bytes) -> bytes:
        return b""


class OAuthBearer(_BearerMechanism):
    """RFC 7628 OAUTHBEARER: ``n,a=U,\\x01host=H\\x01port=P\\x01auth=Bearer T\\x01\\x01``.

    The GS2 header carries the authorization identity (Dovecot requires it). After an
    error challenge the client answers ``\\x01`` (RFC 7628 §3.2.3).
    """

    name: MechanismName = "OAUTHBEARER"

    def __init__(self, username: str, token: str, *, host: str, port: int) -> None:
        refuse_controls(username, "username")
        refuse_controls(token, "access token")
        refuse_controls(host, "host")
        self.username = username
        self._token = token
        self.host = host
        self.port = port

    def initial_response(self) -> bytes:
        gs2 = f"n,a={escape_saslname(self.username)},"
        return (
            f"{gs2}\x01host={self.host}\x01port={self.port}\x01auth=Bearer {self._token}\x01\x01"
        ).encode()

    def respond(self, challenge: bytes) -> bytes:
        return base64.b64encode(b"\x01")


def create_mechanism(
    name: str, username: str, token: str, *, host: str, port: int
) -> XOAuth2 | OAuthBearer:
    """Build the mechanism called ``name`` (``"XOAUTH2"`` or ``"OAUTHBEARER"``).

    Raises :class:`~mailoauth.errors.ConfigurationError` for any other name, or when a
    field contains a control character (CR, LF, NUL, ``\x01``, ...).
    """
    upper = name.upper()
    if upper == "XOAUTH2":
        return XOAuth2(username, token)
    if upper == "OAUTHBEARER":
        return OAuthBearer(username, token, host=host, port=port)
    raise ConfigurationError(f"unknown SASL mechanism {name!r}; use 'XOAUTH2' or 'OAUTHBEARER'")


def fits_initial_response(command_prefix: bytes, mechanism: Mechanism, limit: int) -> bool:
    """Whether ``command_prefix + base64(initial response) + CRLF`` fits in ``limit`` octets.

    ``command_prefix`` is e.g. ``b"AUTH XOAUTH2 "``; use :data:`SMTP_MAX_COMMAND_LINE`
    or :data:`POP3_MAX_AUTH_LINE` as the limit.
    """
    return len(command_prefix) + len(mechanism.initial_response_b64()) + 2 <= limit
