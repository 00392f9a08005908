"""The fleet's connection budgets, fleet-wide, against real Redis and a scripted IMAP
server: two FleetWorkers sharing one account's mailboxes never hold more connections
to it at once than its cap (counted by the server), ``Fleet.status()`` reports those
connections, and a throttling answer one worker sees holds the account back in the
other worker too."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextvars
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mailoauth.cli.poll import _fleet_worker
from mailoauth.errors import ConfigurationError
from mailoauth.poll import (
    Backoff,
    LocalBudgets,
    MailboxFailed,
    MailboxSpec,
    PollLimits,
    RedisBudgets,
)
from mailoauth.poll.config import PollConfig
from mailoauth.poll.fleet import Fleet, FleetStatus, FleetWorker
from mailoauth.poll.spec import Mailbox
from mailoauth.security import SecurityOptions
from mailoauth.testing.faultproxy import Reply, ScriptedServer
from tests.integration.test_fleet import Running, until
from tests.integration.test_poll_budgets import GMAIL_ALERT, Ceiling, FakeImap
from tests.integration.test_redis_store import redis_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.asyncio

WAIT = 60.0  # seconds any expected progress may take on a loaded machine
SHARED = "shared@example.test"


class _Session:
    logged_in = False


_session: contextvars.ContextVar[_Session] = contextvars.ContextVar("session")


class CountingServer(ScriptedServer):
    """The scripted IMAP server of ``fake``, counting the sessions of each user that
    are logged in at once (from a successful AUTHENTICATE to LOGOUT or the connection's
    end), server-side."""

    def __init__(self, fake: FakeImap) -> None:
        super().__init__(b"* OK ready\r\n", self._answer)
        self.fake = fake
        self.open: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self._users: dict[int, str] = {}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session()
        _session.set(session)  # this connection's task: answer() runs in it
        try:
            await super()._handle(reader, writer)
        finally:
            self._logout(session)

    def _answer(self, line: bytes) -> Reply:
        reply = self.fake.answer(line)
        session = _session.get()
        words = line.split(b" ")
        if len(words) > 1 and words[1].upper() == b"AUTHENTICATE" and isinstance(reply, bytes):
            user = self._user(line)
            if b" OK " in reply and not session.logged_in and user is not None:
                session.logged_in = True
                self._users[id(session)] = user
                self.open[user] = self.open.get(user, 0) + 1
                self.most[user] = max(self.most.get(user, 0), self.open[user])
        elif len(words) > 1 and words[1].upper().startswith(b"LOGOUT"):
            self._logout(session)
        return reply

    @staticmethod
    def _user(line: bytes) -> str | None:
        """The user of an ``AUTHENTICATE XOAUTH2 <initial response>`` line."""
        try:
            fields = base64.b64decode(line.split(b" ")[3]).split(b"\x01")
            return fields[0].removeprefix(b"user=").decode()
        except (IndexError, ValueError, binascii.Error):
            return None

    def _logout(self, session: _Session) -> None:
        if session.logged_in:
            session.logged_in = False
            user = self._users.pop(id(session))
            self.open[user] -= 1


@pytest_asyncio.fixture
async def imap() -> AsyncIterator[CountingServer]:
    server = CountingServer(FakeImap())
    async with server:
        yield server


@pytest_asyncio.fixture
async def fleet(redis_url: str) -> AsyncIterator[Fleet]:  # noqa: F811
    async with Fleet(redis_url, prefix=f"b{uuid.uuid4().hex[:8]}") as fleet:
        yield fleet


def box(port: int, user: str, folder: str = "INBOX") -> MailboxSpec:
    return MailboxSpec("imap", "127.0.0.1", port, user, user, SecurityOptions.NONE, folder=folder)


def resolve(spec: MailboxSpec) -> Mailbox:
    return spec.to_mailbox("at-scripted", allow_insecure_auth=True)


def worker(redis_url: str, fleet: Fleet, name: str, **options: Any) -> FleetWorker:  # noqa: F811
    options = {"lease": 6.0, "interval": 0.05, **options}
    return FleetWorker(
        redis_url,
        resolve,
        worker_id=name,
        prefix=fleet.keys.prefix,
        rng=Ceiling(),
        use_idle=False,
        backoff=Backoff(60, 60),
        **options,
    )


async def test_two_workers_share_one_account_cap_fleet_wide(
    imap: CountingServer,
    fleet: Fleet,
    redis_url: str,  # noqa: F811
) -> None:
    folders = [f"f{i}" for i in range(4)]
    for folder in folders:
        await fleet.add(box(imap.port, SHARED, folder))
    # A holder gives its slot up when its renewal (every lease / 3) finds a waiter, and
    # waits an interval before it asks again: long enough for a waiter to get in.
    options: dict[str, Any] = {"limits": PollLimits(max_per_account=1), "lease": 3.0}
    options["interval"] = 1.0
    a = Running(worker(redis_url, fleet, "wa", **options)).start()
    b = Running(worker(redis_url, fleet, "wb", **options)).start()
    account = f"account:127.0.0.1|{SHARED}"
    seen: list[FleetStatus] = []
    try:
        assert isinstance(a.worker.budgets, RedisBudgets)
        assert a.worker.budgets.worker_id == "wa"
        await until(lambda: len(a.worker.owned) == len(b.worker.owned) == 2, "no even share")
        # Four mailboxes of one account, one slot between two workers: each is served
        # in turn (a turn lasts until the holder's renewal sees a waiter; the oldest
        # waiter comes next), six turns in all, while the fleet's status is sampled.
        async with asyncio.timeout(WAIT * 1.5):
            while (
                min(imap.fake.examined[f] for f in folders) < 1
                or sum(imap.fake.examined.values()) < 6
            ):
                seen.append(await fleet.status())
                await asyncio.sleep(0.01)
    finally:
        await a.stop()
        await b.stop()
    assert imap.most[SHARED] == 1
    assert a.events == b.events == []  # no failure either
    # The status counts connections from the budgets: never more than the cap, and
    # some seen open (by their worker too).
    assert all(s.connections.get(account, 0) <= 1 for s in seen)
    assert any(s.connections.get(account) == 1 for s in seen)
    assert any(w.connections == 1 for s in seen for w in s.workers.values())
    after = await fleet.status()
    assert after.connections == {} and after.workers == {}


async def test_a_throttled_answer_in_one_worker_holds_the_account_back_in_another(
    imap: CountingServer,
    fleet: Fleet,
    redis_url: str,  # noqa: F811
) -> None:
    busy, calm = "busy@example.test", "calm@example.test"
    imap.fake.refuse_login[busy] = GMAIL_ALERT
    inbox = box(imap.port, busy)
    await fleet.add(inbox)
    a = Running(worker(redis_url, fleet, "wa")).start()  # rank 0: keeps what it holds
    b: Running | None = None
    try:
        await until(lambda: any(isinstance(e, MailboxFailed) for e in a.events), "no failure")
        assert imap.fake.logins[busy] == 1
        b = Running(worker(redis_url, fleet, "wb")).start()

        async def both_joined() -> bool:
            return set((await fleet.status()).workers) == {"wa", "wb"}

        await until(both_joined, "b never joined")
        # Two mailboxes, two workers: b takes the account's other mailbox.
        sent = box(imap.port, busy, "Sent")
        await fleet.add(sent)
        await until(lambda: b is not None and sent.key in b.worker.poller.mailboxes, "b idle")
        assert a.worker.owned == {inbox.key}
        await fleet.add(box(imap.port, calm))  # a's, by fair share: served meanwhile
        await imap.fake.more_noops(20)
        assert b.worker.owned == {sent.key}
        assert await b.worker.budgets.held_back(resolve(sent)) > 30
    finally:
        await a.stop()
        if b is not None:
            await b.stop()
    # b never knocked: the account was held back fleet-wide by a's throttled answer.
    assert imap.fake.logins[busy] == 1
    assert imap.fake.logins[calm] >= 1
    assert b is not None and b.events == []


async def test_given_budgets_win_and_limits_are_given_once(redis_url: str) -> None:  # noqa: F811
    mine = LocalBudgets(PollLimits(max_per_account=3))
    given = FleetWorker(redis_url, resolve, budgets=mine, prefix="b-given")
    assert given.budgets is mine and given.poller.budgets is mine
    assert given._owned_budgets is None and given._budget_redis is None
    made = FleetWorker(redis_url, resolve, prefix="b-made", max_per_account=2)
    assert isinstance(made.budgets, RedisBudgets)
    assert made.budgets.limits.max_per_account == 2
    assert made.budgets.prefix == "b-made:budget:" and made.budgets.lease == made.lease
    bad: tuple[dict[str, Any], ...] = (
        {"limits": PollLimits(), "max_per_account": 2},
        {"budgets": mine, "limits": PollLimits()},
    )
    for options in bad:
        with pytest.raises(ConfigurationError):
            FleetWorker(redis_url, resolve, prefix="b-bad", **options)
    for worker in (given, made):  # never entered: close the clients they made
        for client in (worker._redis, worker._lease_redis, worker._budget_redis):
            if client is not None:
                await client.aclose()
                await client.connection_pool.disconnect()


async def test_clients_made_from_a_url_close_their_pools(
    redis_url: str,  # noqa: F811
    fleet: Fleet,
) -> None:
    """The admin's and the worker's Redis clients made from a URL leave no connection
    open once closed (a client given a pool did not close it)."""
    import redis.asyncio

    probe = redis.asyncio.Redis.from_url(redis_url)

    async def connections(name: str) -> int:
        return sum(1 for c in await probe.client_list() if c.get("name") == name)

    try:
        async with Fleet(f"{redis_url}?client_name=fair-admin", prefix=fleet.keys.prefix) as admin:
            await admin.status()
            assert await connections("fair-admin") >= 1
        assert await connections("fair-admin") == 0
        async with worker(f"{redis_url}?client_name=fair-worker", fleet, "w-close"):
            async with asyncio.timeout(WAIT):  # its clients connect as it starts
                while await connections("fair-worker") < 2:  # noqa: ASYNC110  (state, leases)
                    await asyncio.sleep(0.05)
        assert await connections("fair-worker") == 0
    finally:
        await probe.aclose()


async def test_the_poll_command_worker_makes_its_own_budgets(
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`mailoauth poll --redis` leaves the budgets to FleetWorker: the worker's id (so
    that `poll status` counts its connections under it), its lease, the [poll] caps."""
    config = PollConfig(tmp_path / "w.toml", {}, (), poll_options={"max_per_account": 1})
    args = argparse.Namespace(
        redis=redis_url, prefix=f"c{uuid.uuid4().hex[:8]}", lease=2.0, worker_id=None
    )
    async with config.sources() as sources, _fleet_worker(config, sources, args) as stream:
        assert isinstance(stream, FleetWorker)
        budgets = stream.budgets
        assert isinstance(budgets, RedisBudgets) and budgets is stream._owned_budgets
        assert budgets.worker_id == stream.worker_id
        assert budgets.lease == stream.lease == 2.0
        assert budgets.limits.max_per_account == 1
        assert budgets.prefix == f"{args.prefix}:budget:"
