"""The poller's retry timing and failure classification (pure functions)."""

from __future__ import annotations

import random

import pytest

from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    InsecureTransportError,
    MailTimeoutError,
    PermanentTokenError,
    ProtocolError,
    TLSError,
    TokenExpiredError,
    TransientTokenError,
    UsageError,
)
from mailoauth.poll import backoff_delay, is_permanent
from mailoauth.poll.backoff import jittered


class RecordingRandom(random.Random):
    def __init__(self) -> None:
        super().__init__(0)
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b


def test_full_jitter_ceiling_doubles_up_to_the_cap() -> None:
    rng = RecordingRandom()
    delays = [backoff_delay(n, 1.0, 30.0, rng) for n in range(8)]
    assert rng.calls == [(0.0, c) for c in (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_delays_are_spread_over_the_whole_range() -> None:
    rng = random.Random(42)
    delays = [backoff_delay(3, 0.5, 300.0, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 0.2 and max(delays) > 3.8  # full jitter: from 0 to the ceiling
    assert 1.8 < sum(delays) / len(delays) < 2.2


@pytest.mark.parametrize("attempt", [-3, 0, 1000, 10**9])
def test_extreme_attempts_stay_in_range(attempt: int) -> None:
    rng = RecordingRandom()
    delay = backoff_delay(attempt, 2.0, 60.0, rng)
    assert delay == (2.0 if attempt <= 0 else 60.0)


def test_same_seed_same_delays() -> None:
    first = [backoff_delay(n, 1.0, 300.0, random.Random(5)) for n in range(5)]
    again = [backoff_delay(n, 1.0, 300.0, random.Random(5)) for n in range(5)]
    assert first == again


def test_interval_jitter_is_ten_percent_either_way() -> None:
    rng = random.Random(1)
    values = [jittered(60.0, rng) for _ in range(1000)]
    assert all(54.0 <= v <= 66.0 for v in values)
    assert min(values) < 55.0 and max(values) > 65.0


PERMANENT = [
    PermanentTokenError("invalid_grant", error="invalid_grant"),
    TokenExpiredError("static token expired"),
    AuthenticationError("rejected twice"),
    ConfigurationError("bad port"),
    InsecureTransportError("plaintext"),
    CommandError("no such folder", command="EXAMINE", reply="NO [NONEXISTENT] Unknown Mailbox"),
    CommandError("denied", command="EXAMINE", reply="NO [NOPERM] Permission denied"),
    KeyError("a bug"),
]
TRANSIENT = [
    ConnectionLostError("reset"),
    TLSError("handshake"),
    MailTimeoutError("timed out"),
    TransientTokenError("503", status_code=503),
    AuthenticationError("try later", temporary=True),
    ProtocolError("garbage"),
    CommandError("busy", command="EXAMINE", reply="NO [UNAVAILABLE] Try again"),
    CommandError("throttled", command="UID FETCH", reply="NO [LIMIT] Too many"),
    CommandError("locked", command="UIDL", reply="-ERR [IN-USE] Mailbox locked"),
    CommandError("temp", command="UIDL", reply="-ERR [SYS/TEMP] try later"),
    CommandError("plain NO", command="UID SEARCH", reply="NO Server busy"),
    OSError("unmapped socket error"),
]


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: f"{type(e).__name__}")
def test_permanent_failures(exc: BaseException) -> None:
    assert is_permanent(exc)


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: f"{type(e).__name__}")
def test_transient_failures(exc: BaseException) -> None:
    assert not is_permanent(exc)


def test_backoff_reads_the_fields_not_the_text() -> None:
    # A refusal whose text mentions a permanent code elsewhere is judged by its own code.
    busy = CommandError(
        "busy",
        command="EXAMINE",
        reply="NO [UNAVAILABLE] see [NONEXISTENT] in the docs",
        response_code="UNAVAILABLE",
    )
    assert not is_permanent(busy)
    gone = CommandError("gone", command="EXAMINE", reply="NO gone", response_code="NONEXISTENT")
    assert is_permanent(gone)
    assert is_permanent(CommandError("rejected", command="RCPT", code=550, enhanced_code="5.1.1"))
    assert not is_permanent(CommandError("greylisted", command="RCPT", code=451))


def test_backoff_follows_retryable_for_every_mailoauth_error() -> None:
    class Flaky(MailTimeoutError):
        pass

    class Doomed(ProtocolError):
        _retryable = False

    assert not is_permanent(Flaky("x"))
    assert is_permanent(Doomed("x"))
    assert is_permanent(UsageError("select() first"))
