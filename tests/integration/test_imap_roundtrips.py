"""ImapClient's round trips: what it sends, and what it does not wait for.

Scripted servers on loopback record each command line; real Dovecot checks that the
shortcuts give the same answers as the long way. Before: a CAPABILITY command after
every greeting (Dovecot's carries them), and no way to send SELECT and UID SEARCH in
one round trip.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from mailoauth.errors import CommandError, MailTimeoutError, UsageError
from mailoauth.imap.client import ImapClient
from mailoauth.security import SecurityOptions
from mailoauth.testing.faultproxy import Reply, ScriptedServer
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

CAPS = b"IMAP4rev1 AUTH=XOAUTH2 SASL-IR IDLE"
SELECTED = b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n"


def client(port: int, **options: object) -> ImapClient:
    return ImapClient(
        "127.0.0.1",
        port,
        "u@example.test",
        "at-roundtrips",
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        **{"timeout": 10, **options},  # type: ignore[arg-type]
    )


def verbs(server: ScriptedServer) -> list[str]:
    """The commands the server received, without tags and arguments (UID kept)."""
    names = []
    for line in bytes(server.received).split(b"\r\n"):
        words = line.split(b" ")
        if len(words) < 2:
            continue
        name = words[1].decode()
        if name == "UID" and len(words) > 2:
            name += " " + words[2].decode()
        names.append(name)
    return names


def server_answering(
    *,
    auth_ok: bytes = b"OK [CAPABILITY " + CAPS + b" MOVE] logged in",
    select: Callable[[bytes], Reply] | None = None,
    search: Callable[[bytes], Reply] | None = None,
) -> Callable[[bytes], Reply]:
    """A logged-in IMAP server; SELECT and UID SEARCH as given (else plain OKs)."""

    def answer(line: bytes) -> Reply:
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        words = rest.split(b" ")
        name = words[0].upper()
        if name == b"UID":
            name = b"UID " + words[1].upper()
        if name == b"CAPABILITY":
            return b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n"
        if name == b"AUTHENTICATE":
            return tag + b" " + auth_ok + b"\r\n"
        if name in (b"SELECT", b"EXAMINE"):
            if select is not None:
                return select(tag)
            return SELECTED + tag + b" OK [READ-WRITE] done\r\n"
        if name == b"UID SEARCH":
            if search is not None:
                return search(tag)
            return b"* SEARCH 4 9\r\n" + tag + b" OK done\r\n"
        if name == b"LOGOUT":
            return b"* BYE bye\r\n" + tag + b" OK done\r\n"
        return tag + b" OK done\r\n"

    return answer


async def test_capabilities_in_the_greeting_spare_the_capability_command() -> None:
    greeting = b"* OK [CAPABILITY " + CAPS + b"] ready\r\n"
    async with ScriptedServer(greeting, server_answering()) as server:
        imap = client(server.port)
        async with imap:
            assert "MOVE" in await imap.capabilities()  # the OK's, not the greeting's
        assert verbs(server) == ["AUTHENTICATE", "LOGOUT"]
    # SASL-IR: the initial response rides on the AUTHENTICATE line itself.
    first = bytes(server.received).split(b"\r\n")[0].split(b" ")
    assert first[1:3] == [b"AUTHENTICATE", b"XOAUTH2"] and len(first) == 4


async def test_a_greeting_without_capabilities_makes_the_client_ask() -> None:
    async with ScriptedServer(b"* OK ready\r\n", server_answering(auth_ok=b"OK hi")) as server:
        async with client(server.port) as imap:
            assert "IDLE" in await imap.capabilities()
        # Once after the greeting, once after AUTHENTICATE (whose OK had none).
        assert verbs(server) == ["CAPABILITY", "AUTHENTICATE", "CAPABILITY", "LOGOUT"]


async def test_greeting_capabilities_without_imap4rev1_are_not_trusted() -> None:
    greeting = b"* OK [CAPABILITY AUTH=XOAUTH2 SASL-IR] ready\r\n"
    async with ScriptedServer(greeting, server_answering()) as server:
        async with client(server.port):
            pass
        assert verbs(server) == ["CAPABILITY", "AUTHENTICATE", "LOGOUT"]


async def test_select_and_search_sends_both_before_any_answer() -> None:
    """The server answers SELECT only once the UID SEARCH has come too: a client that
    waited for the SELECT's completion would time out here."""

    def select(tag: bytes) -> Reply:
        held.append(tag)
        return b""  # held back until the search arrives

    def search(tag: bytes) -> Reply:
        answer = b"".join(SELECTED + t + b" OK [READ-WRITE] done\r\n" for t in held)
        held.clear()
        return answer + b"* SEARCH 4 9\r\n" + tag + b" OK done\r\n"

    held: list[bytes] = []
    greeting = b"* OK [CAPABILITY " + CAPS + b"] ready\r\n"
    async with ScriptedServer(greeting, server_answering(select=select, search=search)) as server:
        async with client(server.port, timeout=5) as imap:
            info, uids = await imap.select_and_search("INBOX", "UNSEEN")
            assert (info.exists, info.uidvalidity, uids) == (3, 7, [4, 9])
            # The session goes on in the selected mailbox, as after select().
            assert await imap.uid_search("ALL") == [4, 9]
        assert verbs(server) == ["AUTHENTICATE", "SELECT", "UID SEARCH", "UID SEARCH", "LOGOUT"]
        assert b'SELECT "INBOX"\r\n' in server.received
        assert b" UID SEARCH UNSEEN\r\n" in server.received


async def test_a_refused_select_raises_and_the_session_goes_on() -> None:
    def select(tag: bytes) -> Reply:
        return tag + b" NO [NONEXISTENT] no such mailbox\r\n"

    def search(tag: bytes) -> Reply:
        return tag + b" BAD no mailbox selected\r\n"

    greeting = b"* OK [CAPABILITY " + CAPS + b"] ready\r\n"
    async with ScriptedServer(greeting, server_answering(select=select, search=search)) as server:
        async with client(server.port) as imap:
            with pytest.raises(CommandError) as caught:
                await imap.select_and_search("Nope", "UNSEEN", readonly=True)
            assert caught.value.command == "EXAMINE"
            assert caught.value.response_code == "NONEXISTENT"
            with pytest.raises(UsageError):  # nothing is selected
                await imap.uid_search("ALL")
            await imap.noop()
        assert server.connections == 1


async def test_an_unanswered_command_times_out_and_the_next_one_reconnects() -> None:
    """The reply deadline is a timer on the loop that gives the connection up."""
    answered = server_answering()
    first: list[bool] = []

    def answer(line: bytes) -> Reply:
        if b" NOOP" in line and not first:
            first.append(True)
            return b""  # never answered
        return answered(line)

    greeting = b"* OK [CAPABILITY " + CAPS + b"] ready\r\n"
    async with ScriptedServer(greeting, answer) as server:
        async with client(server.port, timeout=0.5) as imap:
            with pytest.raises(MailTimeoutError, match=r"timed out NOOP on 127\.0\.0\.1"):
                await imap.noop()
            assert not imap.connected
            await imap.noop()  # on a new connection
            assert imap.connected
        assert server.connections == 2


async def test_select_and_search_on_dovecot_matches_select_then_search(
    mail_servers: MailServers,
) -> None:
    user = f"rtt-{uuid.uuid4().hex[:8]}@example.test"
    for k in range(3):
        mail_servers.dovecot.deliver(user, b"Subject: m%d\r\n\r\nhello\r\n" % k, seen=k == 0)
    token = mail_servers.token(user)
    imap = ImapClient(
        "localhost",
        mail_servers.dovecot.imaps_port,
        user,
        token,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=mail_servers.client_context(),
    )
    async with imap:
        # Dovecot's greeting and its OK to AUTHENTICATE carry the capabilities.
        capabilities = await imap.capabilities()
        assert "IMAP4rev1" in capabilities and "IDLE" in capabilities
        info, unseen = await imap.select_and_search("INBOX", "UNSEEN")
        again = await imap.select("INBOX")
        assert await imap.uid_search("UNSEEN") == unseen
        assert len(unseen) == 2 and info.exists == again.exists == 3
        assert info.uidvalidity == again.uidvalidity
        await asyncio.wait_for(imap.noop(), 10)
