"""The server side of SASL XOAUTH2 and OAUTHBEARER for the test mail servers.

Parsing is pure; :func:`run_exchange` drives one AUTH exchange through a callback that
sends a challenge and returns the client's answer, so that the SMTP, IMAP and POP3
servers share it and differ only in how they frame lines.

Tokens are checked by a :data:`Validator`, ``validate(username, token) -> bool``. The
default one asks a :class:`~mailoauth.testing.oauth_server.FakeOAuthServer` in-process
(no HTTP): the token must be active and issued to the SASL user.
"""

from __future__ import annotations

import base64
import binascii
import enum
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailoauth.testing.personality import Delegations, Personality, TenantStates

if TYPE_CHECKING:
    from mailoauth.testing.oauth_server import FakeOAuthServer

__all__ = [
    "SUPPORTED_MECHANISMS",
    "AuthOutcome",
    "BearerCredentials",
    "SaslParseError",
    "TokenChecker",
    "Validator",
    "decode_sasl_response",
    "oauth_validator",
    "parse_oauthbearer",
    "parse_response",
    "parse_xoauth2",
    "run_exchange",
]

SUPPORTED_MECHANISMS: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER")

Validator = Callable[[str, str], bool]
"""``validate(username, token) -> bool``: whether ``token`` lets ``username`` in now."""


class SaslParseError(ValueError):
    """The client's SASL message is malformed (the message never holds the token)."""


@dataclass(frozen=True)
class BearerCredentials:
    """A username and bearer token from a client's SASL message."""

    username: str
    token: str = field(repr=False)


def decode_sasl_response(line: bytes) -> bytes:
    """Decode a base64 SASL response line; ``=`` is an empty response (RFC 4959).

    Raises :class:`SaslParseError` for anything that is not base64.
    """
    line = line.strip()
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SaslParseError("the SASL response is not valid base64") from exc


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SaslParseError("auth= must be 'Bearer <token>'")
    return token.strip()


def _kvpairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in text.split("\x01"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise SaslParseError("a key/value pair has no '='")
        pairs[key] = value
    return pairs


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaslParseError("the SASL message is not UTF-8") from exc


def parse_xoauth2(data: bytes) -> BearerCredentials:
    """Parse ``user=U\\x01auth=Bearer T\\x01\\x01``."""
    text = _text(data)
    if not text.endswith("\x01\x01"):
        raise SaslParseError("an XOAUTH2 message ends with two ^A")
    pairs = _kvpairs(text)
    if "user" not in pairs or "auth" not in pairs:
        raise SaslParseError("an XOAUTH2 message needs user= and auth=")
    return BearerCredentials(pairs["user"], _bearer(pairs["auth"]))


def _unescape_saslname(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        if name[i] == "=":
            code = name[i : i + 3]
            if code == "=2C":
                out.append(",")
            elif code == "=3D":
                out.append("=")
            else:
                raise SaslParseError("bad escape in the GS2 authzid")
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def parse_oauthbearer(data: bytes) -> BearerCredentials:
    """Parse RFC 7628 ``n,a=U,\\x01host=H\\x01port=P\\x01auth=Bearer T\\x01\\x01``.

    Like Dovecot, the GS2 header must name the user (``a=``).
    """
    text = _text(data)
    header, sep, rest = text.partition("\x01")
    if not sep or not text.endswith("\x01\x01"):
        raise SaslParseError("an OAUTHBEARER message is a GS2 header and ^A-separated pairs")
    parts = header.split(",")
    if len(parts) != 3 or parts[0] not in ("n", "y") or parts[2] != "":
        raise SaslParseError("bad GS2 header")
    if not parts[1].startswith("a=") or len(parts[1]) == 2:
        raise SaslParseError("the GS2 header must name the user (a=...)")
    username = _unescape_saslname(parts[1][2:])
    pairs = _kvpairs(rest)
    if "auth" not in pairs:
        raise SaslParseError("an OAUTHBEARER message needs auth=")
    return BearerCredentials(username, _bearer(pairs["auth"]))


def parse_response(mechanism: str, data: bytes) -> BearerCredentials:
    """Parse a decoded SASL message of ``mechanism`` (``XOAUTH2`` or ``OAUTHBEARER``)."""
    if mechanism.upper() == "XOAUTH2":
        return parse_xoauth2(data)
    if mechanism.upper() == "OAUTHBEARER":
        return parse_oauthbearer(data)
    raise SaslParseError(f"unsupported mechanism {mechanism!r}")


def oauth_validator(oauth: FakeOAuthServer, delegations: Delegations | None = None) -> Validator:
    """A validator asking ``oauth`` in-process: active, and issued to ``username`` or,
    with ``delegations``, to a delegate with FullAccess on the mailbox ``username``
    (a shared mailbox opened with a delegate's token)."""

    def validate(username: str, token: str) -> bool:
        if not oauth.is_active(token):
            return False
        info = oauth.token_info(token)
        if info is None:
            return False
        if info.username == username:
            return True
        return delegations is not None and delegations.may_open(info.username, username)

    return validate


class TokenChecker:
    """Checks credentials with a validator; :meth:`fail_next` scripts rejections."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self._lock = threading.Lock()
        self._fail_next = 0
        self.attempts = 0
        """How many AUTH exchanges reached a token check (for assertions)."""

    def fail_next(self, count: int = 1) -> None:
        """Reject the next ``count`` authentications whatever their token."""
        with self._lock:
            self._fail_next += count

    def check(self, creds: BearerCredentials) -> bool:
        """Whether ``creds`` may log in now (consumes a scripted failure first)."""
        with self._lock:
            self.attempts += 1
            if self._fail_next > 0:
                self._fail_next -= 1
                return False
        return self.validator(creds.username, creds.token)

    def still_valid(self, creds: BearerCredentials) -> bool:
        """Whether a session's token is still good (no scripted failures involved)."""
        return self.validator(creds.username, creds.token)


class AuthOutcome(enum.Enum):
    OK = "ok"
    REJECTED = "rejected"
    """The token was refused (after the error challenge, if the personality sends one)."""
    MALFORMED = "malformed"
    """The SASL message could not be parsed: fail at once, no challenge (like Dovecot)."""
    ABORTED = "aborted"
    """The client cancelled (``*``) or sent undecodable data; the caller replies."""


@dataclass(frozen=True)
class AuthResult:
    outcome: AuthOutcome
    credentials: BearerCredentials | None = None
    reply: tuple[str, ...] | None = None
    """For a rejection caused by a tenant state, the lines to answer instead of the
    personality's usual failure (:class:`~mailoauth.testing.personality.TenantStates`)."""


Ask = Callable[[bytes], Awaitable["bytes | None"]]
"""Send a raw challenge (the caller base64-encodes and frames it) and return the
client's decoded answer, or None when the client cancelled or sent bad base64."""


async def run_exchange(
    mechanism: str,
    initial: bytes | None,
    ask: Ask,
    checker: TokenChecker,
    personality: Personality,
    *,
    tenant: TenantStates | None = None,
    protocol: str = "",
) -> AuthResult:
    """Run one XOAUTH2/OAUTHBEARER exchange after the AUTH command.

    ``initial`` is the decoded initial response, or None when the client sent none (the
    first challenge is then empty). With ``tenant``, a valid token for a mailbox whose
    tenant state refuses ``protocol`` is rejected with that state's reply lines.
    """
    if initial is None:
        initial = await ask(b"")
        if initial is None:
            return AuthResult(AuthOutcome.ABORTED)
    try:
        creds = parse_response(mechanism, initial)
    except SaslParseError:
        return AuthResult(AuthOutcome.MALFORMED)
    refusal: tuple[str, ...] | None = None
    if checker.check(creds):
        if tenant is not None:
            refusal = tenant.refusal(creds.username, protocol, personality.replies)
        if refusal is None:
            return AuthResult(AuthOutcome.OK, creds)
    challenge = personality.replies.error_challenge(mechanism)
    # Whatever the client answers to the challenge (empty line, ^A), the exchange has
    # failed; only a cancel changes the reply.
    if challenge is not None and await ask(challenge) is None:
        return AuthResult(AuthOutcome.ABORTED, creds)
    return AuthResult(AuthOutcome.REJECTED, creds, reply=refusal)
