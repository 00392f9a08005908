"""FakeClock, and the fake OAuth server reading it: tokens expire without sleeping."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time

import pytest

from mailoauth.testing.clock import FakeClock
from mailoauth.testing.oauth_server import FakeOAuthServer


def test_fake_clock_is_real_time_moved_forward() -> None:
    clock = FakeClock()
    before = time.time()
    assert before <= clock.time() <= time.time()
    clock.advance(3600)
    assert clock.offset == 3600
    assert clock.time() >= before + 3600
    now = clock.now()
    assert now.tzinfo is dt.timezone.utc
    assert abs(now.timestamp() - clock.time()) < 60
    assert "+3600s" in repr(clock)


@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan])
def test_fake_clock_never_goes_backwards(seconds: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="forward"):
        clock.advance(seconds)
    assert clock.offset == 0


def test_oauth_server_lifetimes_and_introspection_follow_its_clock() -> None:
    clock = FakeClock()
    oauth = FakeOAuthServer(clock=clock.time)
    token = oauth.issue_access_token("u@example.test", lifetime=60)
    assert oauth.is_active(token)
    status, body = oauth.handle_introspect({"token": token})
    assert status == 200 and body["active"] and 58 <= body["expires_in"] <= 60
    clock.advance(59)
    assert oauth.is_active(token)
    clock.advance(2)
    assert not oauth.is_active(token)
    assert oauth.handle_introspect({"token": token}) == (200, {"active": False})
    # Swapped between tests: every check reads the clock anew.
    oauth.clock = time.time
    assert oauth.is_active(token)


def test_fake_clock_sleep_moves_the_clock_instead_of_waiting() -> None:
    clock = FakeClock()
    asyncio.run(clock.sleep(600))
    asyncio.run(clock.sleep(-1))  # as asyncio.sleep: returns at once
    assert clock.sleeps == [600, -1]
    assert clock.offset == 600
