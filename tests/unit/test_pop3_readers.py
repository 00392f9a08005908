"""Unit tests of the POP3 response readers and their table (mailoauth.pop3.readers)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailoauth.errors import LimitExceededError, ProtocolError
from mailoauth.pop3 import events, protocol, readers
from mailoauth.pop3._states import BARRIER_COMMANDS, REPLY_TRIGGERS, TRANSITIONS, State
from mailoauth.pop3.events import (
    NEED_DATA,
    Capabilities,
    Event,
    Listing,
    MessageData,
    MessageEnd,
    Stat,
    UidListing,
)
from mailoauth.pop3.readers import (
    MAX_LINE,
    MAX_LISTING_SIZE,
    READERS,
    ListingReader,
    MessageReader,
    Reader,
    ReceiveBuffer,
    ResponseKind,
    dot_stuff,
    split_status,
)


@dataclass(frozen=True)
class Case:
    kind: ResponseKind
    verb: str
    status_text: bytes  # after "+OK "
    data: bytes  # what follows the status line
    expected: tuple[Event, ...]  # None reader: no events, the status line was all


CASES = [
    Case(ResponseKind.GREETING, "GREETING", b"ready", b"", ()),
    Case(ResponseKind.STATUS, "NOOP", b"", b"", ()),
    Case(ResponseKind.AUTH, "AUTH", b"welcome", b"", ()),
    Case(ResponseKind.STAT, "STAT", b"2 320", b"", (Stat(2, 320),)),
    Case(ResponseKind.LIST_ONE, "LIST", b"2 200", b"", (Listing(((2, 200),)),)),
    Case(
        ResponseKind.UIDL_ONE,
        "UIDL",
        b"2 QhdPYR:00WBw1Ph7x7",
        b"",
        (UidListing(((2, "QhdPYR:00WBw1Ph7x7"),)),),
    ),
    Case(
        ResponseKind.LIST_ALL,
        "LIST",
        b"",
        b"1 120\r\n2 200\r\n.\r\n",
        (Listing(((1, 120), (2, 200))),),
    ),
    Case(
        ResponseKind.UIDL_ALL,
        "UIDL",
        b"",
        b"1 a\r\n2 b\r\n.\r\n",
        (UidListing(((1, "a"), (2, "b"))),),
    ),
    Case(
        ResponseKind.CAPA,
        "CAPA",
        b"",
        b"TOP\r\nSASL XOAUTH2\r\nsasl OAUTHBEARER\r\n.\r\n",
        (Capabilities({"TOP": (), "SASL": ("XOAUTH2", "OAUTHBEARER")}),),
    ),
    Case(
        ResponseKind.MESSAGE,
        "RETR",
        b"",
        dot_stuff(b".a\r\nb"),
        (MessageData(b".a\r\nb\r\n"), MessageEnd()),
    ),
]


def read_all(reader: Reader, buf: ReceiveBuffer, data: bytes, bytewise: bool) -> list[Event]:
    """Feed ``data`` (whole or a byte at a time) and read until the reader is done."""
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    out: list[Event] = []
    for piece in pieces or [b""]:
        if piece:
            buf.feed(piece)
        while not reader.done:
            event = reader.read(buf)
            if event is NEED_DATA:
                break
            out.append(event)
    assert reader.done
    joined: list[Event] = []
    for event in out:  # chunking depends on how the bytes arrived
        if isinstance(event, MessageData) and joined and isinstance(joined[-1], MessageData):
            joined[-1] = MessageData(joined[-1].data + event.data)
        else:
            joined.append(event)
    return joined


def test_the_table_has_a_reader_entry_for_every_response_kind() -> None:
    assert set(READERS) == set(ResponseKind)
    assert {case.kind for case in CASES} == set(ResponseKind)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", CASES, ids=[case.kind.name for case in CASES])
def test_each_kind_is_read_by_its_table_entry(case: Case, bytewise: bool) -> None:
    factory = READERS[case.kind]
    if factory is None:
        assert case.data == b"" and case.expected == ()
        return
    buf = ReceiveBuffer()
    trailing = b"+OK next\r\n"
    got = read_all(factory(case.verb, case.status_text), buf, case.data + trailing, bytewise)
    assert tuple(got) == case.expected
    assert bytes(buf.data) == trailing  # the next response's bytes are left alone


@pytest.mark.parametrize("case", CASES, ids=[case.kind.name for case in CASES])
def test_the_protocol_dispatches_through_the_table(case: Case) -> None:
    # Every data-carrying kind, end to end through Pop3Protocol: the events after the
    # Reply are exactly what the table's reader produces.
    if READERS[case.kind] is None:
        return
    proto = protocol.Pop3Protocol()
    proto.receive_data(b"+OK hi\r\n")
    proto.next_event()
    proto.user("u")
    proto.pass_("p")
    proto.receive_data(b"+OK\r\n+OK\r\n")
    proto.next_event()
    proto.next_event()
    send: dict[ResponseKind, Callable[[], bytes]] = {
        ResponseKind.STAT: proto.stat,
        ResponseKind.LIST_ONE: lambda: proto.list(2),
        ResponseKind.UIDL_ONE: lambda: proto.uidl(2),
        ResponseKind.LIST_ALL: proto.list,
        ResponseKind.UIDL_ALL: proto.uidl,
        ResponseKind.CAPA: proto.capa,
        ResponseKind.MESSAGE: lambda: proto.retr(1),
    }
    send[case.kind]()
    proto.receive_data(b"+OK " + case.status_text + b"\r\n" + case.data)
    got: list[Event] = []
    while proto.pending_responses:
        event = proto.next_event()
        assert event is not NEED_DATA
        got.append(event)
    assert got[0] == events.Reply(case.verb, True, case.status_text.decode())
    assert tuple(got[1:]) == case.expected


def test_a_listing_over_max_listing_size_names_the_command_and_the_limit() -> None:
    reader = ListingReader(readers.parse_capabilities, "CAPA", b"")
    buf = ReceiveBuffer()
    line = b"X" * 1000 + b"\r\n"
    buf.feed(line * (MAX_LISTING_SIZE // len(line) + 1))
    with pytest.raises(LimitExceededError, match=r"CAPA response .* MAX_LISTING_SIZE"):
        reader.read(buf)


def test_a_malformed_single_line_reply_is_a_protocol_error() -> None:
    factory = READERS[ResponseKind.STAT]
    assert factory is not None
    with pytest.raises(ProtocolError, match="malformed STAT reply"):
        factory("STAT", b"two 320").read(ReceiveBuffer())


def test_receive_buffer_keeps_a_chunk_uncopied_and_bounds_lines() -> None:
    buf = ReceiveBuffer()
    chunk = b"body bytes without a line end"
    buf.feed(chunk)
    assert buf.data is chunk  # into an empty buffer: the caller's object, not a copy
    assert buf.read_line() is None
    buf.feed(b"\r\nnext")
    assert buf.read_line() == chunk
    assert buf.discard() == b"next" and len(buf) == 0
    buf.feed(b"x" * (MAX_LINE - 1))
    assert buf.read_line() is None
    buf.feed(b"x")
    with pytest.raises(LimitExceededError, match="MAX_LINE"):
        buf.read_line()
    buf.feed(b"")
    assert buf.eof


def test_message_reader_keeps_the_session_scan_choice_on_the_buffer() -> None:
    buf = ReceiveBuffer()
    dotted = b"".join(b"a.b.c line %d e.g. example.test\r\n" % i for i in range(20))
    assert read_all(MessageReader(), buf, dot_stuff(dotted), False)[-1] == MessageEnd()
    assert buf.scan_dots is False  # many dots that start no line: CRLF "." search


@pytest.mark.parametrize(
    ("line", "expected"),
    [(b"+OK", (True, b"")), (b"+OK hi", (True, b"hi")), (b"-ERR [AUTH] no", (False, b"[AUTH] no"))],
)
def test_split_status(line: bytes, expected: tuple[bool, bytes]) -> None:
    assert split_status(line) == expected


@pytest.mark.parametrize("line", [b"+OKAY", b"* OK", b""])
def test_split_status_refuses_anything_else(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        split_status(line)


def test_replies_that_move_the_state_are_barriers_with_transitions() -> None:
    # A state-changing reply must not have commands pipelined behind it, and each of
    # its triggers must be a transition from some state.
    assert {verb for verb, _ in REPLY_TRIGGERS} <= BARRIER_COMMANDS
    sources = {trigger for (_, trigger) in TRANSITIONS}
    assert set(REPLY_TRIGGERS.values()) <= sources
    assert (State.TRANSACTION, REPLY_TRIGGERS["QUIT", True]) not in TRANSITIONS  # via UPDATE


def test_protocol_keeps_exporting_what_moved() -> None:
    for name in protocol.__all__:
        value = getattr(protocol, name)
        moved_to = (
            events if name in events.__all__ else readers if name in readers.__all__ else None
        )
        if moved_to is not None:
            assert value is getattr(moved_to, name), name


_SANS_IO = ("protocol.py", "readers.py", "events.py", "_states.py")
_ALLOWED_MAILOAUTH = {
    "mailoauth.errors",
    "mailoauth.sasl",
    "mailoauth._util.text",
    "mailoauth._text",
}


@pytest.mark.parametrize("name", _SANS_IO)
def test_sans_io_modules_import_no_io(name: str) -> None:
    # Checked on the source, so that it holds whatever the package __init__ loads.
    tree = ast.parse((Path(protocol.__file__).parent / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top == "mailoauth":
                assert module.startswith("mailoauth.pop3.") or module in _ALLOWED_MAILOAUTH, module
            else:
                assert top in sys.stdlib_module_names, module
                assert top not in {"asyncio", "socket", "ssl", "selectors"}, module
