"""Pop3Client.retrieve and top, one command per round trip (issue 13), against a
scripted server: replies split anywhere across reads, a refusal in the middle, a
server that breaks the protocol. The path reads parsed events straight from the
protocol, so these check that nothing is lost or misread between reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from mailoauth.errors import CommandError, ConnectionLostError, ProtocolError
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.testing.faultproxy import Reply, ScriptedServer, lines

pytestmark = pytest.mark.asyncio

GREETING = b"+OK ready\r\n"
BODY = b"Subject: one\r\n\r\n..stuffed line\r\nplain\r\n"
MESSAGE = b"Subject: one\r\n\r\n.stuffed line\r\nplain\r\n"  # dot-unstuffed


def client(port: int) -> Pop3Client:
    return Pop3Client(
        "127.0.0.1",
        port,
        "user@example.test",
        "t0k3n",
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        timeout=10,
    )


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)  # separate writes: the client sees several reads


def server(retr: Callable[[int], Reply]) -> Callable[[bytes], Reply]:
    def answer(line: bytes) -> Reply:
        words = line.split()
        verb = words[0].upper() if words else b""
        if verb == b"CAPA":
            return lines(b"+OK", b"SASL XOAUTH2", b"UIDL", b".")
        if verb in (b"RETR", b"TOP"):
            return retr(int(words[1]))
        return b"+OK\r\n"

    return answer


@pytest.mark.parametrize("size", [1, 3, 17, 4096])
async def test_replies_split_anywhere_give_the_same_bytes(size: int) -> None:
    reply = b"+OK 40 octets\r\n" + BODY + b".\r\n"
    async with (
        ScriptedServer(GREETING, server(lambda n: pieces(reply, size))) as srv,
        client(srv.port) as pop,
    ):
        for number in (1, 2, 3):
            assert await pop.retrieve(number) == MESSAGE
        assert await pop.top(1, 0) == MESSAGE


async def test_a_refusal_raises_and_the_next_retrieve_works() -> None:
    def retr(number: int) -> Reply:
        if number == 2:
            return b"-ERR [SYS/PERM] no such message\r\n"
        return b"+OK\r\n" + BODY + b".\r\n"

    async with ScriptedServer(GREETING, server(retr)) as srv:
        async with client(srv.port) as pop:
            assert await pop.retrieve(1)
            with pytest.raises(CommandError) as caught:
                await pop.retrieve(2)
            assert caught.value.command == "RETR" and caught.value.response_code == "SYS/PERM"
            assert await pop.retrieve(3)
        assert b"QUIT" in srv.received  # the session stayed sound


async def test_a_reply_that_is_not_a_status_line_breaks_the_session() -> None:
    async with ScriptedServer(GREETING, server(lambda n: b"hello\r\n")) as srv:
        pop = client(srv.port)
        async with pop:
            with pytest.raises(ProtocolError):
                await pop.retrieve(1)
            with pytest.raises(ConnectionLostError, match="abandoned"):
                await pop.retrieve(1)
        assert b"QUIT" not in srv.received  # nothing is deleted after a broken session


async def test_a_message_cut_short_is_a_lost_connection() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        while line := await reader.readline():
            if line.upper().startswith(b"CAPA"):
                writer.write(lines(b"+OK", b"SASL XOAUTH2", b"."))
            elif line.upper().startswith(b"RETR"):
                writer.write(b"+OK\r\nSubject: x\r\n")  # and hang up mid-message
                await writer.drain()
                break
            else:
                writer.write(b"+OK\r\n")
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        async with client(listener.sockets[0].getsockname()[1]) as pop:
            with pytest.raises(ConnectionLostError):
                await asyncio.wait_for(pop.retrieve(1), 10)
    finally:
        listener.close()
        await listener.wait_closed()
