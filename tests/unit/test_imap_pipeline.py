"""ImapProtocol's round-trip savers, fed bytes directly (no sockets): the greeting's
capabilities, commands pipelined in one write, and the reply deadline's give-up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioimaplib import aioimaplib as _aio

from mailoauth.errors import ConnectionLostError, MailTimeoutError, ProtocolError
from mailoauth.imap import parsing
from mailoauth.imap._aioimaplib import Command, ImapProtocol, capabilities_in_code
from tests.unit.test_imap_protocol import FakeTransport, selected_protocol

pytestmark = pytest.mark.asyncio


def fresh() -> tuple[ImapProtocol, FakeTransport]:
    protocol = ImapProtocol(asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_capabilities_in_the_greeting_are_used_without_asking() -> None:
    protocol, transport = fresh()
    protocol.data_received(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hi\r\n")
    await asyncio.wait_for(protocol.wait_greeting(), 5)
    assert protocol.state == _aio.NONAUTH
    assert protocol.capabilities == {"IMAP4rev1", "SASL-IR", "AUTH=XOAUTH2"}
    assert transport.written == b""  # no CAPABILITY command
    assert not protocol.tasks  # and no task per connection for the greeting


async def test_a_greeting_without_them_is_followed_by_one_capability_command() -> None:
    protocol, transport = fresh()
    protocol.data_received(b"* PREAUTH ready\r\n")
    waiting = asyncio.ensure_future(protocol.wait_greeting())
    for _ in range(10):
        await asyncio.sleep(0)
    tag, _, command = bytes(transport.written).rstrip(b"\r\n").partition(b" ")
    assert command == b"CAPABILITY"
    protocol.data_received(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
    await asyncio.wait_for(waiting, 5)
    assert protocol.state == _aio.AUTH and protocol.capabilities == {"IMAP4rev1", "IDLE"}


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"* BYE go away\r\n", ProtocolError),
        (b"HTTP/1.1 400 Bad Request\r\n", ProtocolError),
    ],
)
async def test_a_greeting_that_is_not_imap_fails_the_wait(
    greeting: bytes, error: type[Exception]
) -> None:
    protocol, transport = fresh()
    protocol.data_received(greeting)
    with pytest.raises(error, match="greeting is not IMAP"):
        await asyncio.wait_for(protocol.wait_greeting(), 5)
    assert transport.written == b""


async def test_a_connection_lost_before_the_greeting_fails_the_wait() -> None:
    protocol, _ = fresh()
    waiting = asyncio.ensure_future(protocol.wait_greeting())
    await asyncio.sleep(0)
    protocol.connection_lost(None)
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(waiting, 5)


async def test_capabilities_in_a_response_code() -> None:
    assert capabilities_in_code(b"* OK [CAPABILITY IMAP4rev1 IDLE] Dovecot ready.") == frozenset(
        {"IMAP4rev1", "IDLE"}
    )
    assert capabilities_in_code(b"[capability IMAP4rev1] Logged in") == frozenset({"IMAP4rev1"})
    assert capabilities_in_code(b"* OK ready [CAPABILITY IMAP4rev1]") is None  # not first
    assert capabilities_in_code(b"* OK") is None
    assert capabilities_in_code(b"") is None


async def test_pipelined_commands_go_in_one_write_and_are_answered_in_turn() -> None:
    protocol, transport = selected_protocol()
    protocol.state = _aio.AUTH
    writes: list[bytes] = []
    transport.write = writes.append  # type: ignore[method-assign, assignment]
    select = Command("SELECT", "A1", '"INBOX"', loop=protocol.loop)
    search = Command("SEARCH", "A2", "UNSEEN", prefix="UID", loop=protocol.loop)
    task = asyncio.ensure_future(protocol.pipeline(select, search))
    await asyncio.sleep(0)
    assert writes == [b'A1 SELECT "INBOX"\r\nA2 UID SEARCH UNSEEN\r\n']
    protocol.data_received(
        b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\nA1 OK [READ-WRITE] done\r\n"
        b"* SEARCH 2 3\r\nA2 OK searched\r\n"
    )
    selected, found = await asyncio.wait_for(task, 5)
    assert (selected.result, found.result) == ("OK", "OK")
    assert parsing.parse_select("INBOX", selected.lines, False).exists == 3
    assert parsing.parse_search(found.lines) == [2, 3]
    assert protocol.pending_sync_command is None and not protocol._pipelined


async def test_pipelined_answers_split_anywhere_route_the_same() -> None:
    response = (
        b"* 3 EXISTS\r\nA1 NO [NONEXISTENT] none\r\n* NO [ALERT] not yet\r\nA2 BAD no mailbox\r\n"
    )
    for size in (1, 7, len(response)):
        protocol, _ = selected_protocol()
        select = Command("SELECT", "A1", "x", loop=protocol.loop)
        search = Command("SEARCH", "A2", "ALL", prefix="UID", loop=protocol.loop)
        task = asyncio.ensure_future(protocol.pipeline(select, search))
        await asyncio.sleep(0)
        for i in range(0, len(response), size):
            protocol.data_received(response[i : i + size])
        selected, found = await asyncio.wait_for(task, 5)
        assert selected.result == "NO" and selected.lines[-1] == b"[NONEXISTENT] none"
        assert found.result == "BAD" and b"NO [ALERT] not yet" in found.lines


async def test_a_lost_connection_fails_every_pipelined_command() -> None:
    protocol, _ = selected_protocol()
    first = Command("SELECT", "A1", "x", loop=protocol.loop)
    second = Command("SEARCH", "A2", "ALL", prefix="UID", loop=protocol.loop)
    task = asyncio.ensure_future(protocol.pipeline(first, second))
    await asyncio.sleep(0)
    protocol.data_received(b"A1 OK done\r\n")  # the second is now the pending one
    protocol.connection_lost(None)
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(task, 5)
    assert second._event.is_set()


async def test_time_out_fails_what_waits_and_aborts_the_connection() -> None:
    protocol, transport = selected_protocol()
    first = Command("SELECT", "A1", "x", loop=protocol.loop)
    second = Command("SEARCH", "A2", "ALL", prefix="UID", loop=protocol.loop)
    task = asyncio.ensure_future(protocol.pipeline(first, second))
    starting: Any = asyncio.ensure_future(protocol.wait_for_idle_response())
    await asyncio.sleep(0)
    error = MailTimeoutError("timed out selecting on h:1; the connection was closed")
    protocol.time_out(error)
    with pytest.raises(MailTimeoutError) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.value is error
    assert second._exception is error and transport.closed
    await asyncio.wait_for(starting, 5)  # a wait for IDLE to start is woken too
    assert protocol.fatal_error is error
