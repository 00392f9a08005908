"""Driving ``mailoauth login ... --device`` from a test that plays the signed-in user."""

from __future__ import annotations

import threading
import time

from mailoauth.cli import main
from mailoauth.testing.oauth_server import FakeOAuthServer

#: Seconds the command may take to ask for a code, and then to finish.
WAIT = 10.0


def login_with_device_code(oauth: FakeOAuthServer, argv: list[str], account: str) -> str:
    """Run the command ``argv`` (a device-code login against ``oauth``) in a thread,
    approve the one code it asks for as ``account``, and wait for it to exit 0.
    Returns the user code, which the command printed."""
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    runner.start()
    deadline = time.monotonic() + WAIT
    while not oauth.pending_user_codes() and time.monotonic() < deadline:
        time.sleep(0.02)
    (user_code,) = oauth.pending_user_codes()
    oauth.approve_device(user_code, account)
    runner.join(WAIT)
    assert result == [0]
    return user_code
