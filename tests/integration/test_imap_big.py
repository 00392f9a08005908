"""A big mailbox against real Dovecot: 20,000 messages, 3,000 folders, IDLE bursts.

Before the fix every one of these failed: aioimaplib's response handler recursed once
per line (RecursionError at ~1,000 lines in one read, seen as ConnectionLostError, the
automatic reconnect failing the same way), and fetch_flags(uids) sent 20,000 UIDs one
by one on a single line (Dovecot: ``BAD ... Too long argument``).

The maildirs are written directly (Dovecot indexes them on the first SELECT): 20,000
deliveries through LMTP would take minutes.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailoauth.imap import parsing
from mailoauth.imap._aioimaplib import ImapProtocol
from mailoauth.imap.client import ImapClient
from mailoauth.security import SecurityOptions
from mailoauth.testing.dovecot import DovecotServer
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

MESSAGES = 20_000
FOLDERS = 3_000
#: Long folder names, so that a read holds over a thousand LIST lines.
FOLDER_NAME = "folder {:04d} " + "x" * 200
ENVELOPES = 5_000
BURST = 3_000
TIMEOUT = 120.0


@dataclass(frozen=True)
class Mailbox:
    user: str
    sizes: Counter[int]  # RFC822.SIZE -> how many messages have it
    seen: int


def message(i: int) -> bytes:
    # Every 7th subject is raw UTF-8 (Dovecot sends it as a literal in ENVELOPE), and
    # some hold "* " (which aioimaplib used to strip anywhere in a line).
    subject = f"café * n°{i}" if i % 7 == 0 else f"message {i}"
    return (
        f"From: sender{i % 13}@example.test\nTo: big@example.test\nSubject: {subject}\n"
        f"Message-ID: <{i}@example.test>\n\nbody {i}\n" + "x" * (i % 50) + "\n"
    ).encode()


def _own(path: Path, dovecot: DovecotServer) -> None:
    os.chown(path, dovecot.mail_user.uid, dovecot.mail_user.gid)


def make_maildir(dovecot: DovecotServer, user: str) -> Path:
    maildir = dovecot.maildir(user)
    for path in (maildir.parent, maildir, *(maildir / d for d in ("cur", "new", "tmp"))):
        path.mkdir(mode=0o700, exist_ok=True)
        _own(path, dovecot)
    return maildir


def fill(dovecot: DovecotServer, user: str, count: int, *, seen_every: int = 3) -> Mailbox:
    """``count`` messages in ``cur/``, every ``seen_every``-th one \\Seen."""
    maildir = make_maildir(dovecot, user)
    sizes: Counter[int] = Counter()
    seen = 0
    for i in range(count):
        data = message(i)
        virtual = len(data) + data.count(b"\n")  # RFC822.SIZE counts CRLF
        sizes[virtual] += 1
        flags = "S" if i % seen_every == 0 else ""
        seen += flags == "S"
        name = f"{1_700_000_000 + i}.M{i}P1.big,S={len(data)},W={virtual}:2,{flags}"
        path = maildir / "cur" / name
        path.write_bytes(data)
        _own(path, dovecot)
    return Mailbox(user, sizes, seen)


@pytest.fixture(scope="module")
def big_mailbox(dovecot: DovecotServer) -> Mailbox:
    return fill(dovecot, "big@example.test", MESSAGES)


@pytest.fixture(scope="module")
def many_folders(dovecot: DovecotServer) -> Iterator[str]:
    user = "folders@example.test"
    maildir = make_maildir(dovecot, user)
    for i in range(FOLDERS):
        folder = maildir / ("." + FOLDER_NAME.format(i))  # Maildir++: a directory each
        for path in (folder, *(folder / d for d in ("cur", "new", "tmp"))):
            path.mkdir(mode=0o700, exist_ok=True)
            _own(path, dovecot)
    yield user


def imaps(servers: MailServers, user: str, **options: Any) -> ImapClient:
    return ImapClient(
        "localhost",
        servers.dovecot.imaps_port,
        user,
        servers.token(user),
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=servers.client_context(),
        timeout=TIMEOUT,
        **options,
    )


async def raw(imap: ImapClient, message_set: str, items: str) -> list[parsing.FetchRecord]:
    """A sequence-number FETCH (no public method sends one) through the client's guard."""

    def op(p: ImapProtocol) -> Any:
        return p.fetch(message_set, items)

    response = await imap._call(op, "fetching from")
    return parsing.parse_fetch(imap._check(response, "FETCH"))


async def test_fetch_flags_1_star_and_uid_search_all(
    mail_servers: MailServers, big_mailbox: Mailbox
) -> None:
    async with imaps(mail_servers, big_mailbox.user) as imap:
        assert (await imap.examine()).exists == MESSAGES
        records = await raw(imap, "1:*", "(FLAGS)")
        assert [r.seq for r in records] == list(range(1, MESSAGES + 1))
        assert sum("\\Seen" in (r.flags or ()) for r in records) == big_mailbox.seen
        assert await imap.uid_search("ALL") == list(range(1, MESSAGES + 1))
        assert len(await imap.uid_search("SEEN")) == big_mailbox.seen


async def test_fetch_flags_and_sizes_over_every_uid(
    mail_servers: MailServers, big_mailbox: Mailbox
) -> None:
    async with imaps(mail_servers, big_mailbox.user) as imap:
        await imap.examine()
        uids = await imap.uid_search("ALL")
        flags = await imap.fetch_flags(uids)
        assert sorted(flags) == uids
        assert sum("\\Seen" in f for f in flags.values()) == big_mailbox.seen
        sizes = await imap.fetch_sizes(uids)
        assert Counter(sizes.values()) == big_mailbox.sizes
        # Every other UID: no range helps, so the set is split over several commands.
        scattered = uids[::2]
        assert sorted(await imap.fetch_sizes(scattered)) == scattered
        assert sorted(await imap.fetch_flags(reversed(scattered))) == scattered


async def test_fetch_5000_envelopes_and_headers(
    mail_servers: MailServers, big_mailbox: Mailbox
) -> None:
    async with imaps(mail_servers, big_mailbox.user) as imap:
        await imap.examine()
        records = await raw(imap, f"1:{ENVELOPES}", "(UID ENVELOPE)")
        assert [r.uid for r in records] == list(range(1, ENVELOPES + 1))
        headers = await imap.fetch_headers(range(1, ENVELOPES + 1))
        assert len(headers) == ENVELOPES
        subjects = {str(h["Subject"]) for h in headers.values()}
        assert "café * n°7" in subjects and "message 1" in subjects


async def test_list_3000_folders(mail_servers: MailServers, many_folders: str) -> None:
    async with imaps(mail_servers, many_folders) as imap:
        names = {f.name for f in await imap.list_folders()}
        assert names == {"INBOX"} | {FOLDER_NAME.format(i) for i in range(FOLDERS)}


async def test_automatic_reconnect_then_a_big_fetch(
    mail_servers: MailServers, big_mailbox: Mailbox
) -> None:
    async with imaps(mail_servers, big_mailbox.user) as imap:
        await imap.examine()
        assert imap._transport is not None
        imap._transport.close()  # as if the server reset the connection
        flags = await imap.fetch_flags(range(1, MESSAGES + 1))
        assert len(flags) == MESSAGES and imap.reconnects == 1


async def test_idle_burst_of_flag_changes(
    mail_servers: MailServers, dovecot: DovecotServer
) -> None:
    """Another session flags 3,000 messages: Dovecot pushes 3,000 FETCH lines at once."""
    user = "burst@example.test"
    fill(dovecot, user, BURST)
    async with imaps(mail_servers, user) as idler, imaps(mail_servers, user) as writer:
        await idler.select()
        await writer.select()
        seen: set[int] = set()

        async def flag_all() -> None:
            await asyncio.sleep(0.5)  # let IDLE start
            await writer.add_flags(range(1, BURST + 1), ["\\Flagged"])

        task = asyncio.ensure_future(flag_all())
        try:
            async for event in idler.idle(timeout=60):
                if event.kind == "FETCH" and b"\\Flagged" in event.raw:
                    assert event.number is not None
                    seen.add(event.number)
                if len(seen) == BURST:
                    break
        finally:
            await task
        assert len(seen) == BURST
        # The session is still usable after the burst.
        assert len(await idler.uid_search("FLAGGED")) == BURST
