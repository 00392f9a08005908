"""Servers that answer garbage, lines that never end, responses that never end.

Each client must fail with a typed mailoauth error, quickly (never a hang), holding a
bounded amount of memory (measured with tracemalloc), and must not keep the connection.
The servers are tiny scripted ones on loopback (:class:`ScriptedServer`).
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailoauth.errors import LimitExceededError, MailOAuthError, ProtocolError
from mailoauth.imap import _aioimaplib
from mailoauth.imap.client import ImapClient
from mailoauth.pop3 import Pop3Client
from mailoauth.pop3.protocol import MAX_LINE as POP3_MAX_LINE
from mailoauth.pop3.protocol import MAX_LISTING_SIZE
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.faultproxy import Reply, ScriptedServer, endless, garbage, lines

pytestmark = pytest.mark.asyncio

TIMEOUT = 3.0
GUARD = 30.0
#: Peak memory allowed above the limit being tested (Python objects, copies, logs).
SLACK = 48 * 1024 * 1024
CLIENTS: dict[str, Callable[[int], Any]] = {
    "imap": lambda port: ImapClient(
        "127.0.0.1", port, "u@example.test", "at-x", SecurityOptions.NONE,
        timeout=TIMEOUT, allow_insecure_auth=True,
    ),
    "pop3": lambda port: Pop3Client(
        "127.0.0.1", port, "u@example.test", "at-x", SecurityOptions.NONE,
        timeout=TIMEOUT, allow_insecure_auth=True,
    ),
    "smtp": lambda port: SmtpClient(
        "127.0.0.1", port, "u@example.test", "at-x", SecurityOptions.NONE,
        timeout=TIMEOUT, allow_insecure_auth=True,
    ),
}  # fmt: skip


async def connect_expecting_error(
    protocol: str, server: ScriptedServer, limit: int = 0
) -> MailOAuthError:
    """Connect to ``server``; return the typed error, checking time and peak memory."""
    client = CLIENTS[protocol](server.port)
    tracemalloc.start()
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(MailOAuthError) as info:
            await asyncio.wait_for(client.connect(), GUARD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await client.aclose()
    assert asyncio.get_running_loop().time() - started < GUARD
    assert peak < limit + SLACK, f"peak {peak} bytes"
    return info.value


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
@pytest.mark.parametrize("seed", range(6))
async def test_garbage_greeting_is_a_typed_error(protocol: str, seed: int) -> None:
    noise = garbage(seed) + b"\r\n"
    async with ScriptedServer(noise, lambda line: garbage(seed + 1, 512) + b"\r\n") as server:
        await connect_expecting_error(protocol, server)


NOT_PROTOCOL = lines(b"HTTP/1.1 400 Bad Request", b"Content-Length: 0", b"")


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
async def test_non_protocol_lines_are_a_typed_error(protocol: str) -> None:
    async with ScriptedServer(NOT_PROTOCOL, lambda line: NOT_PROTOCOL) as server:
        error = await connect_expecting_error(protocol, server)
    assert isinstance(error, ProtocolError | LimitExceededError) or "timed out" in str(error)


def endless_greeting(prefix: bytes) -> Callable[[], AsyncIterator[bytes]]:
    return lambda: endless(b"A" * 65536, prefix)


@pytest.mark.parametrize(
    ("protocol", "prefix", "limit"),
    [
        ("imap", b"* OK ", _aioimaplib.MAX_LINE),
        ("pop3", b"+OK ", POP3_MAX_LINE),
        ("smtp", b"220 ", 8192 * 4),
    ],
)
async def test_endless_greeting_line_is_refused_with_bounded_memory(
    protocol: str, prefix: bytes, limit: int
) -> None:
    async with ScriptedServer(endless_greeting(prefix)) as server:
        error = await connect_expecting_error(protocol, server, limit)
    assert isinstance(error, LimitExceededError), repr(error)


def answer_capabilities_endlessly(protocol: str) -> Callable[[bytes], Reply]:
    def answer(line: bytes) -> Reply:
        verb = line.split(b" ", 2)
        if protocol == "imap" and verb[1:2] == [b"CAPABILITY\r\n"]:
            return endless(b"IMAP4rev1 " * 6553, b"* CAPABILITY ")
        if protocol == "pop3" and line.startswith(b"CAPA"):
            return endless(b"X" * 8000 + b"\r\n", b"+OK\r\n")
        if protocol == "smtp" and line.startswith(b"EHLO"):
            return endless(b"250-ENDLESS\r\n" * 4096)
        return None

    return answer


GREETINGS = {"imap": b"* OK ready\r\n", "pop3": b"+OK ready\r\n", "smtp": b"220 ready\r\n"}


@pytest.mark.parametrize(
    ("protocol", "limit"),
    [("imap", _aioimaplib.MAX_LINE), ("pop3", MAX_LISTING_SIZE), ("smtp", 8192 * 4)],
)
async def test_endless_response_is_refused_with_bounded_memory(protocol: str, limit: int) -> None:
    answer = answer_capabilities_endlessly(protocol)
    async with ScriptedServer(GREETINGS[protocol], answer) as server:
        error = await connect_expecting_error(protocol, server, limit)
    assert isinstance(error, LimitExceededError), repr(error)


async def test_imap_huge_literal_is_refused_before_it_arrives() -> None:
    def answer(line: bytes) -> Reply:
        tag = line.split(b" ", 1)[0]
        if b"CAPABILITY" in line:
            return lines(b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2", tag + b" OK done")
        return endless(b"x" * 65536, b"* 1 FETCH (BODY[] {999999999999}\r\n")

    async with ScriptedServer(GREETINGS["imap"], answer) as server:
        error = await connect_expecting_error("imap", server)
    assert isinstance(error, LimitExceededError) and "literal" in str(error)
