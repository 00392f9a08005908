"""What an idle IMAP connection holds: ImapProtocol's light stand-ins for aioimaplib's
per-connection asyncio objects, a capability set shared between connections, and an
IDLE that runs with no task waiting on it."""

from __future__ import annotations

import asyncio
import collections
import gc
import sys

import pytest
from aioimaplib import aioimaplib as _aio

from mailoauth.errors import ConnectionLostError
from mailoauth.imap._aioimaplib import (
    ImapProtocol,
    _LineQueue,
    _Signal,
    capabilities_in_code,
    capability_set,
)
from mailoauth.imap.session import _capabilities_sent

pytestmark = pytest.mark.asyncio


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def selected() -> tuple[ImapProtocol, FakeTransport]:
    protocol = ImapProtocol(asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.state = _aio.SELECTED
    protocol.capabilities = capability_set(b"IMAP4rev1 IDLE")
    return protocol, transport


async def test_connections_share_one_capability_set_of_interned_names() -> None:
    greeting = b"* OK [CAPABILITY IMAP4rev1 SASL-IR IDLE AUTH=XOAUTH2] ready"
    first, second = capabilities_in_code(greeting), capabilities_in_code(bytes(greeting))
    assert first is second and first == frozenset({"IMAP4rev1", "SASL-IR", "IDLE", "AUTH=XOAUTH2"})
    assert isinstance(first, frozenset)
    assert all(sys.intern(name) is name for name in first)
    untagged = _capabilities_sent([bytearray(b"CAPABILITY IMAP4rev1 SASL-IR IDLE AUTH=XOAUTH2")])
    assert untagged is first  # the same list, read another way: the same set


async def test_the_shared_capability_sets_are_bounded() -> None:
    for n in range(600):
        capability_set(f"IMAP4rev1 X-{n}".encode())
    from mailoauth.imap import _aioimaplib

    assert len(_aioimaplib._CAPABILITY_SETS) <= _aioimaplib._CAPABILITY_SETS_MAX


async def test_no_asyncio_queue_event_or_condition_per_connection() -> None:
    protocol, _ = selected()
    assert type(protocol.idle_queue) is _LineQueue
    assert type(protocol._idle_event) is _Signal
    assert protocol._state_condition is None  # made on first use only
    condition = protocol.state_condition
    assert isinstance(condition, asyncio.Condition) and protocol.state_condition is condition


async def test_signal_wakes_every_waiter_and_survives_cancellation() -> None:
    signal = _Signal()
    waiters = [asyncio.ensure_future(signal.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    signal.set()
    assert await asyncio.gather(*waiters[1:]) == [True, True]
    assert signal.is_set() and await signal.wait()
    signal.clear()
    assert not signal.is_set()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(signal.wait(), 0.01)
    assert signal._waiters == []  # the timed-out waiter did not stay behind


async def test_line_queue_keeps_order_and_loses_nothing_to_a_cancelled_getter() -> None:
    queue = _LineQueue()
    assert queue.empty() and queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait([b"1 EXISTS"])
    getter.cancel()  # woken, then cancelled before it ran: the item stays queued
    with pytest.raises(asyncio.CancelledError):
        await getter
    await queue.put([b"2 EXISTS"])
    assert queue.qsize() == 2
    assert await queue.get() == [b"1 EXISTS"]
    assert queue.get_nowait() == [b"2 EXISTS"]
    assert queue.empty() and queue._items is None and not queue._getters


async def test_idle_runs_with_no_task_and_ends_with_its_completion() -> None:
    protocol, transport = selected()
    tasks_before = len(asyncio.all_tasks())
    idle = await protocol.start_idle()
    assert len(asyncio.all_tasks()) == tasks_before  # nothing waits on it while it idles
    tag = bytes(transport.written).split(b" ", 1)[0]
    assert bytes(transport.written) == tag + b" IDLE\r\n"
    protocol.data_received(b"+ idling\r\n")
    await asyncio.wait_for(protocol.wait_for_idle_response(), 5)
    protocol.data_received(b"* 4 EXISTS\r\n")
    assert await protocol.next_idle_lines() == [b"4 EXISTS"]
    protocol.idle_done()
    protocol.data_received(tag + b" OK Idle completed.\r\n")
    response = await asyncio.wait_for(protocol.end_idle(idle), 5)
    assert response.result == "OK" and protocol.pending_sync_command is None
    assert not protocol._idle_event.is_set()


async def test_a_lost_connection_fails_an_idle_without_a_task() -> None:
    protocol, _ = selected()
    idle = await protocol.start_idle()
    protocol.connection_lost(None)
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(protocol.end_idle(idle), 5)
    gc.collect()  # no "exception never retrieved": there is no future to forget


async def test_start_idle_refuses_without_the_capability_or_a_mailbox() -> None:
    protocol, _ = selected()
    protocol.capabilities = capability_set(b"IMAP4rev1")
    with pytest.raises(_aio.Abort, match="IDLE"):
        await protocol.start_idle()
    protocol.capabilities = capability_set(b"IMAP4rev1 IDLE")
    protocol.state = _aio.AUTH
    with pytest.raises(_aio.Abort, match="illegal in state"):
        await protocol.start_idle()


async def test_next_idle_lines_times_out_with_a_timer_and_keeps_later_lines() -> None:
    protocol, _ = selected()
    idle = await protocol.start_idle()
    protocol.data_received(b"+ idling\r\n")
    assert await protocol.next_idle_lines(0.01) is None
    assert not protocol.idle_queue._getters  # the timed-out wait left nothing behind
    protocol.data_received(b"* 7 EXISTS\r\n")
    assert await protocol.next_idle_lines(5) == [b"7 EXISTS"]
    protocol.connection_lost(None)
    with pytest.raises(ConnectionLostError):
        await protocol.end_idle(idle)


async def test_the_protocol_is_slotted_and_holds_no_deque_or_empty_collection() -> None:
    protocol, transport = selected()
    idle = await protocol.start_idle()
    protocol.data_received(b"+ idling\r\n")
    protocol.data_received(b"* 3 EXISTS\r\n")
    assert await protocol.next_idle_lines() == [b"3 EXISTS"]
    assert protocol.__dict__ == {}  # every attribute, aioimaplib's too, is in a slot
    held = [getattr(protocol, name) for name in ImapProtocol.__slots__]
    assert not any(isinstance(value, collections.deque) for value in held)
    assert protocol._tasks is None and protocol._wire_lines is None  # made when used
    assert protocol.tasks == set() and protocol._tasks is not None
    protocol.idle_done()
    tag = bytes(transport.written).split(b" ", 1)[0]
    protocol.data_received(tag + b" OK done\r\n")
    await asyncio.wait_for(protocol.end_idle(idle), 5)


async def test_capability_answers_share_one_set_and_leave_no_emptied_table() -> None:
    sets = []
    for _ in range(2):
        protocol, transport = selected()
        protocol.capabilities = frozenset()
        asking = asyncio.ensure_future(protocol.capability())
        await asyncio.sleep(0)
        tag = bytes(transport.written).split(b" ", 1)[0]
        protocol.data_received(
            b"* CAPABILITY IMAP4 IMAP4rev1 IDLE X-ONE\r\n" + tag + b" OK done\r\n"
        )
        await asyncio.wait_for(asking, 5)
        assert protocol.imap_version == "IMAP4REV1"
        sets.append(protocol.capabilities)
        # the async command's dict was emptied: its table went with clear()
        assert sys.getsizeof(protocol.pending_async_commands) == sys.getsizeof({})
    assert sets[0] is sets[1] is capability_set(b"IMAP4 IMAP4rev1 IDLE X-ONE")


async def test_capability_refuses_a_server_that_is_not_imap4() -> None:
    protocol, transport = selected()
    asking = asyncio.ensure_future(protocol.capability())
    await asyncio.sleep(0)
    tag = bytes(transport.written).split(b" ", 1)[0]
    protocol.data_received(b"* CAPABILITY POP3 IDLE\r\n" + tag + b" OK done\r\n")
    with pytest.raises(_aio.Error, match="not IMAP4"):
        await asyncio.wait_for(asking, 5)
