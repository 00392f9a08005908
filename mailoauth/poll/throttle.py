"""Which failures are a server (or token endpoint) asking us to slow down: pure functions.

A throttled answer is not a fault to retry at once, nor a verdict to give up on: it
says "too many, too fast" about a whole *scope*, and every connection of that scope
should wait. :func:`classify_throttle` names the scope and the wait the server asked
for; the poller then holds the scope back through its
:class:`~mailoauth.poll.ConnectionBudgets` (fleet-wide with
:class:`~mailoauth.poll.RedisBudgets`) for ``max(retry_after, backoff)``.

Throttling, by what answers:

- the mail server, per **account** (one user's mailbox): Gmail's ``NO [ALERT] Too many
  simultaneous connections`` (at login: an :class:`~mailoauth.errors.AuthenticationError`
  that is not about the token), the IMAP codes ``[UNAVAILABLE]`` (RFC 5530) and
  ``[THROTTLED]``, the POP3 codes ``[SYS/TEMP]`` and ``[IN-USE]`` (RFC 3206), an SMTP
  4xx reply (RFC 5321 §4.2.1: transient), and an authentication failure the server
  itself called temporary;
- the token endpoint, per **credential**: HTTP 429 (RFC 6585 §4), with its
  ``Retry-After`` kept on :attr:`~mailoauth.errors.TransientTokenError.retry_after`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from mailoauth._providers import THROTTLING_REPLIES
from mailoauth.errors import AuthenticationError, CommandError, MailOAuthError, TransientTokenError

__all__ = ["THROTTLING_RESPONSE_CODES", "ThrottleScope", "Throttled", "classify_throttle"]

ThrottleScope = Literal["account", "credential"]
"""What a throttled answer holds back: every mailbox of one (host, username) account,
or every mailbox whose token comes from one credential."""

#: Response codes that mean "not now, too busy" rather than "never": IMAP
#: ``UNAVAILABLE`` (RFC 5530 §3) and ``THROTTLED`` (sent by large providers when a
#: client is over its rate), POP3 ``SYS/TEMP`` and ``IN-USE`` (RFC 3206 §4, §5; the
#: maildrop is locked by another session of the account).
THROTTLING_RESPONSE_CODES: Final = frozenset({"UNAVAILABLE", "THROTTLED", "SYS/TEMP", "IN-USE"})


@dataclass(frozen=True)
class Throttled:
    """A failure that asks for a pause: hold ``scope`` back for at least
    ``retry_after`` seconds (None: the server named no wait; use the backoff)."""

    scope: ThrottleScope
    retry_after: float | None
    reason: str


def _says_too_many(text: str) -> bool:
    lowered = text.lower()
    return any(reply in lowered for reply in THROTTLING_REPLIES)


def classify_throttle(exc: BaseException) -> Throttled | None:
    """The throttling ``exc`` stands for, or None when it is some other failure.

    Only mailoauth's own errors are read (never the text of a foreign exception).
    An :class:`~mailoauth.errors.AuthenticationError` is throttling only when the
    server said it could not judge the token now (``temporary``) or said it has too
    many connections; a rejected token is not.
    """
    if not isinstance(exc, MailOAuthError):
        return None
    if isinstance(exc, TransientTokenError):
        if exc.status_code == 429:
            return Throttled("credential", exc.retry_after, "the token endpoint answered 429")
        if exc.retry_after is not None:
            reason = f"the token endpoint asked to retry after {exc.retry_after:g} s"
            return Throttled("credential", exc.retry_after, reason)
        return None
    if isinstance(exc, AuthenticationError):
        if _says_too_many(exc.server_reply):
            return Throttled("account", None, "too many simultaneous connections")
        if exc.temporary:
            return Throttled("account", None, "the server could not log in now")
        return None
    if isinstance(exc, CommandError):
        if exc.code is not None and 400 <= exc.code < 500:
            return Throttled("account", None, f"SMTP {exc.code} (transient)")
        if exc.response_code in THROTTLING_RESPONSE_CODES:
            return Throttled("account", None, f"[{exc.response_code}]")
        if _says_too_many(exc.reply):
            return Throttled("account", None, "too many simultaneous connections")
        return None
    # A greeting or BYE that closes the connection (Gmail may say it there).
    if _says_too_many(str(exc)):
        return Throttled("account", None, "too many simultaneous connections")
    return None
