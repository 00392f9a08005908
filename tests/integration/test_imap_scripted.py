"""ImapClient against small scripted servers on loopback: huge responses sent in one
write, a response over the size cap, and lines injected after the STARTTLS go-ahead.

Real Dovecot with a big mailbox is in test_imap_big.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mailoauth.errors import ConfigurationError, LimitExceededError
from mailoauth.imap._aioimaplib import MAX_RESPONSE
from mailoauth.imap.client import MAX_COMMAND_LINE, ImapClient
from mailoauth.security import SecurityOptions
from mailoauth.testing.certs import TestCA
from mailoauth.testing.faultproxy import Reply, ScriptedServer

pytestmark = pytest.mark.asyncio

#: Lines in one write of the server: a hundred times Python's recursion limit.
MANY = 100_000
CAPS = b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR IDLE\r\n"


def client(port: int, **options: object) -> ImapClient:
    return ImapClient(
        "127.0.0.1",
        port,
        "u@example.test",
        "at-scripted",
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        timeout=30,
        **options,  # type: ignore[arg-type]
    )


def imap_answer(
    fetch: Callable[[bytes, bytes], Reply], *, commands: list[bytes] | None = None
) -> Callable[[bytes], Reply]:
    """A minimal logged-in IMAP server; FETCH (and LIST, SEARCH) as scripted."""

    def answer(line: bytes) -> Reply:
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        verb = rest.split(b" ", 2)
        name = verb[0].upper()
        if name == b"UID":
            name = b"UID " + verb[1].upper()
        if commands is not None:
            commands.append(line)
        if name == b"CAPABILITY":
            return CAPS + tag + b" OK done\r\n"
        if name in (b"UID FETCH", b"LIST", b"UID SEARCH"):
            return fetch(tag, rest)
        if name in (b"AUTHENTICATE", b"NOOP", b"LOGOUT"):
            return tag + b" OK done\r\n"
        if name in (b"SELECT", b"EXAMINE"):
            return b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n" + tag + b" OK [READ-WRITE] done\r\n"
        return tag + b" BAD unknown\r\n"

    return answer


async def test_100k_untagged_lines_in_one_write() -> None:
    """Before: RecursionError inside data_received, seen as ConnectionLostError."""

    def reply(tag: bytes, rest: bytes) -> bytes:
        if rest.startswith(b"LIST"):
            body = b"".join(b'* LIST () "/" "f%d"\r\n' % i for i in range(MANY))
        elif rest.startswith(b"UID SEARCH"):
            body = b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, MANY + 1)) + b"\r\n"
        else:
            line = b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n"
            body = b"".join(line % (i, i) for i in range(1, MANY + 1))
        return body + tag + b" OK done\r\n"  # one write: the whole response

    async with (
        ScriptedServer(b"* OK ready\r\n", imap_answer(reply)) as server,
        client(server.port) as imap,
    ):
        folders = await imap.list_folders()
        assert [f.name for f in folders] == [f"f{i}" for i in range(MANY)]
        await imap.select()
        uids = await imap.uid_search("ALL")
        assert uids == list(range(1, MANY + 1))
        flags = await imap.fetch_flags(range(1, MANY + 1))
        assert len(flags) == MANY and flags[MANY] == frozenset({"\\Seen"})
        assert imap.reconnects == 0


async def test_long_uid_sets_are_sent_as_ranges_and_split() -> None:
    commands: list[bytes] = []

    def reply(tag: bytes, rest: bytes) -> bytes:
        uid_set = rest.split(b" ")[2].decode()
        uids = [
            u
            for piece in uid_set.split(",")
            for u in range(int(piece.split(":")[0]), int(piece.split(":")[-1]) + 1)
        ]
        body = b"".join(b"* %d FETCH (UID %d RFC822.SIZE 10)\r\n" % (u, u) for u in uids)
        return body + tag + b" OK done\r\n"

    async with (
        ScriptedServer(b"* OK ready\r\n", imap_answer(reply, commands=commands)) as server,
        client(server.port) as imap,
    ):
        await imap.select()
        commands.clear()
        assert len(await imap.fetch_sizes(range(1, 20_001))) == 20_000
        assert commands == [commands[0]] and b" 1:20000 " in commands[0]
        commands.clear()
        scattered = range(1, 40_001, 2)
        sizes = await imap.fetch_sizes(scattered)
        assert sorted(sizes) == list(scattered)
        assert len(commands) > 1
        assert all(len(c) <= MAX_COMMAND_LINE for c in commands)


def two_big_literals(size: int) -> Callable[[bytes, bytes], Reply]:
    async def stream(tag: bytes) -> AsyncIterator[bytes]:
        chunk = b"x" * (1024 * 1024)
        for uid in (1, 2):
            yield b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (uid, uid, size)
            for _ in range(size // len(chunk)):
                yield chunk
            yield b")\r\n"
        yield tag + b" OK done\r\n"

    return lambda tag, rest: stream(tag)


async def test_two_150_mib_literals_in_one_fetch_go_over_max_response() -> None:
    """Before: accepted, 300 MiB held. Now the second literal is refused when announced."""
    size = 150 * 1024 * 1024
    async with ScriptedServer(b"* OK ready\r\n", imap_answer(two_big_literals(size))) as server:
        imap = client(server.port)
        async with imap:
            await imap.select()
            with pytest.raises(LimitExceededError, match="max_response_size") as info:
                await imap.fetch_raw([1, 2])
            assert str(MAX_RESPONSE) in str(info.value)
            assert not imap.connected


async def test_max_response_size_is_configurable() -> None:
    size = 3 * 1024 * 1024
    async with ScriptedServer(b"* OK ready\r\n", imap_answer(two_big_literals(size))) as server:
        async with client(server.port, max_response_size=5 * 1024 * 1024) as imap:
            await imap.select()
            with pytest.raises(LimitExceededError, match="5242880"):
                await imap.fetch_raw([1, 2])
            assert not imap.connected
            await imap.noop()  # the next command reconnects (and reselects)
            assert imap.connected and imap.reconnects == 1
        async with client(server.port, max_response_size=7 * 1024 * 1024) as imap:
            await imap.select()
            assert [len(v) for v in (await imap.fetch_raw([1, 2])).values()] == [size, size]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
async def test_max_response_size_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_response_size"):
        client(1, max_response_size=bad)


# -- STARTTLS ------------------------------------------------------------------------


class StarttlsServer:
    """IMAP on a plain port that sends ``injected`` right after its STARTTLS go-ahead,
    in the same write, then upgrades; :attr:`plain_after_ok` records that it did."""

    def __init__(self, ca: TestCA, injected: bytes) -> None:
        self.ca = ca
        self.injected = injected
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> StarttlsServer:
        self._server = await asyncio.start_server(self._track, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # A handler left pending when the loop closes is garbage-collected later, in
        # some other test, as an unraisable "coroutine ignored GeneratorExit".
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caps = b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=XOAUTH2 SASL-IR IDLE\r\n"
        writer.write(b"* OK ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                verb = rest.split(b" ")[0].upper()
                if verb == b"STARTTLS":
                    writer.write(tag + b" OK Begin TLS\r\n" + self.injected)
                    await writer.drain()
                    await writer.start_tls(self.ca.server_context())
                    caps = caps.replace(b" STARTTLS", b"")
                elif verb == b"CAPABILITY":
                    writer.write(caps + tag + b" OK done\r\n")
                elif verb == b"SELECT":
                    writer.write(b"* 3 EXISTS\r\n" + tag + b" OK [READ-WRITE] done\r\n")
                else:
                    writer.write(tag + b" OK done\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def test_lines_injected_after_the_starttls_go_ahead_are_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: ``* 7 EXISTS`` and ``* BYE`` sent with ``OK Begin TLS`` were parsed and
    survived into the TLS session (an IDLE would report 7 messages)."""
    ca = TestCA(tmp_path / "ca")
    injected = b"* 7 EXISTS\r\n* BYE injected\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"
    caplog.set_level(logging.WARNING, logger="mailoauth.imap")
    async with StarttlsServer(ca, injected) as server:
        imap = ImapClient(
            "localhost",
            server.port,
            "u@example.test",
            "at-starttls",
            SecurityOptions.SSL_EXPLICIT,
            ssl_context=ca.client_context(),
            timeout=10,
        )
        async with imap:
            protocol = imap._protocol
            assert protocol is not None
            assert protocol.unsolicited == [] and protocol.bye is None
            assert "AUTH=PLAIN" not in await imap.capabilities()
            assert (await imap.select()).exists == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"sent {len(injected)} bytes between STARTTLS" in w for w in warnings), warnings
