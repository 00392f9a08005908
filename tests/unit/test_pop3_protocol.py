"""Unit tests of the sans-IO POP3 protocol: no sockets except the poplib cross-check."""

from __future__ import annotations

import base64
import json
import poplib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailoauth.errors import (
    ConfigurationError,
    ConnectionLostError,
    LimitExceededError,
    ProtocolError,
)
from mailoauth.pop3._states import ALLOWED_COMMANDS, BARRIER_COMMANDS, TRANSITIONS, Trigger
from mailoauth.pop3.protocol import (
    MAX_COMMAND_LINE,
    MAX_LINE,
    MAX_LISTING_SIZE,
    NEED_DATA,
    AuthChallenge,
    Capabilities,
    ConnectionClosed,
    Event,
    Greeting,
    Listing,
    MessageData,
    MessageEnd,
    Pop3Protocol,
    Reply,
    Stat,
    State,
    UidListing,
    dot_stuff,
)
from mailoauth.pop3.readers import WHOLE_MESSAGE_MAX
from mailoauth.sasl import POP3_MAX_AUTH_LINE, OAuthBearer, XOAuth2

TRAILING = b"+OK trailing bytes of the next response\r\n"
FEED_MODES = ["whole", "bytewise", "trailing"]


def merge(events: list[Event]) -> list[Event]:
    """Join consecutive MessageData events: chunking depends on how bytes arrive."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, MessageData) and out and isinstance(out[-1], MessageData):
            out[-1] = MessageData(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def drain(proto: Pop3Protocol, data: bytes, mode: str = "whole") -> list[Event]:
    """Feed ``data`` whole, byte by byte, or followed by the next response's bytes, and
    collect events until no response is pending (or an AUTH challenge needs answering).
    In "trailing" mode, check that the extra bytes were left alone."""
    if mode == "trailing":
        data += TRAILING
    pieces = [data[i : i + 1] for i in range(len(data))] if mode == "bytewise" else [data]
    pieces = [piece for piece in pieces if piece]  # b"" would mean end of stream
    events: list[Event] = []
    for piece in pieces:
        proto.receive_data(piece)
        while proto.pending_responses and state(proto) is not State.STARTTLS:
            event = proto.next_event()
            if event is NEED_DATA:
                break
            assert not (isinstance(event, MessageData) and not event.data)
            events.append(event)
            if isinstance(event, AuthChallenge):
                break
    if mode == "trailing":
        assert proto.buffered_bytes == len(TRAILING)
    return merge(events)


@pytest.fixture(params=FEED_MODES)
def feed(request: pytest.FixtureRequest) -> Callable[[Pop3Protocol, bytes], list[Event]]:
    mode: str = request.param
    return lambda proto, data: drain(proto, data, mode)


def state(proto: Pop3Protocol) -> State:
    """The state, read through a call so that mypy does not narrow it between steps."""
    return proto.state


def authorization(greeting: bytes = b"+OK POP3 ready\r\n") -> Pop3Protocol:
    proto = Pop3Protocol()
    proto.receive_data(greeting)
    assert isinstance(proto.next_event(), Greeting)
    return proto


def transaction() -> Pop3Protocol:
    proto = authorization()
    proto.user("alice")
    proto.pass_("secret")
    assert drain(proto, b"+OK\r\n+OK maildrop locked\r\n") == [
        Reply("USER", True, ""),
        Reply("PASS", True, "maildrop locked"),
    ]
    assert state(proto) is State.TRANSACTION
    return proto


def error_challenge(status: str = "401") -> bytes:
    payload = {"status": status, "schemes": "bearer", "scope": "https://mail.google.com/"}
    return base64.b64encode(json.dumps(payload).encode())


# -- greeting and status lines ----------------------------------------------------------


def test_greeting_with_apop_timestamp(feed: Callable[[Pop3Protocol, bytes], list[Event]]) -> None:
    proto = Pop3Protocol()
    assert state(proto) is State.GREETING
    assert proto.next_event() is NEED_DATA
    events = feed(proto, b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n")
    assert events == [
        Greeting(
            True,
            "POP3 server ready <1896.697170952@dbc.mtview.ca.us>",
            None,
            "<1896.697170952@dbc.mtview.ca.us>",
        )
    ]
    assert state(proto) is State.AUTHORIZATION
    assert proto.apop_timestamp == "<1896.697170952@dbc.mtview.ca.us>"


def test_greeting_without_timestamp() -> None:
    proto = authorization(b"+OK Dovecot ready.\r\n")
    assert proto.apop_timestamp is None
    with pytest.raises(ConfigurationError, match="APOP"):
        proto.apop("mrose", "tanstaaf")


def test_greeting_refused_closes() -> None:
    proto = Pop3Protocol()
    proto.receive_data(b"-ERR [SYS/TEMP] too many connections\r\n")
    assert proto.next_event() == Greeting(
        False, "[SYS/TEMP] too many connections", "SYS/TEMP", None
    )
    assert state(proto) is State.CLOSED
    with pytest.raises(ConfigurationError):
        proto.user("alice")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"+OK", Reply("NOOP", True, "", None)),
        (b"+OK fine", Reply("NOOP", True, "fine", None)),
        (b"-ERR", Reply("NOOP", False, "", None)),
        (
            b"-ERR [AUTH] Authentication failed.",
            Reply("NOOP", False, "[AUTH] Authentication failed.", "AUTH"),
        ),
        (b"-ERR [SYS/TEMP] try later", Reply("NOOP", False, "[SYS/TEMP] try later", "SYS/TEMP")),
        (b"-ERR [IN-USE]", Reply("NOOP", False, "[IN-USE]", "IN-USE")),
        (b"-ERR [not a code] x", Reply("NOOP", False, "[not a code] x", None)),
        (b"-ERR caf\xc3\xa9 \xff", Reply("NOOP", False, "caf\u00e9 \ufffd", None)),
    ],
)
def test_status_line(line: bytes, expected: Reply) -> None:
    proto = transaction()
    proto.noop()
    assert drain(proto, line + b"\r\n") == [expected]


@pytest.mark.parametrize("line", [b"+OKAY", b"-ERROR", b"OK", b"", b"* OK", b"+ challenge"])
def test_malformed_status_line(line: bytes) -> None:
    proto = transaction()
    proto.noop()
    proto.receive_data(line + b"\r\n")
    with pytest.raises(ProtocolError):
        proto.next_event()
    assert state(proto) is State.ERROR
    with pytest.raises(ProtocolError, match="broken"):
        proto.next_event()
    with pytest.raises(ConfigurationError):
        proto.noop()


# -- command encoding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "wire"),
    [
        (lambda p: p.stat(), b"STAT\r\n"),
        (lambda p: p.list(), b"LIST\r\n"),
        (lambda p: p.list(3), b"LIST 3\r\n"),
        (lambda p: p.uidl(), b"UIDL\r\n"),
        (lambda p: p.uidl(12), b"UIDL 12\r\n"),
        (lambda p: p.retr(1), b"RETR 1\r\n"),
        (lambda p: p.top(2, 0), b"TOP 2 0\r\n"),
        (lambda p: p.top(2, 10), b"TOP 2 10\r\n"),
        (lambda p: p.dele(7), b"DELE 7\r\n"),
        (lambda p: p.noop(), b"NOOP\r\n"),
        (lambda p: p.rset(), b"RSET\r\n"),
        (lambda p: p.capa(), b"CAPA\r\n"),
        (lambda p: p.quit(), b"QUIT\r\n"),
    ],
)
def test_transaction_command_encoding(call: Callable[[Pop3Protocol], bytes], wire: bytes) -> None:
    assert call(transaction()) == wire


def test_authorization_command_encoding() -> None:
    assert authorization().user("alice@example.com") == b"USER alice@example.com\r\n"
    assert authorization().pass_("pass with spaces") == b"PASS pass with spaces\r\n"
    assert authorization().stls() == b"STLS\r\n"
    assert authorization().capa() == b"CAPA\r\n"
    assert authorization().quit() == b"QUIT\r\n"


def test_apop_rfc1939_example() -> None:
    proto = authorization(b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n")
    assert proto.apop("mrose", "tanstaaf") == b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"
    assert drain(proto, b"+OK maildrop has 1 message (369 octets)\r\n")[0] == Reply(
        "APOP", True, "maildrop has 1 message (369 octets)"
    )
    assert state(proto) is State.TRANSACTION


@pytest.mark.parametrize("bad", ["a\r\nDELE 1", "a\nb", "a\rb", "a\x00b"])
@pytest.mark.parametrize("method", ["user", "pass_", "apop_name", "apop_secret"])
def test_cr_lf_nul_in_arguments_refused(bad: str, method: str) -> None:
    proto = authorization(b"+OK <1.2@host>\r\n")
    with pytest.raises(ConfigurationError, match="CR, LF or NUL"):
        if method == "user":
            proto.user(bad)
        elif method == "pass_":
            proto.pass_(bad)
        elif method == "apop_name":
            proto.apop(bad, "secret")
        else:
            proto.apop("name", bad)
    assert proto.pending_responses == 0
    assert proto.user("ok") == b"USER ok\r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.retr(0),
        lambda p: p.retr(-1),
        lambda p: p.dele(True),
        lambda p: p.list(0),
        lambda p: p.uidl(0),
        lambda p: p.top(1, -1),
        lambda p: p.top(0, 1),
    ],
)
def test_bad_message_numbers_refused(call: Callable[[Pop3Protocol], bytes]) -> None:
    proto = transaction()
    with pytest.raises(ConfigurationError):
        call(proto)
    assert proto.pending_responses == 0


def test_max_command_line() -> None:
    proto = authorization()
    name = "u" * (MAX_COMMAND_LINE - len("USER \r\n"))
    assert len(proto.user(name)) == MAX_COMMAND_LINE
    with pytest.raises(ConfigurationError, match="255"):
        proto.user(name + "u")
    with pytest.raises(ConfigurationError, match="its argument"):
        proto.pass_("p" * MAX_COMMAND_LINE)  # the password is not echoed in the error


# -- states and the transition table ----------------------------------------------------


def test_transition_table_is_complete() -> None:
    for state in State:
        assert state in ALLOWED_COMMANDS
        assert TRANSITIONS[state, Trigger.PROTOCOL_ERROR] is State.ERROR
        if state is not State.ERROR:
            assert TRANSITIONS[state, Trigger.PEER_CLOSED] is State.CLOSED
    # Only these states accept commands; CLOSED and ERROR lead nowhere else.
    assert {s for s, cmds in ALLOWED_COMMANDS.items() if cmds} == {
        State.AUTHORIZATION,
        State.TRANSACTION,
    }
    for (state, trigger), _ in TRANSITIONS.items():
        if state in (State.CLOSED, State.ERROR):
            assert trigger in (Trigger.PEER_CLOSED, Trigger.PROTOCOL_ERROR)
    assert {
        (TRANSITIONS[State.GREETING, Trigger.GREETING_OK]),
        (TRANSITIONS[State.STARTTLS, Trigger.TLS_STARTED]),
    } == {State.AUTHORIZATION}
    assert TRANSITIONS[State.AUTHORIZATION, Trigger.LOGIN_OK] is State.TRANSACTION
    assert TRANSITIONS[State.TRANSACTION, Trigger.QUIT_SENT] is State.UPDATE
    assert TRANSITIONS[State.UPDATE, Trigger.QUIT_REPLIED] is State.CLOSED
    assert ALLOWED_COMMANDS[State.AUTHORIZATION] >= BARRIER_COMMANDS


def test_missing_transition_is_an_error() -> None:
    proto = transaction()
    with pytest.raises(ProtocolError, match="no POP3 transition"):
        proto._transition(Trigger.GREETING_OK)


def test_no_commands_before_greeting() -> None:
    with pytest.raises(ConfigurationError, match="GREETING"):
        Pop3Protocol().user("alice")


@pytest.mark.parametrize("verb", ["stat", "list", "uidl", "noop", "rset"])
def test_transaction_commands_illegal_in_authorization(verb: str) -> None:
    proto = authorization()
    with pytest.raises(ConfigurationError, match="not allowed in the AUTHORIZATION state"):
        cast(Callable[[], bytes], getattr(proto, verb))()


def test_authorization_commands_illegal_in_transaction() -> None:
    proto = transaction()
    calls: list[Callable[[], bytes]] = [
        lambda: proto.user("x"),
        lambda: proto.pass_("x"),
        proto.stls,
    ]
    for call in calls:
        with pytest.raises(ConfigurationError, match="TRANSACTION"):
            call()
    with pytest.raises(ConfigurationError):
        proto.auth(XOAuth2("u", "t"))


def test_failed_login_stays_in_authorization() -> None:
    proto = authorization()
    proto.user("alice")
    proto.pass_("wrong")
    events = drain(proto, b"+OK\r\n-ERR [AUTH] invalid password\r\n")
    assert events[1] == Reply("PASS", False, "[AUTH] invalid password", "AUTH")
    assert state(proto) is State.AUTHORIZATION
    proto.user("alice")  # may try again


@pytest.mark.parametrize("verb", sorted(BARRIER_COMMANDS))
def test_nothing_is_pipelined_behind_a_barrier(verb: str) -> None:
    proto = authorization(b"+OK <1.2@h>\r\n")
    {
        "PASS": lambda: proto.pass_("x"),
        "APOP": lambda: proto.apop("u", "s"),
        "AUTH": lambda: proto.auth(XOAuth2("u", "t")),
        "STLS": proto.stls,
        "QUIT": proto.quit,
    }[verb]()
    with pytest.raises(ConfigurationError, match=f"reply to {verb}"):
        proto.capa()


def test_user_and_pass_may_be_pipelined() -> None:
    proto = authorization()
    assert proto.capa() + proto.user("a") + proto.pass_("b") == b"CAPA\r\nUSER a\r\nPASS b\r\n"
    assert proto.pending_responses == 3


def test_quit_from_transaction_goes_through_update() -> None:
    proto = transaction()
    proto.quit()
    assert state(proto) is State.UPDATE
    proto.receive_data(b"+OK dewey POP3 server signing off (maildrop empty)\r\n")
    assert proto.next_event() == Reply(
        "QUIT", True, "dewey POP3 server signing off (maildrop empty)"
    )
    assert state(proto) is State.CLOSED
    assert proto.next_event() is NEED_DATA
    proto.receive_data(b"")
    assert proto.next_event() == ConnectionClosed()
    assert state(proto) is State.CLOSED


def test_quit_from_authorization_closes_without_update() -> None:
    proto = authorization()
    proto.quit()
    assert state(proto) is State.AUTHORIZATION
    assert drain(proto, b"+OK bye\r\n") == [Reply("QUIT", True, "bye")]
    assert state(proto) is State.CLOSED


def test_quit_error_still_closes() -> None:
    proto = transaction()
    proto.quit()
    assert drain(proto, b"-ERR some deleted messages not removed\r\n") == [
        Reply("QUIT", False, "some deleted messages not removed")
    ]
    assert state(proto) is State.CLOSED


# -- data commands ------------------------------------------------------------------------


def test_stat(feed: Callable[[Pop3Protocol, bytes], list[Event]]) -> None:
    proto = transaction()
    proto.stat()
    assert feed(proto, b"+OK 2 320\r\n") == [Reply("STAT", True, "2 320"), Stat(2, 320)]


@pytest.mark.parametrize("text", [b"+OK", b"+OK two 320", b"+OK 2", b"+OK -2 3", b"+OK 2 \xd9\xa3"])
def test_malformed_stat(text: bytes) -> None:
    proto = transaction()
    proto.stat()
    proto.receive_data(text + b"\r\n")
    assert isinstance(proto.next_event(), Reply)
    with pytest.raises(ProtocolError):
        proto.next_event()


def test_list_all(feed: Callable[[Pop3Protocol, bytes], list[Event]]) -> None:
    proto = transaction()
    proto.list()
    wire = b"+OK 2 messages (320 octets)\r\n1 120\r\n2 200 extra info\r\n.\r\n"
    assert feed(proto, wire) == [
        Reply("LIST", True, "2 messages (320 octets)"),
        Listing(((1, 120), (2, 200))),
    ]


def test_list_empty_and_one(feed: Callable[[Pop3Protocol, bytes], list[Event]]) -> None:
    proto = transaction()
    proto.list()
    proto.list(2)
    proto.list(9)
    assert feed(proto, b"+OK\r\n.\r\n+OK 2 200\r\n-ERR no such message\r\n") == [
        Reply("LIST", True, ""),
        Listing(()),
        Reply("LIST", True, "2 200"),
        Listing(((2, 200),)),
        Reply("LIST", False, "no such message"),
    ]


def test_malformed_listing_line() -> None:
    proto = transaction()
    proto.list()
    proto.receive_data(b"+OK\r\n1\r\n.\r\n")
    proto.next_event()
    with pytest.raises(ProtocolError, match="scan listing"):
        proto.next_event()


def test_uidl(feed: Callable[[Pop3Protocol, bytes], list[Event]]) -> None:
    proto = transaction()
    proto.uidl()
    proto.uidl(2)
    wire = (
        b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n"
        b"+OK 2 QhdPYR:00WBw1Ph7x7\r\n"
    )
    assert feed(proto, wire) == [
        Reply("UIDL", True, ""),
        UidListing(((1, "whqtswO00WBw418f9t5JxYwZ"), (2, "QhdPYR:00WBw1Ph7x7"))),
        Reply("UIDL", True, "2 QhdPYR:00WBw1Ph7x7"),
        UidListing(((2, "QhdPYR:00WBw1Ph7x7"),)),
    ]


@pytest.mark.parametrize("line", [b"1", b"x abc", b"1 caf\xc3\xa9"])
def test_malformed_uidl_line(line: bytes) -> None:
    proto = transaction()
    proto.uidl()
    proto.receive_data(b"+OK\r\n" + line + b"\r\n.\r\n")
    proto.next_event()
    with pytest.raises(ProtocolError):
        proto.next_event()


def test_capa(feed: Callable[[Pop3Protocol, bytes], list[Event]]) -> None:
    proto = authorization()
    proto.capa()
    wire = (
        b"+OK Capability list follows\r\n"
        b"TOP\r\nUSER\r\nsasl PLAIN xoauth2\r\nSASL OAUTHBEARER\r\nRESP-CODES\r\n"
        b"PIPELINING\r\nSTLS\r\nUIDL\r\nIMPLEMENTATION Dovecot\r\nEXPIRE NEVER\r\n.\r\n"
    )
    events = feed(proto, wire)
    assert events[0] == Reply("CAPA", True, "Capability list follows")
    caps = events[1]
    assert isinstance(caps, Capabilities)
    assert caps.capabilities == {
        "TOP": (),
        "USER": (),
        "SASL": ("PLAIN", "xoauth2", "OAUTHBEARER"),
        "RESP-CODES": (),
        "PIPELINING": (),
        "STLS": (),
        "UIDL": (),
        "IMPLEMENTATION": ("Dovecot",),
        "EXPIRE": ("NEVER",),
    }
    assert caps.sasl_mechanisms == ("PLAIN", "XOAUTH2", "OAUTHBEARER")
    assert "pipelining" in caps
    assert "STARTTLS" not in caps


def test_capa_not_supported() -> None:
    proto = authorization()
    proto.capa()
    assert drain(proto, b"-ERR unknown command\r\n") == [Reply("CAPA", False, "unknown command")]


RFC_MESSAGE = (
    b"From: alice@example.com\r\nSubject: dots\r\n\r\n"
    b".starts with a dot\r\n..two dots\r\n.\r\nend \xff\xfe 8-bit\r\n"
)


@pytest.mark.parametrize("verb", ["RETR", "TOP"])
def test_retr_streams_unstuffed_content(
    verb: str, feed: Callable[[Pop3Protocol, bytes], list[Event]]
) -> None:
    proto = transaction()
    proto.retr(1) if verb == "RETR" else proto.top(1, 5)
    events = feed(proto, b"+OK 120 octets\r\n" + dot_stuff(RFC_MESSAGE))
    assert events == [Reply(verb, True, "120 octets"), MessageData(RFC_MESSAGE), MessageEnd()]
    assert proto.pending_responses == 0


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b".x\r\n.\r\n", b".x\r\n"),  # unstuffed dot kept, as poplib does
        (b"a\r\n.x\r\n.\r\n", b"a\r\n.x\r\n"),
        (b"a\r\n.\rb\r\n.\r\n", b"a\r\n.\rb\r\n"),
        (b".\rb\r\n.\r\n", b".\rb\r\n"),
        (b"a\n.\r\n\r\n.\r\n", b"a\n.\r\n\r\n"),  # bare LF is not a line end
        (b"\r\r\n.\r\n", b"\r\r\n"),
    ],
)
def test_body_edge_cases(
    wire: bytes, content: bytes, feed: Callable[[Pop3Protocol, bytes], list[Event]]
) -> None:
    proto = transaction()
    proto.retr(1)
    events = feed(proto, b"+OK\r\n" + wire)
    data = b"".join(e.data for e in events if isinstance(e, MessageData))
    assert data == content
    assert events[-1] == MessageEnd()


def test_body_every_two_way_split() -> None:
    wire = b"+OK\r\n" + dot_stuff(b".a\r\n..\r\n\r\n.\r\nx\r\r\n\r\n.\r") + b"+OK\r\n"
    expected = b".a\r\n..\r\n\r\n.\r\nx\r\r\n\r\n.\r\r\n"
    for cut in range(len(wire) + 1):
        proto = transaction()
        proto.retr(1)
        proto.noop()
        events = drain(proto, wire[:cut]) + drain(proto, wire[cut:])
        events = merge(events)
        assert events == [
            Reply("RETR", True, ""),
            MessageData(expected),
            MessageEnd(),
            Reply("NOOP", True, ""),
        ], cut


def test_retr_error_has_no_body() -> None:
    proto = transaction()
    proto.retr(9)
    proto.stat()
    assert drain(proto, b"-ERR no such message\r\n+OK 1 5\r\n") == [
        Reply("RETR", False, "no such message"),
        Reply("STAT", True, "1 5"),
        Stat(1, 5),
    ]


def test_pipelined_retr_matches_responses_in_order(
    feed: Callable[[Pop3Protocol, bytes], list[Event]],
) -> None:
    proto = transaction()
    messages = [b"one\r\n", b".two\r\n", b"", b"four" * 1000 + b"\r\n"]
    wire = b"".join(proto.retr(n) for n in range(1, 5)) + proto.dele(1) + proto.quit()
    assert wire.count(b"\r\n") == 6
    assert proto.pending_responses == 6
    response = b"".join(b"+OK\r\n" + dot_stuff(m) for m in messages) + b"+OK\r\n+OK bye\r\n"
    events = feed(proto, response)
    expected: list[Event] = []
    for m in messages:
        expected += [Reply("RETR", True, "")]
        expected += [MessageData(m)] if m else []
        expected += [MessageEnd()]
    assert events == [*expected, Reply("DELE", True, ""), Reply("QUIT", True, "bye")]
    assert state(proto) is State.CLOSED


def test_big_message_is_streamed_with_bounded_buffer() -> None:
    proto = transaction()
    proto.retr(1)
    content = (b"x" * 998 + b"\r\n.dot line\r\n") * 2000  # ~2 MB
    wire = b"+OK\r\n" + dot_stuff(content)
    received = bytearray()
    for i in range(0, len(wire), 65536):
        proto.receive_data(wire[i : i + 65536])
        while (event := proto.next_event()) is not NEED_DATA:
            if isinstance(event, MessageData):
                received += event.data
            elif isinstance(event, MessageEnd):
                break
        assert proto.buffered_bytes < 16
    assert bytes(received) == content


def test_long_body_line_is_not_limited() -> None:
    proto = transaction()
    proto.retr(1)
    content = b"y" * (4 * MAX_LINE) + b"\r\n"
    assert drain(proto, b"+OK\r\n" + dot_stuff(content))[1] == MessageData(content)


# -- dot stuffing round trip -------------------------------------------------------------


def test_dot_stuff() -> None:
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b"a") == b"a\r\n.\r\n"
    assert dot_stuff(b".a\r\n.\r\n") == b"..a\r\n..\r\n.\r\n"
    assert dot_stuff(b"a\n.b") == b"a\n.b\r\n.\r\n"


def normalized(content: bytes) -> bytes:
    """What a reader gets back: servers end a non-empty message with CRLF."""
    return content if not content or content.endswith(b"\r\n") else content + b"\r\n"


content_strategy = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from([b".", b"..", b"\r\n", b"\r", b"\n", b".\r\n", b"a", b"\r\n.", b"\xff"]),
        max_size=40,
    ).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(content=content_strategy, data=st.data())
def test_unstuff_of_stuff_is_identity_in_any_chunking(content: bytes, data: st.DataObject) -> None:
    wire = b"+OK\r\n" + dot_stuff(content) + b"+OK\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    proto = transaction()
    proto.retr(1)
    proto.noop()
    events: list[Event] = []
    for lo, hi in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        events += drain(proto, wire[lo:hi])
    events = merge(events)
    body = b"".join(e.data for e in events if isinstance(e, MessageData))
    assert body == normalized(content)
    assert events[-2:] == [MessageEnd(), Reply("NOOP", True, "")]


# -- STLS ---------------------------------------------------------------------------------


def test_stls_discards_bytes_received_before_the_handshake() -> None:
    proto = authorization()
    proto.stls()
    proto.receive_data(b"+OK Begin TLS negotiation\r\n+OK injected\r\n")
    assert proto.next_event() == Reply("STLS", True, "Begin TLS negotiation")
    assert state(proto) is State.STARTTLS
    with pytest.raises(ConfigurationError, match="start_tls"):
        proto.next_event()
    with pytest.raises(ConfigurationError):
        proto.capa()
    assert proto.start_tls() == b"+OK injected\r\n"
    assert proto.buffered_bytes == 0
    assert state(proto) is State.AUTHORIZATION
    assert proto.capa() == b"CAPA\r\n"
    with pytest.raises(ConfigurationError, match="already"):
        proto.stls()


def test_stls_clean_and_refused() -> None:
    proto = authorization()
    proto.stls()
    assert drain(proto, b"+OK\r\n") == [Reply("STLS", True, "")]
    assert proto.start_tls() == b""
    with pytest.raises(ConfigurationError):
        proto.start_tls()
    refused = authorization()
    refused.stls()
    assert drain(refused, b"-ERR not now\r\n") == [Reply("STLS", False, "not now")]
    assert state(refused) is State.AUTHORIZATION


# -- AUTH ---------------------------------------------------------------------------------


def test_auth_initial_response_fits(feed: Callable[[Pop3Protocol, bytes], list[Event]]) -> None:
    proto = authorization()
    mech = XOAuth2("user@example.com", "ya29.short")
    line = proto.auth(mech)
    assert line == b"AUTH XOAUTH2 " + mech.initial_response_b64() + b"\r\n"
    assert feed(proto, b"+OK Logged in.\r\n") == [Reply("AUTH", True, "Logged in.")]
    assert state(proto) is State.TRANSACTION


def test_auth_initial_response_boundary() -> None:
    prefix_and_crlf = len("AUTH XOAUTH2 \r\n")
    for extra, one_line in ((0, True), (1, False)):
        # base64 grows in steps of 4, so search a token that lands exactly on the limit
        for token_len in range(1, 400):
            mech = XOAuth2("u", "t" * token_len)
            size = prefix_and_crlf + len(mech.initial_response_b64())
            if size == POP3_MAX_AUTH_LINE + (4 if extra else 0):
                break
        else:  # pragma: no cover
            raise AssertionError("no token length hits the boundary")
        line = authorization().auth(mech)
        assert (line.count(b" ") == 2) is one_line
        assert len(line) <= POP3_MAX_AUTH_LINE


@pytest.mark.parametrize("prompt", [b"+ \r\n", b"+\r\n"])
def test_auth_two_step_for_a_long_token(
    prompt: bytes, feed: Callable[[Pop3Protocol, bytes], list[Event]]
) -> None:
    proto = authorization()
    mech = OAuthBearer("user@contoso.com", "eyJ0" * 400, host="outlook.office365.com", port=995)
    assert proto.auth(mech) == b"AUTH OAUTHBEARER\r\n"
    assert drain(proto, prompt) == [AuthChallenge(b"", None)]
    with pytest.raises(ConfigurationError, match="auth_continue"):
        proto.next_event()
    answer = proto.auth_continue()
    assert answer == mech.initial_response_b64() + b"\r\n"
    assert len(answer) > POP3_MAX_AUTH_LINE
    with pytest.raises(ConfigurationError, match="no AUTH challenge"):
        proto.auth_continue()
    assert feed(proto, b"+OK\r\n") == [Reply("AUTH", True, "")]
    assert state(proto) is State.TRANSACTION


@pytest.mark.parametrize(
    ("mech", "answer"),
    [
        (XOAuth2("user@gmail.com", "ya29.expired"), b"\r\n"),
        (
            OAuthBearer("user@gmail.com", "ya29.expired", host="pop.gmail.com", port=995),
            b"AQ==\r\n",
        ),
    ],
)
def test_auth_error_challenge_then_err(
    mech: XOAuth2 | OAuthBearer,
    answer: bytes,
    feed: Callable[[Pop3Protocol, bytes], list[Event]],
) -> None:
    proto = authorization()
    proto.auth(mech)
    events = drain(proto, b"+ " + error_challenge() + b"\r\n")
    assert len(events) == 1
    challenge = events[0]
    assert isinstance(challenge, AuthChallenge)
    assert challenge.raw == error_challenge()
    assert challenge.challenge is not None
    assert challenge.challenge.status == "401"
    assert challenge.challenge.scope == "https://mail.google.com/"
    assert proto.auth_continue() == answer
    assert feed(proto, b"-ERR [AUTH] Invalid credentials.\r\n") == [
        Reply("AUTH", False, "[AUTH] Invalid credentials.", "AUTH")
    ]
    assert state(proto) is State.AUTHORIZATION
    proto.auth(mech)  # the driver may retry once with a fresh token


def test_auth_two_step_then_error_challenge() -> None:
    proto = authorization()
    mech = XOAuth2("u@contoso.com", "x" * 400)
    proto.auth(mech)
    assert drain(proto, b"+ \r\n") == [AuthChallenge(b"", None)]
    proto.auth_continue()
    event = drain(proto, b"+ " + error_challenge("invalid_token") + b"\r\n")[0]
    assert isinstance(event, AuthChallenge)
    assert event.challenge is not None
    assert event.challenge.status == "invalid_token"
    assert proto.auth_continue() == b"\r\n"
    assert drain(proto, b"-ERR Authentication failure\r\n")[0] == Reply(
        "AUTH", False, "Authentication failure"
    )


def test_auth_immediate_err_office365() -> None:
    proto = authorization()
    proto.auth(XOAuth2("u@contoso.com", "short"))
    assert drain(proto, b"-ERR Authentication failure: unknown user name or bad password.\r\n") == [
        Reply("AUTH", False, "Authentication failure: unknown user name or bad password.")
    ]
    assert state(proto) is State.AUTHORIZATION


def test_auth_second_error_challenge_is_a_protocol_error() -> None:
    proto = authorization()
    proto.auth(XOAuth2("u", "t"))
    drain(proto, b"+ " + error_challenge() + b"\r\n")
    proto.auth_continue()
    proto.receive_data(b"+ " + error_challenge() + b"\r\n")
    with pytest.raises(ProtocolError, match="another AUTH challenge"):
        proto.next_event()
    assert state(proto) is State.ERROR


def test_auth_challenge_that_is_not_base64_json() -> None:
    proto = authorization()
    proto.auth(XOAuth2("u", "t"))
    event = drain(proto, b"+ not base64!\r\n")[0]
    assert isinstance(event, AuthChallenge)
    assert event.challenge is not None
    assert event.challenge.status is None


def test_plus_line_outside_auth_is_malformed() -> None:
    proto = transaction()
    proto.noop()
    proto.receive_data(b"+ \r\n")
    with pytest.raises(ProtocolError):
        proto.next_event()


# -- limits and connection end -----------------------------------------------------------


def test_max_line_for_status_lines() -> None:
    ok_line = b"+OK " + b"x" * (MAX_LINE - 6) + b"\r\n"
    assert len(ok_line) == MAX_LINE
    proto = transaction()
    proto.noop()
    assert drain(proto, ok_line) == [Reply("NOOP", True, ok_line[4:-2].decode())]
    proto.noop()
    proto.receive_data(b"+OK " + b"x" * (MAX_LINE - 5) + b"\r\n")
    with pytest.raises(LimitExceededError, match="MAX_LINE"):
        proto.next_event()
    assert state(proto) is State.ERROR


def test_max_line_without_line_end() -> None:
    proto = transaction()
    proto.noop()
    proto.receive_data(b"+OK " + b"x" * (MAX_LINE - 5))
    assert proto.next_event() is NEED_DATA
    proto.receive_data(b"x")
    with pytest.raises(LimitExceededError):
        proto.next_event()


def test_max_line_for_listing_lines() -> None:
    proto = transaction()
    proto.uidl()
    proto.receive_data(b"+OK\r\n1 " + b"u" * MAX_LINE + b"\r\n.\r\n")
    proto.next_event()
    with pytest.raises(LimitExceededError, match="MAX_LINE"):
        proto.next_event()


def test_max_listing_size() -> None:
    proto = authorization()
    proto.capa()
    proto.receive_data(b"+OK\r\n")
    proto.next_event()
    line = b"X-JUNK " + b"j" * (MAX_LINE - 9) + b"\r\n"
    chunk = line * (1024 * 1024 // len(line))
    with pytest.raises(LimitExceededError, match="MAX_LISTING_SIZE"):
        for _ in range(MAX_LISTING_SIZE // len(chunk) + 2):
            proto.receive_data(chunk)
            assert proto.next_event() is NEED_DATA


def test_listing_just_under_the_size_limit_is_accepted() -> None:
    proto = transaction()
    proto.list()
    lines = b"1 1\r\n" * 1000
    assert drain(proto, b"+OK\r\n" + lines + b".\r\n")[1] == Listing(((1, 1),) * 1000)


def test_eof_mid_response_is_connection_lost() -> None:
    proto = transaction()
    proto.retr(1)
    proto.receive_data(b"+OK\r\npartial")
    assert isinstance(proto.next_event(), Reply)
    assert proto.next_event() == MessageData(b"partial")
    proto.receive_data(b"")
    with pytest.raises(ConnectionLostError, match="RETR"):
        proto.next_event()
    assert state(proto) is State.CLOSED
    with pytest.raises(ConfigurationError):
        proto.receive_data(b"more")


def test_eof_before_greeting() -> None:
    proto = Pop3Protocol()
    proto.receive_data(b"")
    with pytest.raises(ConnectionLostError):
        proto.next_event()


def test_eof_while_idle_is_an_event() -> None:
    proto = transaction()
    proto.receive_data(b"")
    assert proto.next_event() == ConnectionClosed()
    assert state(proto) is State.CLOSED


def test_unsolicited_data_is_a_protocol_error() -> None:
    proto = transaction()
    proto.receive_data(b"-ERR autologout\r\n")
    with pytest.raises(ProtocolError, match="unsolicited"):
        proto.next_event()


def test_events_have_readable_reprs() -> None:
    assert repr(MessageData(b"x" * 70000)) == "MessageData(<70000 bytes>)"
    assert "token" not in repr(AuthChallenge(b"", None))


# -- cross-check against the stdlib poplib ----------------------------------------------

POPLIB_MESSAGES = [
    b"Subject: plain\r\n\r\nhello\r\n",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n...\r\nmid.dle\r\n",
    b"Subject: 8bit\r\n\r\n\xe9\xe8\xff\x00\x80 bytes\r\n",
    b"Subject: no final newline\r\n\r\nlast line",
    b"",
    b"Subject: big\r\n\r\n"
    + b"".join(
        b"%06d " % i + b"z" * 70 + (b"\r\n." if i % 50 == 0 else b"\r\n") for i in range(13000)
    ),
]


class FakePop3Server:
    """Serves POPLIB_MESSAGES to one client; records the RETR responses it sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.sent: dict[int, bytes] = {}
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as rfile:
            conn.sendall(b"+OK fake ready\r\n")
            for raw in rfile:
                verb, *args = raw.decode().split()
                if verb == "RETR":
                    n = int(args[0])
                    self.sent[n] = b"+OK\r\n" + dot_stuff(POPLIB_MESSAGES[n - 1])
                    conn.sendall(self.sent[n])
                elif verb == "QUIT":
                    conn.sendall(b"+OK bye\r\n")
                    return
                else:
                    conn.sendall(b"+OK\r\n")

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def fake_server() -> Iterator[FakePop3Server]:
    server = FakePop3Server()
    yield server
    server.close()


def test_matches_poplib(fake_server: FakePop3Server) -> None:
    client = poplib.POP3("127.0.0.1", fake_server.port, timeout=5)
    client.user("u")
    client.pass_("p")
    from_poplib = [client.retr(n)[1] for n in range(1, len(POPLIB_MESSAGES) + 1)]
    client.quit()
    fake_server.close()

    proto = transaction()
    for n in range(1, len(POPLIB_MESSAGES) + 1):
        proto.retr(n)
    wire = b"".join(fake_server.sent[n] for n in range(1, len(POPLIB_MESSAGES) + 1))
    events = drain(proto, wire)
    ours = [e.data for e in events if isinstance(e, MessageData)]
    ours_by_message: list[bytes] = []
    for event in events:
        if isinstance(event, Reply):
            ours_by_message.append(b"")
        elif isinstance(event, MessageData):
            ours_by_message[-1] += event.data
    assert len(ours) == len(POPLIB_MESSAGES) - 1  # the empty message has no data
    for lines, mine, original in zip(from_poplib, ours_by_message, POPLIB_MESSAGES, strict=True):
        # poplib strips each line's CRLF; we keep the bytes as sent.
        assert b"".join(line + b"\r\n" for line in lines) == mine
        assert mine == normalized(original)


# -- pipelined RETR ---------------------------------------------------------------------


def test_retr_many_is_one_write_and_replies_come_in_order(
    feed: Callable[[Pop3Protocol, bytes], list[Event]],
) -> None:
    proto = transaction()
    assert proto.retr_many([2, 1, 3]) == b"RETR 2\r\nRETR 1\r\nRETR 3\r\n"
    assert proto.pending_responses == 3
    wire = b"".join(b"+OK\r\nmessage %d\r\n.\r\n" % n for n in (2, 1, 3))
    events = feed(proto, wire)
    bodies = [e.data for e in events if isinstance(e, MessageData)]
    assert bodies == [b"message 2\r\n", b"message 1\r\n", b"message 3\r\n"]
    assert sum(isinstance(e, MessageEnd) for e in events) == 3


@pytest.mark.parametrize("bad", [[1, 0], [1, -2], [True]])
def test_retr_many_refuses_a_bad_number_before_queueing_any(bad: list[int]) -> None:
    proto = transaction()
    with pytest.raises(ConfigurationError, match="message numbers start at 1"):
        proto.retr_many(bad)
    assert proto.pending_responses == 0


def test_dot_scan_gives_way_for_the_session_when_dots_are_common() -> None:
    proto = transaction()
    dotted = b"".join(b"a.b.c line %d with e.g. example.test\r\n" % i for i in range(20))
    proto.retr_many([1, 2])
    drain(proto, b"+OK\r\n" + dotted + b".\r\n")
    assert proto._scan_dots is False  # many dots not at a line start: CRLF-dot search
    events = drain(proto, b"+OK\r\n..stuffed\r\n" + dotted + b".\r\n")
    assert [e.data for e in events if isinstance(e, MessageData)] == [b".stuffed\r\n" + dotted]


# -- next_message: a small RETR/TOP reply taken whole ------------------------------------


def messages_of(proto: Pop3Protocol, data: bytes, pieces: list[int]) -> list[object]:
    """Feed ``data`` cut at ``pieces`` and collect what next_message() gives until no
    response is pending: whole messages as bytes, anything else as its events."""
    out: list[object] = []
    for lo, hi in zip([0, *pieces], [*pieces, len(data)], strict=True):
        if hi > lo:
            proto.receive_data(data[lo:hi])
        while proto.pending_responses:
            got = proto.next_message()
            if got is NEED_DATA:
                break
            out.append(got)
    return out


@pytest.mark.parametrize("mode", FEED_MODES)
@pytest.mark.parametrize("verb", ["RETR", "TOP"])
def test_next_message_gives_a_small_reply_whole(mode: str, verb: str) -> None:
    proto = transaction()
    proto.retr(1) if verb == "RETR" else proto.top(1, 5)
    wire = b"+OK 120 octets\r\n" + dot_stuff(RFC_MESSAGE)
    if mode == "trailing":
        wire += TRAILING
    cuts = list(range(1, len(wire))) if mode == "bytewise" else []
    assert messages_of(proto, wire, cuts) == [RFC_MESSAGE]
    assert proto.pending_responses == 0
    assert proto.buffered_bytes == (len(TRAILING) if mode == "trailing" else 0)


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b".x\r\n.\r\n", b".x\r\n"),  # unstuffed dot kept, as poplib does
        (b"a\r\n.x\r\n..\r\n...y\r\n.\r\n", b"a\r\n.x\r\n.\r\n..y\r\n"),
        (b"a\r\n.\rb\r\n.\r\n", b"a\r\n.\rb\r\n"),
        (b"a\n.\r\n\r\n.\r\n", b"a\n.\r\n\r\n"),  # bare LF is not a line end
    ],
)
def test_next_message_unstuffs_as_the_event_path_does(wire: bytes, content: bytes) -> None:
    for cuts in ([], list(range(1, len(wire) + 5))):
        proto = transaction()
        proto.retr(1)
        assert messages_of(proto, b"+OK\r\n" + wire, cuts) == [content]


def test_next_message_then_the_next_reply_in_a_pipeline() -> None:
    proto = transaction()
    proto.retr_many([1, 2])
    proto.noop()
    wire = b"+OK\r\n" + dot_stuff(b"one\r\n") + b"+OK\r\n..two\r\n.\r\n+OK done\r\n"
    assert messages_of(proto, wire, []) == [b"one\r\n", b".two\r\n", Reply("NOOP", True, "done")]
    assert proto.pending_responses == 0 and proto.buffered_bytes == 0


def test_next_message_gives_the_events_of_a_refusal() -> None:
    proto = transaction()
    proto.retr(9)
    proto.stat()
    assert messages_of(proto, b"-ERR no such message\r\n+OK 1 5\r\n", []) == [
        Reply("RETR", False, "no such message"),
        Reply("STAT", True, "1 5"),
        Stat(1, 5),
    ]


def test_next_message_streams_a_reply_longer_than_the_whole_message_bound() -> None:
    proto = transaction()
    proto.retr(1)
    content = b"z" * 70 + b"\r\n"
    content *= WHOLE_MESSAGE_MAX // len(content) + 1
    got = merge(cast(list[Event], messages_of(proto, b"+OK\r\n" + dot_stuff(content), [1000])))
    assert got == [Reply("RETR", True, ""), MessageData(content), MessageEnd()]
    # A reply that fits is waited for whole, however it is cut: no event before it.
    proto.retr(2)
    small = b"+OK\r\n" + dot_stuff(content[: WHOLE_MESSAGE_MAX // 2])
    proto.receive_data(small[:-1])
    assert proto.next_message() is NEED_DATA
    assert proto.buffered_bytes == len(small) - 1
    proto.receive_data(small[-1:])
    assert proto.next_message() == normalized(content[: WHOLE_MESSAGE_MAX // 2])


def test_next_message_leaves_errors_to_the_event_path() -> None:
    proto = transaction()
    proto.retr(1)
    proto.receive_data(b"+OKAY\r\n")
    with pytest.raises(ProtocolError):
        proto.next_message()
    proto = transaction()
    proto.retr(1)
    proto.receive_data(b"+OK " + b"x" * MAX_LINE)
    with pytest.raises(LimitExceededError):
        proto.next_message()
    proto = transaction()
    proto.retr(1)
    proto.receive_data(b"+OK\r\npart of a messa")
    assert proto.next_message() is NEED_DATA
    proto.receive_data(b"")
    with pytest.raises(ConnectionLostError):
        while proto.next_message() is not NEED_DATA:
            pass


def test_next_message_is_next_event_for_other_replies() -> None:
    proto = transaction()
    proto.stat()
    assert messages_of(proto, b"+OK 2 320\r\n", []) == [Reply("STAT", True, "2 320"), Stat(2, 320)]


@settings(max_examples=300, deadline=None)
@given(content=content_strategy, data=st.data())
def test_next_message_matches_the_event_path_in_any_chunking(
    content: bytes, data: st.DataObject
) -> None:
    wire = b"+OK\r\n" + dot_stuff(content) + b"+OK\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    proto = transaction()
    proto.retr(1)
    proto.noop()
    assert messages_of(proto, wire, cuts) == [normalized(content), Reply("NOOP", True, "")]
