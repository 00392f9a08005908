"""Retry timing and failure classification for the poller: pure functions."""

from __future__ import annotations

import random

from mailoauth.errors import PERMANENT_RESPONSE_CODES, MailOAuthError

__all__ = ["PERMANENT_RESPONSE_CODES", "backoff_delay", "is_permanent", "jittered"]

#: The largest exponent used, so that 2**n stays a float far below overflow.
_MAX_EXPONENT = 60


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

    A mailoauth error is permanent when it is not
    :attr:`~mailoauth.errors.MailOAuthError.retryable`: a dead grant, an expired static
    token, a token the server rejects after the client's own retry, a wrong
    configuration or a misuse, a refusal whose code says it will not pass (SMTP 5xx, a
    code in :data:`PERMANENT_RESPONSE_CODES`, such as a folder that does not exist).
    Transport and protocol errors, transient token errors, temporary authentication
    failures and every other refusal (throttling) are retried. An ``OSError`` that
    escaped mapping is retried too; any other exception from outside mailoauth is a bug,
    and retrying would repeat it.
    """
    if isinstance(exc, MailOAuthError):
        return not exc.retryable
    return not isinstance(exc, OSError)
