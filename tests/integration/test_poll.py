"""The Poller against real Dovecot: IMAP IDLE and polling, POP3 by UIDL, restarts,
a revoked grant among healthy mailboxes, connection limits and cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import socket
import stat
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from mailoauth.errors import MailConnectionError, PermanentTokenError
from mailoauth.imap.client import IdleEvent, ImapClient
from mailoauth.poll import (
    FilePollStateStore,
    Mailbox,
    MailboxFailed,
    MemoryPollStateStore,
    NewMessage,
    Poller,
    PollEvent,
    PollStateStore,
)
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.tokens.access_token import AccessToken, utcnow
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

WAIT = 30.0  # seconds any expected event may take (generous: shared, loaded CI machines)
#: IDLE rounds end this often, after which the folder is searched again: a safety net
#: for a notification the server did not send (Dovecot on a maildir written behind its
#: back can miss one for up to mailbox_idle_check_interval, 30 s).
IDLE_ROUND = 3.0


class Provider:
    """A custom provider that mints tokens from the fake OAuth server, counts its
    calls, and can be told that its grant is dead."""

    def __init__(self, oauth: FakeOAuthServer, username: str) -> None:
        self.oauth = oauth
        self.username = username
        self.calls = 0
        self.dead = False

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        await asyncio.sleep(0.005)
        if self.dead:
            raise PermanentTokenError("invalid_grant: revoked", error="invalid_grant")
        value = self.oauth.issue_access_token(self.username)
        return AccessToken(value, utcnow() + dt.timedelta(hours=1))


def new_user() -> str:
    return f"q{uuid.uuid4().hex[:10]}@example.test"


def mailbox(
    ms: MailServers, protocol: Literal["imap", "pop3"], user: str, provider: Provider
) -> Mailbox:
    port = ms.dovecot.imaps_port if protocol == "imap" else ms.dovecot.pop3s_port
    return Mailbox(
        protocol,
        "localhost",
        port,
        user,
        provider,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=ms.client_context(),
    )


def make_boxes(ms: MailServers, imap: int, pop3: int) -> tuple[list[Mailbox], dict[str, Provider]]:
    """``imap`` IMAP and ``pop3`` POP3 mailboxes of new users, each with its provider."""
    imap_: Literal["imap"] = "imap"
    pop3_: Literal["pop3"] = "pop3"
    protocols = [imap_] * imap + [pop3_] * pop3
    boxes, providers = [], {}
    for protocol in protocols:
        user = new_user()
        providers[user] = Provider(ms.oauth, user)
        boxes.append(mailbox(ms, protocol, user, providers[user]))
    return boxes, providers


def deliver(ms: MailServers, user: str, subject: str) -> None:
    ms.dovecot.deliver(user, f"From: a@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n")


async def wait_for_baselines(store: PollStateStore, boxes: list[Mailbox]) -> None:
    """With start="new" the starting point is saved at once: wait until every mailbox
    has one, so that mail delivered afterwards counts as new."""
    pending = list(boxes)
    async with asyncio.timeout(WAIT):
        while pending:
            pending = [box for box in pending if await store.load(box.key) is None]
            await asyncio.sleep(0.02 if pending else 0)


async def collect(
    poller: Poller, count: int, *, failures: list[MailboxFailed] | None = None
) -> list[NewMessage]:
    """The next ``count`` new messages (failures go to ``failures``, else fail)."""
    got: list[NewMessage] = []
    async with asyncio.timeout(WAIT):
        async for event in poller:
            if isinstance(event, MailboxFailed):
                if failures is None:
                    raise AssertionError(f"unexpected failure: {event}")
                failures.append(event)
                continue
            got.append(event)
            if len(got) == count:
                break
    return got


async def quiet(poller: Poller, seconds: float) -> list[PollEvent]:
    """Whatever arrives within ``seconds`` (nothing, when all was reported once)."""
    got: list[PollEvent] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            async for event in poller:
                got.append(event)
    return got


def subjects(events: list[NewMessage]) -> Counter[tuple[str, str]]:
    return Counter((e.mailbox, str(e.message()["Subject"])) for e in events)


async def test_many_mailboxes_idle_and_pop3_each_message_once(
    mail_servers: MailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    idling: set[str] = set()
    original_idle = ImapClient.idle

    def idle(self: ImapClient, *, timeout: float | None = None) -> AsyncIterator[IdleEvent]:
        idling.add(self.username)
        return original_idle(self, timeout=timeout)

    monkeypatch.setattr(ImapClient, "idle", idle)
    boxes, providers = make_boxes(mail_servers, imap=16, pop3=4)
    for box in boxes:
        deliver(mail_servers, box.username, "old")  # there before: start="new" skips it
    store = MemoryPollStateStore()
    async with Poller(
        boxes,
        state_store=store,
        max_per_host=len(boxes),
        interval=0.3,
        idle_timeout=IDLE_ROUND,
        rng=random.Random(1),
    ) as poller:
        await wait_for_baselines(store, boxes)
        for box in boxes:
            deliver(mail_servers, box.username, "one")
            deliver(mail_servers, box.username, "two")
        got = await collect(poller, 2 * len(boxes))
        assert await quiet(poller, 1.0) == []
    expected = Counter({(b.key, s): 1 for b in boxes for s in ("one", "two")})
    assert subjects(got) == expected
    imap_event = next(e for e in got if e.uid is not None)
    assert imap_event.uidvalidity and imap_event.uidl is None
    assert all(e.uidl for e in got if e.uid is None)
    # One token manager per credential for the poller's life: the POP3 mailboxes
    # reconnected every 0.3 s with the one token they got first.
    assert {p.calls for p in providers.values()} == {1}
    # Every IMAP mailbox waited in IDLE.
    assert idling == {b.username for b in boxes if b.protocol == "imap"}
    assert poller.failed == {}


async def test_restart_reports_nothing_twice_and_misses_nothing(
    mail_servers: MailServers, tmp_path: Path
) -> None:
    boxes, _ = make_boxes(mail_servers, imap=3, pop3=2)
    path = tmp_path / "poll-state.json"

    class Crash(Exception):
        pass

    store = FilePollStateStore(path)
    last: NewMessage | None = None
    with pytest.raises(Crash):
        async with Poller(
            boxes, state_store=store, interval=0.3, idle_timeout=IDLE_ROUND
        ) as poller:
            await wait_for_baselines(store, boxes)
            for box in boxes:
                deliver(mail_servers, box.username, "first")
            seen = 0
            async with asyncio.timeout(WAIT):
                async for event in poller:
                    assert isinstance(event, NewMessage)
                    seen += 1
                    if seen == len(boxes):
                        last = event
                        raise Crash  # handling the last one failed: it is not handled
    assert last is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    for box in boxes:  # arrives while no poller runs
        deliver(mail_servers, box.username, "while stopped")

    store = FilePollStateStore(path)  # a new process would read the file afresh
    async with Poller(boxes, state_store=store, interval=0.3, idle_timeout=IDLE_ROUND) as poller:
        got = await collect(poller, len(boxes) + 1)
        assert await quiet(poller, 1.0) == []
    expected = Counter({(b.key, "while stopped"): 1 for b in boxes})
    expected[(last.mailbox, "first")] += 1
    assert subjects(got) == expected

    async with Poller(
        boxes, state_store=FilePollStateStore(path), interval=0.3, idle_timeout=IDLE_ROUND
    ) as poller:
        assert await quiet(poller, 1.0) == []  # everything was handled


async def test_revoked_mailbox_is_set_aside_and_the_others_go_on(
    mail_servers: MailServers,
) -> None:
    healthy = [new_user() for _ in range(3)]
    dead_imap, dead_pop3 = new_user(), new_user()
    providers = {u: Provider(mail_servers.oauth, u) for u in [*healthy, dead_imap, dead_pop3]}
    providers[dead_imap].dead = True  # dead from the start
    boxes = [mailbox(mail_servers, "imap", u, providers[u]) for u in [*healthy, dead_imap]]
    pop3_box = mailbox(mail_servers, "pop3", dead_pop3, providers[dead_pop3])
    store = MemoryPollStateStore()
    failures: list[MailboxFailed] = []
    async with Poller(
        [*boxes, pop3_box], state_store=store, interval=0.3, idle_timeout=IDLE_ROUND
    ) as poller:
        await wait_for_baselines(store, [*boxes[:3], pop3_box])
        # The POP3 grant dies while it is watched: the server refuses the cached token,
        # the client asks for a fresh one, and the provider says the grant is gone.
        mail_servers.oauth.revoke_user(dead_pop3)
        providers[dead_pop3].dead = True
        async with asyncio.timeout(WAIT):
            async for event in poller:
                assert isinstance(event, MailboxFailed)
                failures.append(event)
                if len(failures) == 2:
                    break
        for user in healthy:
            deliver(mail_servers, user, "still here")
        got = await collect(poller, len(healthy))
        assert await quiet(poller, 1.0) == []
    assert {(f.mailbox, f.permanent) for f in failures} == {
        (boxes[3].key, True),
        (pop3_box.key, True),
    }
    assert all(isinstance(f.error, PermanentTokenError) for f in failures)
    assert set(poller.failed) == {boxes[3].key, pop3_box.key}
    assert subjects(got) == Counter({(b.key, "still here"): 1 for b in boxes[:3]})


async def test_pop3_message_over_the_limit_is_skipped_and_the_rest_arrive(
    mail_servers: MailServers, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the skip, retrieving the big message fails every poll (LimitExceededError,
    # retried for ever) and the message after it never arrives.
    user = new_user()
    box = dataclasses.replace(
        mailbox(mail_servers, "pop3", user, Provider(mail_servers.oauth, user)),
        max_message_size=4096,
    )
    store = MemoryPollStateStore()
    async with Poller([box], state_store=store, interval=0.3) as poller:
        await wait_for_baselines(store, [box])
        deliver(mail_servers, user, "small one")
        mail_servers.dovecot.deliver(
            user, "From: a@example.test\r\nSubject: big\r\n\r\n" + "x" * 10_000 + "\r\n"
        )
        deliver(mail_servers, user, "small two")
        got = await collect(poller, 2)  # a failure here fails the test
        assert await quiet(poller, 1.0) == []
    assert subjects(got) == Counter({(box.key, "small one"): 1, (box.key, "small two"): 1})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("over max_message_size=4096" in w for w in warnings) == 1  # once, not per poll
    saved = await store.load(box.key)
    assert saved is not None and len(saved.uidls) == 2  # type: ignore[union-attr]


async def test_transient_failures_back_off_with_jitter_and_retry(
    mail_servers: MailServers,
) -> None:
    user = new_user()
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    box = Mailbox(
        "imap",
        "127.0.0.1",
        closed_port,
        user,
        mail_servers.token(user),
        SecurityOptions.SSL_IMPLICIT,
    )
    async with Poller([box], backoff_base=0.05, backoff_max=0.2, rng=random.Random(7)) as poller:
        failures = []
        async with asyncio.timeout(WAIT):
            async for event in poller:
                assert isinstance(event, MailboxFailed)
                failures.append(event)
                if len(failures) == 4:
                    break
    assert [f.attempt for f in failures] == [1, 2, 3, 4]
    assert all(not f.permanent and isinstance(f.error, MailConnectionError) for f in failures)
    ceilings = [0.05, 0.1, 0.2, 0.2]
    assert all(
        f.retry_in is not None and 0 <= f.retry_in <= c
        for f, c in zip(failures, ceilings, strict=True)
    )
    assert poller.failed == {}


def count_connections(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count the clients open at once, by wrapping the clients' public methods: from
    the start of ``connect`` (a connection being opened counts against the limit too)
    to ``aclose``/``abort``."""
    seen: dict[str, Any] = {"open": set(), "max": 0, "clients": []}

    def wrap_open(cls: Any) -> None:
        original: Callable[[Any], Awaitable[None]] = cls.connect

        async def connect(self: Any) -> None:
            seen["open"].add(id(self))
            seen["clients"].append(self)
            seen["max"] = max(seen["max"], len(seen["open"]))
            await original(self)

        monkeypatch.setattr(cls, "connect", connect)

    def wrap_close(cls: Any, name: str) -> None:
        original: Callable[[Any], Awaitable[None]] = getattr(cls, name)

        async def close(self: Any) -> None:
            seen["open"].discard(id(self))
            await original(self)

        monkeypatch.setattr(cls, name, close)

    for cls in (ImapClient, Pop3Client):
        wrap_open(cls)
        wrap_close(cls, "aclose")
    wrap_close(Pop3Client, "abort")
    return seen


async def test_per_host_limit_is_respected(
    mail_servers: MailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = count_connections(monkeypatch)
    boxes, _ = make_boxes(mail_servers, imap=10, pop3=0)
    store = MemoryPollStateStore()
    async with Poller(
        boxes, state_store=store, max_per_host=3, use_idle=False, interval=0.2
    ) as poller:
        await wait_for_baselines(store, boxes)
        for box in boxes:
            deliver(mail_servers, box.username, "limited")
        got = await collect(poller, len(boxes))
    assert subjects(got) == Counter({(b.key, "limited"): 1 for b in boxes})
    # Never more than the cap; and the cap is reached: the first three watchers take
    # their slots and start connecting before any of them can finish a session.
    assert seen["max"] == 3
    assert seen["open"] == set()


async def test_cancellation_closes_every_connection(
    mail_servers: MailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = count_connections(monkeypatch)
    boxes, _ = make_boxes(mail_servers, imap=6, pop3=2)
    store = MemoryPollStateStore()
    baselines = asyncio.Event()
    received: list[PollEvent] = []

    async def consume() -> None:
        async with Poller(
            boxes, state_store=store, interval=0.2, idle_timeout=IDLE_ROUND
        ) as poller:
            await wait_for_baselines(store, boxes)
            baselines.set()
            async for event in poller:
                received.append(event)

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT):
        await baselines.wait()
    await asyncio.sleep(0.3)  # IMAP watchers are in IDLE, POP3 ones between polls
    task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen["open"] == set()
    assert not any(c.connected for c in seen["clients"] if isinstance(c, ImapClient))
    assert received == []
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    assert leftover == set()


async def test_polling_without_idle_keeps_its_connection_when_uncontended(
    mail_servers: MailServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = count_connections(monkeypatch)
    boxes, _ = make_boxes(mail_servers, imap=1, pop3=0)
    store = MemoryPollStateStore()
    async with Poller(boxes, state_store=store, use_idle=False, interval=0.2) as poller:
        await wait_for_baselines(store, boxes)
        deliver(mail_servers, boxes[0].username, "poll one")
        first = await collect(poller, 1)
        deliver(mail_servers, boxes[0].username, "poll two")
        second = await collect(poller, 1)
    assert [e.message()["Subject"] for e in first + second] == ["poll one", "poll two"]
    assert second[0].uid is not None and first[0].uid is not None
    assert second[0].uid > first[0].uid
    assert len(seen["clients"]) == 1  # one session, searched every 0.2 s


async def test_add_and_remove_mailboxes_while_running(mail_servers: MailServers) -> None:
    (first, second), _ = make_boxes(mail_servers, imap=2, pop3=0)
    store = MemoryPollStateStore()
    async with Poller([first], state_store=store, idle_timeout=IDLE_ROUND) as poller:
        poller.add(second)
        await wait_for_baselines(store, [first, second])
        deliver(mail_servers, first.username, "to first")
        deliver(mail_servers, second.username, "to second")
        got = await collect(poller, 2)
        assert subjects(got) == Counter({(first.key, "to first"): 1, (second.key, "to second"): 1})
        poller.remove(first.key)
        assert list(poller.mailboxes) == [second.key]
        deliver(mail_servers, first.username, "not watched")
        deliver(mail_servers, second.username, "still watched")
        got = await collect(poller, 1)
        assert subjects(got) == Counter({(second.key, "still watched"): 1})
        assert await quiet(poller, 0.5) == []
