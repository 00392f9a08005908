"""Connection budgets and throttling against real Redis and scripted IMAP servers.

- Two Pollers, each with its own RedisBudgets, never exceed a per-account cap together;
  a holder killed with SIGKILL frees its slot within one lease; a slot that cannot be
  renewed cuts its connection; without Redis nobody connects.
- Throttled answers (Gmail's ``[ALERT] Too many simultaneous connections`` at login,
  ``[THROTTLED]`` on EXAMINE, the token endpoint's 429 with Retry-After) hold back that
  account (or credential) and not the others, in-process and fleet-wide.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from mailoauth.errors import AuthenticationError, CommandError, TransientTokenError
from mailoauth.imap.client import ImapClient
from mailoauth.poll import (
    Backoff,
    LocalBudgets,
    Mailbox,
    MailboxFailed,
    Poller,
    PollLimits,
    RedisBudgets,
)
from mailoauth.security import SecurityOptions
from mailoauth.testing._process import free_ports
from mailoauth.testing.faultproxy import Reply, ScriptedServer
from mailoauth.testing.oauth_server import FakeOAuthServer, ScriptedResponse
from mailoauth.tokens import AccessToken, OAuth2TokenProvider, RefreshTokenGrant, TokenProvider
from tests.integration.test_redis_store import redis_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.asyncio

WAIT = 30.0  # seconds any expected progress may take on a loaded machine
CAPS = b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR IDLE\r\n"
GMAIL_ALERT = b"NO [ALERT] Too many simultaneous connections. (Failure)"


class Ceiling(random.Random):
    """Jitter that always picks its upper bound: backoffs are exactly their cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FakeImap:
    """A scripted IMAP server: XOAUTH2 logins counted by user, empty folders, NOOPs
    counted; a user in ``refuse_login`` or a folder in ``refuse_folder`` gets that
    refusal instead."""

    def __init__(self) -> None:
        self.logins: Counter[str] = Counter()
        self.examined: Counter[str] = Counter()
        self.noops = 0
        self.refuse_login: dict[str, bytes] = {}
        self.refuse_folder: dict[str, bytes] = {}
        self.progress = asyncio.Event()

    def answer(self, line: bytes) -> Reply:
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        parts = rest.split(b" ")
        name = parts[0].upper()
        if name == b"UID" and len(parts) > 1:
            name = b"UID " + parts[1].upper()
        if name == b"CAPABILITY":
            return CAPS + tag + b" OK done\r\n"
        if name == b"AUTHENTICATE":
            fields = base64.b64decode(parts[2]).split(b"\x01")
            user = fields[0].removeprefix(b"user=").decode()
            self.logins[user] += 1
            refusal = self.refuse_login.get(user)
            return tag + b" " + (refusal or b"OK logged in") + b"\r\n"
        if name in (b"EXAMINE", b"SELECT"):
            folder = parts[1].strip(b'"').decode()
            self.examined[folder] += 1
            refusal = self.refuse_folder.get(folder)
            if refusal is not None:
                return tag + b" " + refusal + b"\r\n"
            return (
                b"* 0 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 1] ok\r\n"
                + tag
                + b" OK [READ-ONLY] done\r\n"
            )
        if name == b"UID SEARCH":
            return b"* SEARCH\r\n" + tag + b" OK done\r\n"
        if name == b"NOOP":
            self.noops += 1
            self.progress.set()
            return tag + b" OK done\r\n"
        if name == b"LOGOUT":
            return b"* BYE bye\r\n" + tag + b" OK done\r\n"
        return tag + b" BAD unknown\r\n"

    async def more_noops(self, count: int) -> None:
        """Wait until the server has answered ``count`` more NOOPs."""
        target = self.noops + count
        async with asyncio.timeout(WAIT):
            while self.noops < target:
                self.progress.clear()
                await self.progress.wait()


@pytest_asyncio.fixture
async def imap() -> AsyncIterator[tuple[FakeImap, int]]:
    fake = FakeImap()
    async with ScriptedServer(b"* OK ready\r\n", fake.answer) as server:
        yield fake, server.port


def mailbox(port: int, user: str, folder: str = "INBOX", token: Any = "at-scripted") -> Mailbox:
    return Mailbox(
        "imap",
        "127.0.0.1",
        port,
        user,
        token,
        SecurityOptions.NONE,
        folder=folder,
        allow_insecure_auth=True,
        timeout=10,
    )


def poller(boxes: list[Mailbox], **options: Any) -> Poller:
    options.setdefault("backoff", Backoff(60, 60))
    return Poller(boxes, use_idle=False, interval=0.05, rng=Ceiling(), **options)


async def next_failure(p: Poller, key: str | None = None) -> MailboxFailed:
    async with asyncio.timeout(WAIT):
        async for event in p:
            if isinstance(event, MailboxFailed) and (key is None or event.mailbox == key):
                return event
    raise AssertionError("the poller stopped")


# -- throttling, in one process ------------------------------------------------------


@pytest.mark.parametrize("where", ["login", "examine"])
async def test_throttled_account_is_held_back_and_others_go_on(
    imap: tuple[FakeImap, int], where: str
) -> None:
    fake, port = imap
    busy, calm = "busy@example.test", "calm@example.test"
    if where == "login":  # Gmail's answer when an account has too many connections
        fake.refuse_login[busy] = GMAIL_ALERT
        folders = ("INBOX", "Sent")
        expected: type[Exception] = AuthenticationError
    else:
        fake.refuse_folder.update(
            {f: b"NO [THROTTLED] Request is throttled" for f in ("Busy1", "Busy2")}
        )
        folders = ("Busy1", "Busy2")
        expected = CommandError
    boxes = [mailbox(port, busy, f) for f in folders] + [mailbox(port, calm)]
    budgets = LocalBudgets(PollLimits(max_per_account=1))
    async with poller(boxes, budgets=budgets) as p:
        failure = await next_failure(p)
        assert failure.mailbox in {b.key for b in boxes[:2]}
        assert isinstance(failure.error, expected)
        assert not failure.permanent and failure.retry_in == 60
        await fake.more_noops(20)  # the calm account is served meanwhile
        tries = sum(fake.logins.values()) if where == "login" else sum(fake.examined.values())
        assert await budgets.held_back(boxes[0]) > 30 and await budgets.held_back(boxes[1]) > 30
        assert await budgets.held_back(boxes[2]) == 0
    # One try for the whole account: its other mailbox never went in while held back.
    if where == "login":
        assert fake.logins[busy] == 1 and tries == fake.logins[busy] + fake.logins[calm]
    else:
        assert fake.examined["Busy1"] + fake.examined["Busy2"] == 1
    assert p.failed == {}


class CountingProvider:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls.append(force_refresh)
        return AccessToken(f"at-{len(self.calls)}")


@pytest.mark.parametrize(
    "refusal", [GMAIL_ALERT, b"NO [THROTTLED] slow down", b"NO [UNAVAILABLE] try later"]
)
async def test_a_busy_login_is_not_retried_with_a_refreshed_token(
    imap: tuple[FakeImap, int], refusal: bytes
) -> None:
    """A login refused for being busy says nothing about the token: no refresh, no
    second AUTHENTICATE (which would only add to the load), a retryable error."""
    fake, port = imap
    fake.refuse_login["busy@example.test"] = refusal
    provider = CountingProvider()
    client = ImapClient(
        "127.0.0.1",
        port,
        "busy@example.test",
        provider,
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        timeout=10,
    )
    with pytest.raises(AuthenticationError) as caught:
        async with client:
            pass
    assert caught.value.temporary and caught.value.retryable
    assert fake.logins["busy@example.test"] == 1
    assert provider.calls == [False]


async def test_token_endpoint_429_holds_back_its_credential_for_retry_after(
    imap: tuple[FakeImap, int],
) -> None:
    fake, port = imap
    with FakeOAuthServer() as oauth:
        providers: dict[str, TokenProvider] = {}
        for client in ("c1", "c2"):
            oauth.add_client(client, f"secret-{client}")
            providers[client] = OAuth2TokenProvider(
                oauth.token_url,
                RefreshTokenGrant(oauth.issue_refresh_token(f"{client}@example.test")),
                client_id=client,
                client_secret=f"secret-{client}",
            )
        # The endpoint answers credential c1's first request with 429, Retry-After 30.
        first, second = (mailbox(port, f"{u}@example.test", token=providers["c1"]) for u in "ab")
        oauth.script(
            ScriptedResponse(429, {"error": "rate_limited"}, headers={"Retry-After": "30"})
        )
        async with poller([first], backoff=Backoff(0.01, 0.01)) as p:
            failure = await next_failure(p)
            assert isinstance(failure.error, TransientTokenError)
            assert failure.error.status_code == 429 and failure.error.retry_after == 30
            assert failure.retry_in == 30  # max(Retry-After, backoff)
            # Another account of the same credential, and one of another credential.
            other = mailbox(port, "c@example.test", token=providers["c2"])
            p.add(second)
            p.add(other)
            await fake.more_noops(20)
            assert await p.budgets.held_back(first) > 20
            assert await p.budgets.held_back(second) > 20
            assert await p.budgets.held_back(other) == 0
            c1_requests = [f for f in oauth.token_forms if f.get("client_id") == "c1"]
        # One request for the credential, none again while it is held back: neither of
        # its accounts logged in; the other credential's did.
        assert len(c1_requests) == 1
        assert fake.logins["a@example.test"] == fake.logins["b@example.test"] == 0
        assert fake.logins["c@example.test"] >= 1


# -- Redis ---------------------------------------------------------------------------


@pytest_asyncio.fixture
async def fleet(redis_url: str) -> AsyncIterator[Callable[..., RedisBudgets]]:  # noqa: F811
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    made: list[RedisBudgets] = []

    def make(**options: Any) -> RedisBudgets:
        options.setdefault("lease", 0.9)
        options.setdefault("poll_interval", 0.02)
        budgets = RedisBudgets(redis_url, prefix=prefix, **options)
        made.append(budgets)
        return budgets

    yield make
    for budgets in made:
        await budgets.aclose()


def count_per_user(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Connections per username open at once (counted from the start of connect to
    the end of aclose), and the most seen."""
    seen: dict[str, Any] = {"open": Counter(), "max": Counter()}
    connect: Callable[[ImapClient], Awaitable[None]] = ImapClient.connect
    aclose: Callable[[ImapClient], Awaitable[None]] = ImapClient.aclose

    async def counted_connect(self: ImapClient) -> None:
        seen["open"][self.username] += 1
        seen["max"][self.username] = max(seen["max"][self.username], seen["open"][self.username])
        await connect(self)

    async def counted_close(self: ImapClient) -> None:
        try:
            await aclose(self)
        finally:
            seen["open"][self.username] -= 1

    monkeypatch.setattr(ImapClient, "connect", counted_connect)
    monkeypatch.setattr(ImapClient, "aclose", counted_close)
    return seen


async def test_two_pollers_with_their_own_redis_budgets_share_one_account_cap(
    imap: tuple[FakeImap, int],
    fleet: Callable[..., RedisBudgets],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, port = imap
    seen = count_per_user(monkeypatch)
    user = "shared@example.test"
    folders = [f"f{i}" for i in range(8)]
    limits = PollLimits(max_per_account=2)
    a = poller([mailbox(port, user, f) for f in folders[:4]], budgets=fleet(limits=limits))
    b = poller([mailbox(port, user, f) for f in folders[4:]], budgets=fleet(limits=limits))
    async with a, b:
        # Eight mailboxes, two slots: each is served in turn, at least twice.
        async with asyncio.timeout(WAIT * 2):
            while min(fake.examined[f] for f in folders) < 2:
                fake.progress.clear()
                await fake.progress.wait()
    assert 1 <= seen["max"][user] <= 2
    assert a.failed == b.failed == {}


async def test_a_fleet_wide_hold_back_reaches_another_poller(
    imap: tuple[FakeImap, int], fleet: Callable[..., RedisBudgets]
) -> None:
    fake, port = imap
    busy, calm = "busy@example.test", "calm@example.test"
    fake.refuse_login[busy] = GMAIL_ALERT
    first = poller([mailbox(port, busy)], budgets=fleet())
    async with first:
        failure = await next_failure(first)
        assert not failure.permanent
    # Another worker, started after the throttled answer: it waits for the same account.
    other_budgets = fleet()
    sent = mailbox(port, busy, "Sent")
    async with poller([sent, mailbox(port, calm)], budgets=other_budgets):
        await fake.more_noops(20)
        assert await other_budgets.held_back(sent) > 30
    assert fake.logins[busy] == 1 and fake.logins[calm] >= 1


async def test_workers_racing_for_a_throttled_account_knock_once(
    imap: tuple[FakeImap, int], fleet: Callable[..., RedisBudgets]
) -> None:
    """Two workers, one slot per account between them: whichever logs in first and is
    refused holds the account back before it frees the slot, so the other never
    knocks."""
    fake, port = imap
    busy, calm = "busy@example.test", "calm@example.test"
    fake.refuse_login[busy] = GMAIL_ALERT
    limits = PollLimits(max_per_account=1)
    budgets = [fleet(limits=limits), fleet(limits=limits)]
    inbox, sent = mailbox(port, busy), mailbox(port, busy, "Sent")
    a = poller([inbox], budgets=budgets[0])
    b = poller([sent, mailbox(port, calm)], budgets=budgets[1])
    async with a, b:
        await fake.more_noops(20)
        assert await budgets[0].held_back(sent) > 30
        assert await budgets[1].held_back(inbox) > 30
    assert fake.logins[busy] == 1 and fake.logins[calm] >= 1


HOLDER = """
import asyncio, sys
from mailoauth.poll import Mailbox, PollLimits, RedisBudgets

async def main(url, prefix):
    budgets = RedisBudgets(url, prefix=prefix, lease=1.0, limits=PollLimits(max_per_account=1))
    box = Mailbox("imap", "imap.example.test", 993, "held@example.test", "at-x")
    async with budgets.slots(box).hold():
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:3]))
"""


async def test_a_killed_holder_frees_its_slot_within_one_lease(
    redis_url: str,  # noqa: F811
    fleet: Callable[..., RedisBudgets],
) -> None:
    budgets = fleet(limits=PollLimits(max_per_account=1))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, redis_url, budgets.prefix, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            assert await proc.stdout.readline() == b"held\n"
        box = Mailbox("imap", "imap.example.test", 993, "held@example.test", "at-y")
        assert await budgets.holders("account", "imap.example.test|held@example.test") == 1
        entered = False
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5), budgets.slots(box).hold():
                entered = True  # the other process holds the account's one slot
        assert not entered
        proc.kill()  # SIGKILL: no release; the lease (1 s) runs out instead
        await proc.wait()
        async with asyncio.timeout(WAIT), budgets.slots(box).hold():
            assert await budgets.holders("account", "imap.example.test|held@example.test") == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_slot_is_renewed_while_held_and_freed_on_release(
    fleet: Callable[..., RedisBudgets], caplog: pytest.LogCaptureFixture
) -> None:
    budgets = fleet(lease=1.5, limits=PollLimits(max_per_account=1))
    box = Mailbox("imap", "imap.example.test", 993, "long@example.test", "at-l")
    account = "imap.example.test|long@example.test"
    finished = False
    async with asyncio.timeout(WAIT), budgets.slots(box).hold():
        for _ in range(3):  # three leases: each renewal (every 0.5 s) must move the cut
            await asyncio.sleep(1.5)
            assert await budgets.holders("account", account) == 1
        finished = True
    assert finished and "could not be renewed" not in caplog.text
    assert await budgets.holders("account", account) == 0


async def test_a_slot_lost_in_redis_cuts_the_connection(
    redis_url: str,  # noqa: F811
    fleet: Callable[..., RedisBudgets],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis.asyncio

    budgets = fleet(limits=PollLimits(max_per_account=1))
    box = Mailbox("imap", "imap.example.test", 993, "lost@example.test", "at-z")
    finished = False
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(WAIT), budgets.slots(box).hold():
            # Another holder's view: the slot is gone (expired while this one stalled).
            await client.delete(f"{budgets.prefix}sem:account:imap.example.test|lost@example.test")
            await asyncio.sleep(WAIT * 2)
            finished = True
    finally:
        await client.aclose()
    assert not finished
    assert "could not be renewed in time (lost to another holder)" in caplog.text


async def test_without_redis_nobody_connects(caplog: pytest.LogCaptureFixture) -> None:
    (port,) = free_ports(1)  # nothing listens there
    budgets = RedisBudgets(f"redis://127.0.0.1:{port}/0", timeout=1.0, poll_interval=0.05)
    box = Mailbox("imap", "imap.example.test", 993, "u@example.test", "at-q")
    entered = False
    try:
        with (
            caplog.at_level(logging.WARNING, logger="mailoauth.poll"),
            pytest.raises(TimeoutError),
        ):
            async with asyncio.timeout(1.5), budgets.slots(box).hold():
                entered = True
    finally:
        await budgets.aclose()
    assert not entered
    assert "cannot be reached" in caplog.text


async def test_mailboxes_outnumbering_a_redis_slot_take_turns(
    imap: tuple[FakeImap, int], fleet: Callable[..., RedisBudgets]
) -> None:
    """Six mailboxes of one account, one slot, a short interval, over two workers: a
    holder that gives its slot up to a waiter queues behind the waiters, so every
    mailbox is served in turn (before the queue, the one that let go mostly took it
    back and some mailboxes never connected)."""
    fake, port = imap
    user = "turns@example.test"
    folders = [f"t{i}" for i in range(6)]
    limits = PollLimits(max_per_account=1)
    a = poller([mailbox(port, user, f) for f in folders[:3]], budgets=fleet(limits=limits))
    b = poller([mailbox(port, user, f) for f in folders[3:]], budgets=fleet(limits=limits))
    async with a, b:
        # Eighteen turns: served in order, each mailbox had about three of them.
        async with asyncio.timeout(WAIT * 2):
            while sum(fake.examined[f] for f in folders) < 18:
                fake.progress.clear()
                await fake.progress.wait()
        turns = {f: fake.examined[f] for f in folders}
    assert min(turns.values()) >= 2, turns
    assert a.failed == b.failed == {}


async def test_a_free_redis_slot_goes_to_the_oldest_waiter(
    fleet: Callable[..., RedisBudgets],
) -> None:
    """First come, first served: two waiters queue in order; the holder lets go and
    asks again at once, and is served last."""
    budgets = fleet(limits=PollLimits(max_per_account=1))
    box = Mailbox("imap", "imap.example.test", 993, "fifo@example.test", "at-f")
    queue = f"{budgets.prefix}queue:account:imap.example.test|fifo@example.test"
    order: list[str] = []

    async def turn(name: str) -> None:
        async with budgets.slots(box).hold():
            order.append(name)
            await asyncio.sleep(0.05)

    async def queued(count: int) -> None:
        async with asyncio.timeout(WAIT):
            while await budgets._redis.zcard(queue) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async with asyncio.timeout(WAIT):
        first = budgets.slots(box).hold()
        await first.__aenter__()
        try:
            waiters = [asyncio.create_task(turn("w1"))]
            await queued(1)
            waiters.append(asyncio.create_task(turn("w2")))
            await queued(2)
        finally:
            await first.__aexit__(None, None, None)
        await turn("again")  # the one that let go, asking at once
        await asyncio.gather(*waiters)
    assert order == ["w1", "w2", "again"]
    assert await budgets._redis.zcard(queue) == 0
