"""Retry timing and failure classification for the poller: pure functions."""

from __future__ import annotations

import random
import re

from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    MailConnectionError,
    MailOAuthError,
    MailTimeoutError,
    PermanentTokenError,
    ProtocolError,
    TokenExpiredError,
    TransientTokenError,
)

__all__ = ["PERMANENT_RESPONSE_CODES", "backoff_delay", "is_permanent", "jittered"]

#: IMAP response codes (RFC 5530) and POP3 ones (RFC 3206) that will not pass by
#: waiting. A refusal carrying any other code, or none ([UNAVAILABLE], [LIMIT],
#: [INUSE], [SYS/TEMP], a throttling NO...), is retried with backoff.
PERMANENT_RESPONSE_CODES = frozenset(
    {"NONEXISTENT", "NOPERM", "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "CANNOT"}
)
#: The largest exponent used, so that 2**n stays a float far below overflow.
_MAX_EXPONENT = 60
_CODE = re.compile(r"\[([A-Za-z/-]+)")


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after the ``attempt``-th failure in a row (0 for the first).

    Exponential backoff with full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``,
    so that many mailboxes failing at once (a provider throttling, a network blip) do
    not come back in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    return rng.uniform(0.0, max(ceiling, 0.0))


def jittered(interval: float, rng: random.Random, spread: float = 0.1) -> float:
    """``interval`` give or take ``spread`` (a fraction), so polls drift apart."""
    return max(0.0, interval * rng.uniform(1.0 - spread, 1.0 + spread))


def is_permanent(exc: BaseException) -> bool:
    """Whether a mailbox that failed with ``exc`` should be set aside for good.

    Permanent: a dead grant (:class:`~mailoauth.errors.PermanentTokenError`), an
    expired static token, a token the server rejects after the client's own retry
    (:class:`~mailoauth.errors.AuthenticationError` unless ``temporary``), a wrong
    configuration, a refusal with a code in :data:`PERMANENT_RESPONSE_CODES` (a folder
    that does not exist), and any exception from outside mailoauth (a bug: retrying
    would repeat it). Transient: connection and timeout errors, temporary
    authentication failures, :class:`~mailoauth.errors.TransientTokenError`, protocol
    errors and every other refusal (throttling).
    """
    if isinstance(exc, PermanentTokenError | TokenExpiredError | ConfigurationError):
        return True
    if isinstance(exc, AuthenticationError):
        return not exc.temporary
    if isinstance(exc, CommandError):
        codes = {c.upper() for c in _CODE.findall(exc.reply)}
        return bool(codes & PERMANENT_RESPONSE_CODES)
    if isinstance(
        exc, MailConnectionError | MailTimeoutError | TransientTokenError | ProtocolError
    ):
        return False
    return not isinstance(exc, MailOAuthError | OSError)
