"""The fleet in one process against real Redis and Dovecot: fair share as workers join
and leave, runtime add/remove, redelivery after a handover, fencing of a stalled
worker, and a Redis restart under running workers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from mailoauth.errors import LockLostError, TransportError
from mailoauth.poll import ImapState, MailboxFailed, MailboxSpec, NewMessage, PollEvent
from mailoauth.poll.fleet import Fleet, FleetStatus, FleetWorker
from mailoauth.poll.fleet._redis import Keys
from mailoauth.poll.spec import Mailbox
from mailoauth.security import SecurityOptions
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.redis_server import RedisServer
from mailoauth.tokens.access_token import AccessToken, utcnow
from tests.integration.conftest import MailServers, skip_or_fail

pytestmark = pytest.mark.asyncio

WAIT = 30.0  # seconds any expected change may take (shared, loaded machines)
IDLE_ROUND = 3.0
POLLER: dict[str, Any] = {"interval": 0.5, "idle_timeout": IDLE_ROUND}


def need_redis() -> None:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    need_redis()
    with RedisServer() as server:
        yield server


@pytest_asyncio.fixture
async def fleet(redis_server: RedisServer) -> AsyncIterator[Fleet]:
    async with Fleet(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}") as fleet:
        yield fleet


class Provider:
    """Mints tokens for one user from the fake OAuth server."""

    def __init__(self, oauth: FakeOAuthServer, username: str) -> None:
        self.oauth, self.username = oauth, username

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        value = self.oauth.issue_access_token(self.username)
        return AccessToken(value, utcnow() + dt.timedelta(hours=1))


def resolver(ms: MailServers) -> Callable[[MailboxSpec], Mailbox]:
    providers: dict[str, Provider] = {}

    def resolve(spec: MailboxSpec) -> Mailbox:
        provider = providers.setdefault(spec.credential, Provider(ms.oauth, spec.username))
        return spec.to_mailbox(provider, ssl_context=ms.client_context())

    return resolve


def spec(ms: MailServers) -> MailboxSpec:
    user = f"f{uuid.uuid4().hex[:10]}@example.test"
    return MailboxSpec(
        "imap", "localhost", ms.dovecot.imaps_port, user, user, SecurityOptions.SSL_IMPLICIT
    )


def deliver(ms: MailServers, box: MailboxSpec, subject: str) -> None:
    ms.dovecot.deliver(box.username, f"From: a@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n")


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Wait until ``check()`` (sync or async) is truthy; fail naming ``what``."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover


class Running:
    """A worker consumed by a task of its own: its events land in :attr:`events`."""

    def __init__(self, worker: FleetWorker) -> None:
        self.worker = worker
        self.events: list[PollEvent] = []
        self.task: asyncio.Task[None] | None = None

    async def _consume(self) -> None:
        async with self.worker:
            async for event in self.worker:
                self.events.append(event)

    def start(self) -> Running:
        self.task = asyncio.get_running_loop().create_task(self._consume())
        return self

    async def stop(self) -> None:
        """A clean leave: the iteration ends, leaving ``async with`` hands over."""
        self.worker.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, WAIT)

    def messages(self) -> list[NewMessage]:
        return [e for e in self.events if isinstance(e, NewMessage)]


def worker(
    ms: MailServers, fleet: Fleet, name: str, *, lease: float = 30.0, **options: Any
) -> FleetWorker:
    return FleetWorker(
        fleet._redis,
        resolver(ms),
        worker_id=name,
        lease=lease,
        prefix=fleet.keys.prefix,
        **{**POLLER, **options},
    )


def held(status: FleetStatus) -> dict[str, int]:
    return {w: len(s.keys) for w, s in status.workers.items()}


async def settled(fleet: Fleet, counts: list[int]) -> FleetStatus:
    """Wait until the workers hold ``counts`` mailboxes (in any order), all leased."""
    last: list[FleetStatus] = []

    async def check() -> bool:
        try:
            last[:] = [await fleet.status()]
        except TransportError:  # Redis restarting
            return False
        return sorted(held(last[0]).values()) == sorted(counts) and not last[0].unleased

    try:
        await until(check, f"leases never settled at {counts}")
    except TimeoutError:
        raise AssertionError(f"leases never settled at {counts}: {held(last[0])}") from None
    return last[0]


async def test_fair_share_as_workers_join_and_a_clean_leave_hands_over_at_once(
    mail_servers: MailServers, fleet: Fleet
) -> None:
    boxes = [spec(mail_servers) for _ in range(10)]
    for box in boxes:
        await fleet.add(box)
    assert set(await fleet.mailboxes()) == {b.key for b in boxes}
    # A 30 s lease: whatever moves below moves by notification, not by expiry.
    a = Running(worker(mail_servers, fleet, "w-a")).start()
    await settled(fleet, [10])
    b = Running(worker(mail_servers, fleet, "w-b")).start()
    await settled(fleet, [5, 5])
    c = Running(worker(mail_servers, fleet, "w-c")).start()
    status = await settled(fleet, [4, 3, 3])
    assert status.spread() == 1
    # Exactly one holder per mailbox, and each worker watches just what it holds (a
    # granted mailbox is added to the poller once its in-flight events are read).
    for run in (a, b, c):
        assert run.worker.owned == set(status.workers[run.worker.worker_id].keys)
    await until(
        lambda: all(set(r.worker.poller.mailboxes) == r.worker.owned for r in (a, b, c)),
        "a worker watches other mailboxes than it holds",
    )
    await b.stop()
    status = await settled(fleet, [5, 5])
    assert set(status.workers) == {"w-a", "w-c"}
    # Nobody lost mail meanwhile: one message to each, each reported once. (Delivered
    # once every mailbox has its starting point: with start="new", one that moved before
    # its first holder saved one starts at the mail there when the next holder looks.)
    await until(lambda: _both(fleet, fleet.keys, *boxes), "no baselines")
    for box in boxes:
        deliver(mail_servers, box, "after the moves")
    await until(lambda: len(a.messages()) + len(c.messages()) >= len(boxes), "all reported")
    got = Counter(e.mailbox for e in a.messages() + c.messages())
    assert got == Counter({b.key: 1 for b in boxes})
    await a.stop()
    await c.stop()
    assert (await fleet.status()).leases == {}


async def test_mailboxes_added_and_removed_at_run_time(
    mail_servers: MailServers, fleet: Fleet
) -> None:
    first, second = spec(mail_servers), spec(mail_servers)
    await fleet.add(first)
    run = Running(worker(mail_servers, fleet, "w-1")).start()
    await until(lambda: run.worker.owned == {first.key}, "first not taken")
    await fleet.add(second)
    await until(lambda: run.worker.owned == {first.key, second.key}, "second not taken")
    # Wait for both baselines (start="new"), then deliver.
    keys = Keys(fleet.keys.prefix)
    await until(lambda: _both(fleet, keys, first, second), "no baselines")
    deliver(mail_servers, first, "to first")
    deliver(mail_servers, second, "to second")
    await until(lambda: len(run.messages()) == 2, "two messages")
    assert await fleet.remove(first.key)
    await until(lambda: run.worker.owned == {second.key}, "first not dropped")
    assert first.key not in run.worker.poller.mailboxes
    deliver(mail_servers, first, "not watched")
    deliver(mail_servers, second, "still watched")
    await until(lambda: len(run.messages()) == 3, "third message")
    await asyncio.sleep(1.0)
    await run.stop()
    subjects = Counter((e.mailbox, str(e.message()["Subject"])) for e in run.messages())
    assert subjects == Counter(
        {(first.key, "to first"): 1, (second.key, "to second"): 1, (second.key, "still watched"): 1}
    )
    assert not await fleet.remove(first.key)


async def test_adding_a_spec_again_restarts_its_mailbox_with_the_new_one(
    mail_servers: MailServers, fleet: Fleet
) -> None:
    box = spec(mail_servers)
    await fleet.add(box)
    async with worker(mail_servers, fleet, "w-1") as run:
        await until(lambda: box.key in run.poller.mailboxes, "not watched")
        assert run.poller.mailboxes[box.key].timeout == box.timeout
        await fleet.add(dataclasses.replace(box, timeout=7.5))
        await until(
            lambda: (
                box.key in run.poller.mailboxes and run.poller.mailboxes[box.key].timeout == 7.5
            ),
            "not restarted with the new spec",
        )
        assert run.owned == {box.key}
        assert (await fleet.mailboxes())[box.key].timeout == 7.5


async def _both(fleet: Fleet, keys: Keys, *boxes: MailboxSpec) -> bool:
    """Whether every box has a saved state (its baseline, with start="new")."""
    return bool(await fleet._redis.exists(*(keys.state(b.key) for b in boxes)) == len(boxes))


async def first_message(worker: FleetWorker) -> NewMessage:
    async with asyncio.timeout(WAIT):
        async for event in worker:
            if isinstance(event, NewMessage):
                return event
            raise AssertionError(f"unexpected failure: {event}")
    raise AssertionError("the worker stopped")


async def test_an_event_not_acknowledged_before_a_handover_is_redelivered_marked(
    mail_servers: MailServers, fleet: Fleet
) -> None:
    box = spec(mail_servers)
    keys = fleet.keys
    await fleet.add(box)
    async with worker(mail_servers, fleet, "w-first", auto_ack=False) as first:
        await until(lambda: _both(fleet, keys, box), "no baseline")
        deliver(mail_servers, box, "handled twice")
        event = await first_message(first)
        assert not event.redelivered
        inflight = await fleet._redis.hkeys(keys.inflight(box.key))
        assert [k.decode() for k in inflight] == [event.dedupe_key]
        # Leaves without acknowledging it (a crash would do the same, a lease later).
    assert await fleet._redis.hkeys(keys.inflight(box.key)) != []
    async with worker(mail_servers, fleet, "w-second", auto_ack=False) as second:
        again = await first_message(second)
        assert again.redelivered
        assert again.dedupe_key == event.dedupe_key and again.raw == event.raw
        await second.ack(again)
        await second.ack(again)  # twice: nothing more
        assert await fleet._redis.hkeys(keys.inflight(box.key)) == []
        saved = json.loads(await fleet._redis.get(keys.state(box.key)))
        assert saved == {"imap": {"uidvalidity": event.uidvalidity, "uid": event.uid}}
        status = await fleet.status()
        assert status.leases == {box.key: "w-second"} and status.lag[box.key] == 0.0
    # Handled now: a third worker reports nothing again.
    async with worker(mail_servers, fleet, "w-third") as third:
        await until(lambda: third.owned == {box.key}, "not taken")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2 * IDLE_ROUND):
                event3 = await third.__anext__()
                raise AssertionError(f"reported again: {event3}")


async def test_a_stalled_worker_can_neither_watch_nor_commit(
    mail_servers: MailServers, fleet: Fleet
) -> None:
    box = spec(mail_servers)
    keys = fleet.keys
    await fleet.add(box)
    lease = 1.5
    async with worker(mail_servers, fleet, "w-stalls", lease=lease, auto_ack=False) as stalled:
        await until(lambda: _both(fleet, keys, box), "no baseline")
        deliver(mail_servers, box, "one")
        event = await first_message(stalled)
        token = stalled.keeper.token(box.key)
        assert token is not None

        # The stall: renewals stop (the keeper and the listener never run again). A tick
        # under way when cancelled may still finish its renewal; none comes after it.
        async def frozen_tick() -> bool:
            await asyncio.Event().wait()
            return False

        stalled.keeper.tick = frozen_tick  # type: ignore[method-assign]
        for task in stalled._tasks[1:]:
            task.cancel()
        # Its own watchdog stops watching within the local share of the lease.
        await until(lambda: not stalled.owned, "still watching", timeout=lease * 3)
        assert box.key not in stalled.poller.mailboxes
        async with worker(mail_servers, fleet, "w-takes", lease=lease, auto_ack=False) as taker:
            again = await first_message(taker)
            assert again.redelivered and again.dedupe_key == event.dedupe_key
            # The stalled worker's late acknowledgement is refused...
            with pytest.raises(LockLostError):
                await stalled.ack(event)
            # ...and so is a write from a worker frozen so hard that even its watchdog
            # did not run (it still believes it holds the lease): Redis refuses it.
            stalled.keeper.fences[box.key] = int(token.rsplit("|", 1)[1])
            stalled.keeper.deadlines[box.key] = float("inf")
            with pytest.raises(LockLostError, match="granted to another worker"):
                await stalled.store.save(box.key, ImapState(event.uidvalidity or 0, 999))
            stalled.keeper.fences.clear()
            stalled.keeper.deadlines.clear()
            await taker.ack(again)
        saved = json.loads(await fleet._redis.get(keys.state(box.key)))
        assert saved["imap"]["uid"] == event.uid  # not 999


async def test_redis_restarted_under_the_fleet_loses_nothing(mail_servers: MailServers) -> None:
    need_redis()
    boxes = [spec(mail_servers) for _ in range(6)]
    with RedisServer() as server:
        async with Fleet(server.url, prefix="restart") as fleet:
            for box in boxes:
                await fleet.add(box)
            lease = 3.0
            runs = [
                Running(
                    FleetWorker(
                        server.url,
                        resolver(mail_servers),
                        worker_id=f"w-{i}",
                        lease=lease,
                        prefix="restart",
                        **POLLER,
                    )
                ).start()
                for i in range(2)
            ]
            keys = fleet.keys
            await settled(fleet, [3, 3])
            await until(lambda: _both(fleet, keys, *boxes), "no baselines")
            for box in boxes:
                deliver(mail_servers, box, "before")
            await until(lambda: sum(len(r.messages()) for r in runs) >= 6, "before")
            await asyncio.to_thread(server.stop, cleanup=False)
            for box in boxes:
                deliver(mail_servers, box, "while down")
            # No lease outlives its local deadline while Redis is away.
            await until(
                lambda: all(not r.worker.owned for r in runs), "kept leases", timeout=3 * lease
            )
            await asyncio.to_thread(server.start)
            for box in boxes:
                deliver(mail_servers, box, "after")
            status = await settled(fleet, [3, 3])
            assert status.spread() == 0
            await until(
                lambda: (
                    {("after", b.key) for b in boxes}
                    <= {
                        (str(e.message()["Subject"]), e.mailbox) for r in runs for e in r.messages()
                    }
                ),
                "after",
            )
            await until(
                lambda: (
                    {("while down", b.key) for b in boxes}
                    <= {
                        (str(e.message()["Subject"]), e.mailbox) for r in runs for e in r.messages()
                    }
                ),
                "while down",
            )
            for run in runs:
                await run.stop()
    got = [e for r in runs for e in r.messages()]
    counts = Counter((e.mailbox, str(e.message()["Subject"])) for e in got)
    expected = {(b.key, s) for b in boxes for s in ("before", "while down", "after")}
    assert set(counts) == expected  # nothing lost
    firsts = Counter((e.mailbox, str(e.message()["Subject"])) for e in got if not e.redelivered)
    assert all(n == 1 for n in firsts.values()), firsts  # repeats only marked
    failures = [e for r in runs for e in r.events if isinstance(e, MailboxFailed)]
    assert all(not f.permanent for f in failures)


async def test_redis_server_restart_keeps_the_data() -> None:
    import redis.asyncio

    need_redis()
    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        await client.set("kept", "1")
        await client.aclose()
        pid = server.pid
        await asyncio.to_thread(server.restart)
        assert server.pid != pid and server.running and server.starts == 2
        client = redis.asyncio.Redis.from_url(server.url)
        assert await client.get("kept") == b"1"  # appendonly: written before the stop
        await client.aclose()
    assert not server.directory.exists()
