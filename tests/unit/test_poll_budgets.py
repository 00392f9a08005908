"""Connection budgets without sockets: provider presets, throttling classification,
Retry-After parsing, and the in-process budgets (hold-backs, caps, contention).

The Redis semaphore runs against a real redis-server in
tests/integration/test_poll_budgets.py.
"""

from __future__ import annotations

import datetime as dt

import anyio
import httpx
import pytest

from mailoauth._providers import (
    CONNECTION_PRESETS,
    EXCHANGE_ONLINE_CONNECTIONS,
    GMAIL_CONNECTIONS,
    MS_CLOUDS,
    connection_preset,
)
from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    PermanentTokenError,
    TransientTokenError,
)
from mailoauth.poll import (
    LocalBudgets,
    Mailbox,
    Poller,
    PollLimits,
    RedisBudgets,
    classify_throttle,
)
from mailoauth.poll.budgets import account_key, credential_key
from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant
from mailoauth.tokens.endpoint import MAX_RETRY_AFTER, parse_retry_after


def box(host: str = "imap.example.test", user: str = "u@example.test", **kw: object) -> Mailbox:
    return Mailbox("imap", host, 993, user, "at-static", **kw)  # type: ignore[arg-type]


# -- presets ---------------------------------------------------------------------------


def test_presets_cap_each_account_below_the_provider_limit_and_leave_hosts_uncapped() -> None:
    assert CONNECTION_PRESETS  # every preset leaves room for the owner's own client
    for host, preset in CONNECTION_PRESETS.items():
        assert host == host.lower()
        assert 1 <= preset.max_per_account < preset.provider_limit, host
        assert preset.max_per_host is None
        assert preset.source.startswith(("http://", "https://"))
    assert connection_preset("IMAP.Gmail.com.") is GMAIL_CONNECTIONS
    assert connection_preset("pop.gmail.com") is GMAIL_CONNECTIONS
    assert connection_preset("imap.example.test") is None
    for cloud in MS_CLOUDS.values():
        for name in (cloud.imap_host, cloud.pop3_host):
            if name is not None:
                assert connection_preset(name) is EXCHANGE_ONLINE_CONNECTIONS, name


def test_poll_limits_default_no_longer_caps_a_host() -> None:
    limits = PollLimits()
    assert limits.max_per_host is None and limits.max_per_account is None
    # Gmail's limit is per account: 200 accounts on imap.gmail.com are not starved.
    assert limits.caps_for("imap.gmail.com") == (GMAIL_CONNECTIONS.max_per_account, None)
    assert limits.caps_for("outlook.office365.com") == (
        EXCHANGE_ONLINE_CONNECTIONS.max_per_account,
        None,
    )
    assert limits.caps_for("imap.example.test") == (None, None)


def test_explicit_limits_win_over_presets() -> None:
    assert PollLimits(max_per_account=3).caps_for("imap.gmail.com") == (3, None)
    assert PollLimits(max_per_host=15).caps_for("imap.gmail.com") == (10, 15)
    assert PollLimits(presets=False).caps_for("imap.gmail.com") == (None, None)
    # The old keyword still works and still means a per-host cap.
    assert Poller(max_per_host=15).limits.caps_for("imap.example.test") == (None, 15)
    with pytest.raises(ConfigurationError, match="presets"):
        PollLimits(presets="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_per_host"):
        PollLimits(max_per_host=0)


def test_poller_refuses_limits_beside_budgets() -> None:
    budgets = LocalBudgets(PollLimits(max_connections=5))
    assert Poller(budgets=budgets).limits.max_connections == 5
    with pytest.raises(ConfigurationError, match="give the limits to the budgets"):
        Poller(budgets=budgets, limits=PollLimits())
    with pytest.raises(ConfigurationError, match="give the limits to the budgets"):
        Poller(budgets=budgets, max_per_account=2)


# -- classification --------------------------------------------------------------------

GMAIL_ALERT = "NO [ALERT] Too many simultaneous connections. (Failure)"


@pytest.mark.parametrize(
    ("exc", "scope"),
    [
        (AuthenticationError("x", server_reply=GMAIL_ALERT), "account"),
        (AuthenticationError("x", server_reply="NO [UNAVAILABLE] busy", temporary=True), "account"),
        (CommandError("x", reply="NO [THROTTLED] Request is throttled"), "account"),
        (CommandError("x", reply="NO [UNAVAILABLE] Try later"), "account"),
        (CommandError("x", reply="-ERR [SYS/TEMP] busy", response_code="SYS/TEMP"), "account"),
        (CommandError("x", reply="-ERR [IN-USE] locked", response_code="IN-USE"), "account"),
        (CommandError("x", reply="421 4.7.0 Try again later"), "account"),
        (CommandError("x", reply="451 4.3.2 concurrent connection limit exceeded"), "account"),
        (ConnectionLostError("server said: * BYE Too many simultaneous connections"), "account"),
        (TransientTokenError("x", status_code=429), "credential"),
        (TransientTokenError("x", status_code=503, retry_after=12.0), "credential"),
    ],
)
def test_throttling_answers_are_classified(exc: Exception, scope: str) -> None:
    found = classify_throttle(exc)
    assert found is not None and found.scope == scope


@pytest.mark.parametrize(
    "exc",
    [
        AuthenticationError("x", server_reply="NO AUTHENTICATE failed."),  # a rejected token
        CommandError("x", reply="NO [NONEXISTENT] no such folder"),
        CommandError("x", reply="550 5.1.1 no such user"),
        CommandError("x", reply="NO [LIMIT] too many flags"),
        TransientTokenError("x", status_code=503),
        PermanentTokenError("x", error="invalid_grant"),
        ConnectionLostError("the server closed the connection"),
        OSError("Too many simultaneous connections"),  # foreign text is never read
    ],
)
def test_other_failures_are_not_throttling(exc: Exception) -> None:
    assert classify_throttle(exc) is None


def test_token_endpoint_retry_after_is_kept() -> None:
    found = classify_throttle(TransientTokenError("x", status_code=429, retry_after=30.0))
    assert found is not None and found.retry_after == 30.0


# -- Retry-After ---------------------------------------------------------------------

NOW = dt.datetime(2026, 12, 2, 7, 0, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("Wed, 02 Dec 2026 07:02:00 GMT", 120.0),
        ("Wed, 02 Dec 2026 06:00:00 GMT", 0.0),
        ("99999999", MAX_RETRY_AFTER),
        ("soon", None),
        ("", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


# -- scope keys ------------------------------------------------------------------------


def test_credential_key_names_the_provider_without_its_secrets() -> None:
    provider = OAuth2TokenProvider(
        "https://login.example.test/token",
        RefreshTokenGrant("rt-very-secret"),
        client_id="cid",
        client_secret="cs-very-secret",
    )
    a = Mailbox("imap", "imap.example.test", 993, "a@example.test", provider)
    b = Mailbox("pop3", "pop.example.test", 995, "b@example.test", provider)
    assert credential_key(a) == credential_key(b) != account_key(a)
    assert "secret" not in credential_key(a)
    # A static token has no endpoint: its scope is its account.
    assert credential_key(box()) == account_key(box()) == "account:imap.example.test|u@example.test"
    assert account_key(box(user="U@Example.TEST", host="IMAP.example.test")) == account_key(box())


# -- in-process budgets --------------------------------------------------------------


@pytest.mark.asyncio
async def test_local_hold_back_keeps_the_account_out_and_not_others() -> None:
    budgets = LocalBudgets()
    held, other_folder, stranger = box(), box(folder="Sent"), box(user="v@example.test")
    await budgets.hold_back(held, "account", 60)
    assert await budgets.held_back(other_folder) > 50 and await budgets.held_back(stranger) == 0
    entered = False
    with anyio.move_on_after(0.2):
        async with budgets.slots(other_folder).hold():
            entered = True
    assert not entered
    async with budgets.slots(stranger).hold():
        pass
    await budgets.hold_back(held, "account", 1)  # a shorter one never shortens it
    assert await budgets.held_back(held) > 50
    with pytest.raises(ConfigurationError):
        await budgets.hold_back(held, "account", -1)


@pytest.mark.asyncio
async def test_local_caps_per_account_from_the_preset_and_contention() -> None:
    budgets = LocalBudgets()
    boxes = [box("imap.gmail.com", "me@gmail.com", folder=f"f{i}") for i in range(12)]
    inside = 0
    most = 0
    release = anyio.Event()
    full = anyio.Event()

    async def one(mailbox: Mailbox) -> None:
        nonlocal inside, most
        async with budgets.slots(mailbox).hold():
            inside += 1
            most = max(most, inside)
            if inside == GMAIL_CONNECTIONS.max_per_account:
                full.set()
            await release.wait()
            inside -= 1

    async with anyio.create_task_group() as tg:
        for mailbox in boxes:
            tg.start_soon(one, mailbox)
        with anyio.fail_after(10):
            await full.wait()
        await anyio.sleep(0.05)  # let the last two reach the limiter
        slots = budgets.slots(boxes[0])
        assert slots.contended()  # two more wait for this account's slots
        assert await slots.sleep_unless_contended(60) is True
        release.set()
    assert most == GMAIL_CONNECTIONS.max_per_account
    other = budgets.slots(box("imap.gmail.com", "you@gmail.com"))
    assert not other.contended()


def test_redis_budgets_check_their_arguments() -> None:
    with pytest.raises(ConfigurationError, match="lease"):
        RedisBudgets("redis://127.0.0.1:1/0", lease=0)
    budgets = RedisBudgets("redis://127.0.0.1:1/0", worker_id="w1", prefix="p:")
    assert "w1" in repr(budgets) and budgets.limits == PollLimits()
    slots = budgets.slots(box("imap.gmail.com", "me@gmail.com"))
    assert not slots.contended()


@pytest.mark.asyncio
async def test_token_endpoint_hands_a_long_retry_after_to_the_caller() -> None:
    """A 429 asking for more than the endpoint's own longest wait is not retried (it
    would only be refused again): the error carries the wait. A short one is waited."""
    answers = [
        httpx.Response(429, json={"error": "slow_down"}, headers={"Retry-After": "2"}),
        httpx.Response(200, json={"access_token": "at-ok", "expires_in": 60}),
        httpx.Response(429, json={"error": "slow_down"}, headers={"Retry-After": "120"}),
        httpx.Response(200, json={"access_token": "at-never", "expires_in": 60}),
    ]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: answers.pop(0))
    ) as http:
        provider = OAuth2TokenProvider(
            "https://login.example.test/token",
            RefreshTokenGrant("rt-x"),
            client_id="cid",
            http_client=http,
            sleep=sleep,
        )
        assert (await provider.get_access_token()).value == "at-ok"
        assert slept == [2.0]
        with pytest.raises(TransientTokenError) as caught:
            await provider.get_access_token(force_refresh=True)
    assert caught.value.status_code == 429 and caught.value.retry_after == 120
    assert slept == [2.0] and len(answers) == 1  # not retried
