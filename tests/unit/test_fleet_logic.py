"""The fleet's pure parts: fair shares, what a state write clears, key names, status
arithmetic, argument checks, and the Poller's hook for a mailbox whose lease moved."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from mailoauth.errors import ConfigurationError
from mailoauth.poll import ImapState, MemoryPollStateStore, NewMessage, Poller, Pop3State
from mailoauth.poll._common import Progress
from mailoauth.poll.fleet import FleetStatus, FleetWorker, WorkerStatus
from mailoauth.poll.fleet._redis import Keys, owner_token
from mailoauth.poll.fleet.leases import fair_share
from mailoauth.poll.fleet.store import _covers, entry_of
from mailoauth.poll.spec import Mailbox


@pytest.mark.parametrize(
    ("total", "count"), list(itertools.product([0, 1, 7, 300, 1000], [1, 2, 3, 7]))
)
def test_fair_shares_add_up_and_are_within_one(total: int, count: int) -> None:
    workers = [f"w{i}" for i in range(count)]
    shares = [fair_share(total, workers, w) for w in workers]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1
    # The remainder goes to the first ids in sorted order, whatever the list order.
    assert shares == [fair_share(total, list(reversed(workers)), w) for w in workers]
    assert shares == sorted(shares, reverse=True)


def test_a_worker_missing_from_the_list_counts_itself() -> None:
    assert fair_share(10, ["a"], "b") == 5
    assert fair_share(10, [], "a") == 10


def test_a_state_write_clears_the_events_it_covers() -> None:
    imap = ImapState(7, 10)
    assert _covers(imap, {"uidvalidity": 7, "uid": 10})
    assert _covers(imap, {"uidvalidity": 7, "uid": 3})
    assert not _covers(imap, {"uidvalidity": 7, "uid": 11})
    # Another UIDVALIDITY: the folder was rebuilt; that event never comes back.
    assert _covers(imap, {"uidvalidity": 6, "uid": 99})
    assert not _covers(imap, {"uidl": "a"})
    pop3 = Pop3State(frozenset({"a", "b"}))
    assert _covers(pop3, {"uidl": "a"})
    assert not _covers(pop3, {"uidl": "c"})
    assert not _covers(pop3, {"uidvalidity": 7, "uid": 1})


def test_an_in_flight_entry_holds_positions_not_content() -> None:
    event = NewMessage("k", b"Subject: secret\r\n\r\nbody", uid=4, uidvalidity=9)
    entry = entry_of(event)
    assert set(entry) == {"at", "uid", "uidvalidity"} and entry["uid"] == 4
    assert set(entry_of(NewMessage("k", b"x", uidl="u1"))) == {"at", "uidl"}


def test_key_names() -> None:
    keys = Keys("mo:fleet")
    assert keys.lease("imap://a@h:993/INBOX") == "mo:fleet:lease:imap://a@h:993/INBOX"
    assert {keys.fence("k"), keys.state("k"), keys.inflight("k")} == {
        "mo:fleet:fence:k",
        "mo:fleet:state:k",
        "mo:fleet:inflight:k",
    }
    assert owner_token("w-1", 12) == "w-1|12"
    with pytest.raises(ConfigurationError):
        Keys("")


def test_status_spread_and_unleased() -> None:
    status = FleetStatus(
        ("a", "b", "c", "d"),
        {
            "w1": WorkerStatus("w1", 1.0, ("a", "b")),
            "w2": WorkerStatus("w2", 1.0, ("c",)),
        },
        {"a": "w1", "b": "w1", "c": "w2"},
    )
    assert status.spread() == 1
    assert status.unleased == ("d",)
    assert FleetStatus(()).spread() == 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lease": 0}, "lease"),
        ({"lease": float("nan")}, "lease"),
        ({"lease": True}, "lease"),
        ({"worker_id": "a|b"}, "worker id"),
        ({"state_store": MemoryPollStateStore()}, "state store"),
        ({"interval": -1}, "interval"),
    ],
)
def test_worker_arguments_are_checked(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FleetWorker("redis://127.0.0.1:1/0", lambda spec: None, **options)  # type: ignore[arg-type,return-value]


def test_worker_id_defaults_to_host_pid_and_a_random_part() -> None:
    one = FleetWorker("redis://127.0.0.1:1/0", lambda spec: None)  # type: ignore[arg-type,return-value]
    two = FleetWorker("redis://127.0.0.1:1/0", lambda spec: None)  # type: ignore[arg-type,return-value]
    assert one.worker_id != two.worker_id and "|" not in one.worker_id
    assert one.owned == frozenset()


@pytest.mark.asyncio
async def test_progress_forget_reads_the_store_again() -> None:
    store = MemoryPollStateStore()
    progress = Progress(store)
    await progress.update("k", lambda _old: ImapState(1, 5))
    await store.save("k", ImapState(1, 9))  # another worker moved it on meanwhile
    assert await progress.load("k") == ImapState(1, 5)
    progress.forget("k")
    assert await progress.load("k") == ImapState(1, 9)


@pytest.mark.asyncio
async def test_poller_forget_drops_the_events_still_in_the_stream() -> None:
    box = Mailbox("imap", "localhost", 993, "u@example.test", "token")
    async with Poller(auto_ack=False) as poller:
        assert poller._send is not None
        old = NewMessage(box.key, b"old", uid=1, uidvalidity=1)
        await poller._send.send((old, lambda s: ImapState(1, 1), 0))
        poller._forget(box.key)
        new = NewMessage(box.key, b"new", uid=1, uidvalidity=1)
        await poller._send.send((new, lambda s: ImapState(1, 1), 1))
        async with asyncio.timeout(5):
            assert await poller.__anext__() is new
        assert [e for e, _ in poller._pending[box.key]] == [new]
