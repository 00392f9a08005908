"""ImapProtocol's receiving side, fed bytes directly (no sockets).

The handler replaces aioimaplib's recursive one: responses of any length parse with a
bounded stack, each line is looked at a bounded number of times, and the result is the
same as aioimaplib's own handler gives (checked against it on small inputs, fed whole,
byte by byte and in random chunks). Limits: MAX_LINE, MAX_LITERAL, max_response.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aioimaplib import aioimaplib as _aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailoauth.errors import ConnectionLostError, LimitExceededError, ProtocolError
from mailoauth.imap import parsing
from mailoauth.imap._aioimaplib import (
    IDLE_PAUSE_READING_AT,
    MAX_LITERAL,
    MAX_RESPONSE,
    ImapProtocol,
    _FetchCommand,
)

#: More lines than Python's default recursion limit (1000) many times over.
MANY = 100_000


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def selected_protocol(protocol: Any = None, **kwargs: Any) -> tuple[Any, FakeTransport]:
    """A protocol (ours unless given) in SELECTED state over a fake transport."""
    if protocol is None:
        protocol = ImapProtocol(asyncio.get_running_loop(), **kwargs)
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.state = _aio.SELECTED
    protocol.capabilities = {"IMAP4rev1", "IDLE"}
    return protocol, transport


async def sent_tag(transport: FakeTransport) -> bytes:
    """The tag of the command just written (after letting it be sent)."""
    for _ in range(10):
        await asyncio.sleep(0)
        if transport.written.endswith(b"\r\n"):
            break
    line = bytes(transport.written).splitlines()[-1]
    transport.written.clear()
    return line.split(b" ", 1)[0]


async def run_command(
    protocol: Any,
    transport: FakeTransport,
    start: Callable[[Any], Awaitable[_aio.Response]],
    response: Callable[[bytes], bytes],
    chunks: Callable[[bytes], Sequence[bytes]] = lambda data: [data],
) -> _aio.Response:
    """Start a command, feed ``response(tag)`` in ``chunks``, return its Response."""
    task = asyncio.ensure_future(start(protocol))
    tag = await sent_tag(transport)
    for chunk in chunks(response(tag)):
        protocol.data_received(chunk)
    result: _aio.Response = await asyncio.wait_for(task, 10)
    return result


def fetch_flags_response(n: int) -> Callable[[bytes], bytes]:
    def build(tag: bytes) -> bytes:
        body = b"".join(b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (i, i) for i in range(1, n + 1))
        return body + tag + b" OK Fetch completed.\r\n"

    return build


# -- any length, bounded stack ------------------------------------------------------


@pytest.mark.asyncio
async def test_100k_fetch_lines_in_one_read_parse() -> None:
    """aioimaplib recursed once per line: this raised RecursionError in data_received."""
    protocol, transport = selected_protocol()
    response = await run_command(
        protocol, transport, lambda p: p.fetch("1:*", "(UID FLAGS)"), fetch_flags_response(MANY)
    )
    assert response.result == "OK"
    records = parsing.parse_fetch(response.lines)
    assert [r.uid for r in records] == list(range(1, MANY + 1))
    assert all(r.flags == frozenset({"\\Seen"}) for r in records)


@pytest.mark.asyncio
async def test_100k_list_lines_and_100k_ignored_untagged_lines_in_one_read() -> None:
    protocol, transport = selected_protocol()

    def folders(tag: bytes) -> bytes:
        lines = b"".join(b'* LIST (\\HasNoChildren) "/" "f%d"\r\n' % i for i in range(MANY))
        return lines + tag + b" OK List completed.\r\n"

    response = await run_command(
        protocol, transport, lambda p: p.simple_command("LIST", '""', "*"), folders
    )
    assert [f.name for f in parsing.parse_list(response.lines)] == [f"f{i}" for i in range(MANY)]
    # No command waiting: lines the client did not ask for are dropped, not recursed on.
    protocol.data_received(b"* 1 FETCH (FLAGS ())\r\n" * MANY)
    assert protocol.fatal_error is None and not transport.closed


@pytest.mark.asyncio
async def test_idle_burst_of_100k_lines_in_one_read() -> None:
    protocol, transport = selected_protocol()
    idle = asyncio.ensure_future(protocol.idle())
    tag = await sent_tag(transport)
    protocol.data_received(b"+ idling\r\n" + b"* 5 FETCH (FLAGS (\\Seen))\r\n" * MANY)
    pushed = await protocol.next_idle_lines()
    assert len(pushed) == MANY
    assert protocol._response_size == 0  # read: no longer counted against max_response
    protocol.idle_done()
    protocol.data_received(tag + b" OK Idle completed.\r\n")
    assert (await idle).result == "OK"


@pytest.mark.asyncio
async def test_fetch_wait_data_looks_at_each_line_once() -> None:
    """aioimaplib's FetchCommand re-scanned all lines after each line: n*n/2 matches."""
    protocol, transport = selected_protocol()
    matches = 0
    real: re.Pattern[bytes] = _FetchCommand.FETCH_MESSAGE_DATA_RE

    class Counting:
        def match(self, line: bytes) -> re.Match[bytes] | None:
            nonlocal matches
            matches += 1
            return real.match(line)

    n = 3000
    _FetchCommand.FETCH_MESSAGE_DATA_RE = Counting()
    try:
        await run_command(
            protocol, transport, lambda p: p.fetch("1:*", "(UID FLAGS)"), fetch_flags_response(n)
        )
    finally:
        _FetchCommand.FETCH_MESSAGE_DATA_RE = real
    assert matches <= n + 1


# -- the same answer as aioimaplib's own handler ------------------------------------

_literal_bodies = st.binary(max_size=40).map(lambda b: b.replace(b"* ", b"*_"))


@st.composite
def fetch_responses(draw: st.DrawFn) -> list[tuple[int, bytes | None]]:
    """Messages for a FETCH response: (uid, literal body or None)."""
    n = draw(st.integers(min_value=0, max_value=25))
    return [(i + 1, draw(st.none() | _literal_bodies)) for i in range(n)]


def render_fetch(messages: list[tuple[int, bytes | None]], tag: bytes) -> bytes:
    out = bytearray()
    for uid, body in messages:
        if body is None:
            out += b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (uid, uid)
        else:
            out += b"* %d FETCH (UID %d BODY[] {%d}\r\n%s FLAGS ())\r\n" % (
                uid,
                uid,
                len(body),
                body,
            )
    return bytes(out + tag + b" OK done\r\n")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=fetch_responses(),
    cuts=st.one_of(
        st.just([]),
        st.just([-1]),  # marker: byte by byte
        st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    ),
)
def test_same_response_as_aioimaplib_whole_byte_by_byte_and_in_chunks(
    messages: list[tuple[int, bytes | None]], cuts: list[int]
) -> None:
    def chunks(data: bytes) -> list[bytes]:
        if cuts == [-1]:
            return [data[i : i + 1] for i in range(len(data))]
        return split_at(data, cuts)

    async def both() -> tuple[_aio.Response, _aio.Response]:
        ours, t1 = selected_protocol()
        theirs, t2 = selected_protocol(_aio.IMAP4ClientProtocol(asyncio.get_running_loop()))

        def build(tag: bytes) -> bytes:
            return render_fetch(messages, tag)

        mine = await run_command(ours, t1, lambda p: p.fetch("1:*", "(BODY[])"), build, chunks)
        upstream = await run_command(
            theirs, t2, lambda p: p.fetch("1:*", "(BODY[])"), build, chunks
        )
        return mine, upstream

    mine, upstream = asyncio.run(both())
    assert mine.result == upstream.result == "OK"
    assert [bytes(x) for x in mine.lines] == [bytes(x) for x in upstream.lines]
    records = parsing.parse_fetch(mine.lines)
    assert [(r.uid, r.sections.get("BODY[]")) for r in records] == messages


@pytest.mark.asyncio
async def test_only_the_leading_star_is_stripped() -> None:
    """aioimaplib deletes every "* " in an untagged line: "a* b" became "ab"."""
    protocol, transport = selected_protocol()

    def folders(tag: bytes) -> bytes:
        return b'* LIST () "/" "a* b"\r\n' + tag + b" OK done\r\n"

    response = await run_command(
        protocol, transport, lambda p: p.simple_command("LIST", '""', "*"), folders
    )
    assert [f.name for f in parsing.parse_list(response.lines)] == ["a* b"]


@pytest.mark.asyncio
async def test_a_tagged_reply_nobody_asked_for_is_a_protocol_error() -> None:
    protocol, transport = selected_protocol()
    task = asyncio.ensure_future(protocol.simple_command("NOOP"))
    await sent_tag(transport)
    protocol.data_received(b"ZZZZ1 OK what?\r\n")
    with pytest.raises(ProtocolError, match="out of order"):
        await asyncio.wait_for(task, 5)
    assert transport.closed


# -- limits ---------------------------------------------------------------------------


def test_max_response_is_above_one_big_message_and_below_two() -> None:
    # Exchange Online accepts messages up to 150 MB: one fits, two in a FETCH do not.
    assert 150 * 1024 * 1024 < MAX_RESPONSE < 2 * 150 * 1024 * 1024
    assert MAX_RESPONSE <= MAX_LITERAL


@pytest.mark.asyncio
async def test_response_over_max_response_fails_the_command_before_the_literal() -> None:
    limit = 10_000
    protocol, transport = selected_protocol(max_response=limit)
    task = asyncio.ensure_future(protocol.fetch("1:2", "(BODY[])"))
    await sent_tag(transport)
    protocol.data_received(b"* 1 FETCH (UID 1 BODY[] {6000}\r\n" + b"x" * 6000 + b")\r\n")
    assert protocol.fatal_error is None
    # The second literal is refused when announced, before any of its bytes arrive.
    protocol.data_received(b"* 2 FETCH (UID 2 BODY[] {6000}\r\n")
    with pytest.raises(LimitExceededError, match="max_response_size") as info:
        await asyncio.wait_for(task, 5)
    assert str(limit) in str(info.value)
    assert transport.closed
    protocol.data_received(b"x" * 6000)  # ignored once given up
    assert protocol.limit_error is info.value


@pytest.mark.asyncio
async def test_many_small_lines_over_max_response_fail_too() -> None:
    protocol, transport = selected_protocol(max_response=50_000)
    with pytest.raises(LimitExceededError, match="max_response_size"):
        await run_command(
            protocol, transport, lambda p: p.fetch("1:*", "(FLAGS)"), fetch_flags_response(5000)
        )


@pytest.mark.asyncio
async def test_response_size_restarts_with_each_command() -> None:
    protocol, transport = selected_protocol(max_response=200_000)
    for _ in range(5):  # 5 x 150 KB: each under the limit, together over it
        response = await run_command(
            protocol, transport, lambda p: p.fetch("1:*", "(FLAGS)"), fetch_flags_response(4000)
        )
        assert response.result == "OK"


@pytest.mark.asyncio
async def test_idle_backlog_over_max_response_ends_the_idle() -> None:
    protocol, transport = selected_protocol(max_response=20_000)
    idle = asyncio.ensure_future(protocol.idle())
    await sent_tag(transport)
    protocol.data_received(b"+ idling\r\n")
    for _ in range(100):  # never read by the caller
        protocol.data_received(b"* 5 FETCH (FLAGS (\\Seen))\r\n" * 20)
        if protocol.fatal_error is not None:
            break
    assert isinstance(protocol.fatal_error, LimitExceededError)
    with pytest.raises(LimitExceededError):
        await asyncio.wait_for(idle, 5)


@pytest.mark.asyncio
async def test_lost_connection_wakes_an_idle_reader() -> None:
    protocol, transport = selected_protocol()
    idle = asyncio.ensure_future(protocol.idle())
    await sent_tag(transport)
    protocol.data_received(b"+ idling\r\n")
    reader = asyncio.ensure_future(protocol.next_idle_lines())
    protocol.connection_lost(None)
    assert await asyncio.wait_for(reader, 5) == []
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(idle, 5)


# -- STARTTLS -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lines_after_the_starttls_go_ahead_are_never_parsed() -> None:
    protocol, transport = selected_protocol()
    protocol.state = _aio.NONAUTH
    protocol.unsolicited.append(b"2 EXISTS")  # learnt in plaintext: forgotten too
    task = asyncio.ensure_future(protocol.execute(_aio.Command("STARTTLS", "T1")))
    await sent_tag(transport)
    injected = b"* 7 EXISTS\r\n* BYE injected\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"
    protocol.data_received(b"T1 OK Begin TLS\r\n" + injected[:15])
    protocol.data_received(injected[15:] + b"* partial line")
    assert (await task).result == "OK"
    assert protocol.bye is None and protocol.unsolicited == [b"2 EXISTS"]
    assert protocol.reset_after_starttls() == len(injected) + len(b"* partial line")
    assert protocol.unsolicited == [] and protocol.bye is None
    # Over TLS, parsing resumes.
    protocol.data_received(b"* 3 EXISTS\r\n")
    assert protocol.unsolicited == [b"3 EXISTS"]


@pytest.mark.asyncio
async def test_lines_that_come_with_the_idle_completion_are_queued() -> None:
    """aioimaplib queued IDLE lines only at the end of a read while IDLE was pending:
    ``* 5 EXISTS`` arriving in the same read as the IDLE's OK was lost."""
    protocol, transport = selected_protocol()
    idle = asyncio.ensure_future(protocol.idle())
    tag = await sent_tag(transport)
    protocol.data_received(b"+ idling\r\n")
    protocol.idle_done()
    protocol.data_received(b"* 5 EXISTS\r\n" + tag + b" OK Idle completed.\r\n")
    assert (await idle).result == "OK"
    assert protocol.idle_queue.qsize() == 1
    assert await protocol.next_idle_lines() == [b"5 EXISTS"]


@pytest.mark.asyncio
async def test_selecting_forgets_what_was_pushed_about_the_previous_mailbox() -> None:
    protocol, transport = selected_protocol()
    idle = asyncio.ensure_future(protocol.idle())
    tag = await sent_tag(transport)
    protocol.data_received(b"+ idling\r\n* 9 EXISTS\r\n")  # queued, never read
    protocol.idle_done()
    protocol.data_received(b"* 10 EXISTS\r\n" + tag + b" OK Idle completed.\r\n")
    await idle
    protocol.unsolicited.append(b"11 EXISTS")
    protocol.forget_unsolicited()
    assert protocol.idle_queue.empty() and protocol.unsolicited == []
    assert not protocol._idle_batches


# -- read back-pressure during IDLE ------------------------------------------------------


@pytest.mark.asyncio
async def test_idle_lines_the_caller_does_not_read_pause_the_socket() -> None:
    """A server pushing more than IDLE_PAUSE_READING_AT to a caller that does not read:
    reading pauses (the rest waits in TCP buffers), resumes as the caller catches up,
    and at once when the IDLE is ended (its completion must be read)."""
    protocol, transport = selected_protocol()
    idle = asyncio.ensure_future(protocol.idle())
    tag = await sent_tag(transport)
    protocol.data_received(b"+ idling\r\n")
    read = b"* 5 FETCH (FLAGS (\\Seen))\r\n" * 1000  # one socket read
    while transport.reading:
        protocol.data_received(read)
    assert IDLE_PAUSE_READING_AT < protocol._idle_unread <= IDLE_PAUSE_READING_AT + len(read)
    while not transport.reading:
        assert await protocol.next_idle_lines()
    assert protocol._idle_unread <= IDLE_PAUSE_READING_AT // 4
    while transport.reading:
        protocol.data_received(read)
    protocol.idle_done()
    assert transport.reading
    protocol.data_received(read + tag + b" OK Idle completed.\r\n")
    assert (await idle).result == "OK"
    assert transport.reading  # the next IDLE starts with the socket read


@pytest.mark.asyncio
async def test_selecting_another_mailbox_resumes_a_paused_idle_reader() -> None:
    protocol, transport = selected_protocol()
    idle = asyncio.ensure_future(protocol.idle())
    tag = await sent_tag(transport)
    protocol.data_received(b"+ idling\r\n")
    while transport.reading:
        protocol.data_received(b"* 1 EXISTS\r\n" * 10_000)
    protocol.forget_unsolicited()
    assert transport.reading and protocol._idle_unread == 0
    protocol.idle_done()
    protocol.data_received(tag + b" OK Idle completed.\r\n")
    assert (await idle).result == "OK"
