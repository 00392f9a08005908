"""The sans-IO pieces of pipelined SMTP: the reply parser, line endings, dot-stuffing.

Fed whole, byte by byte and with trailing data; checked against aiosmtplib's own
formatter where it has one (an independent implementation).
"""

from __future__ import annotations

import random

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from mailoauth.errors import LimitExceededError, ProtocolError
from mailoauth.smtp.replies import (
    MAX_LINE_LENGTH,
    MAX_REPLY_LENGTH,
    Reply,
    ReplyParser,
    canonical_lines,
    dot_stuffed,
)

GROUP = (
    b"250 2.1.0 Ok\r\n"
    b"550-5.1.1 no such user\r\n550 5.1.1 try another\r\n"
    b"250 2.1.5 Ok\r\n"
    b"250 2.0.0 Ok: queued as ABC\r\n"
)
EXPECTED = [
    Reply(250, "2.1.0 Ok"),
    Reply(550, "5.1.1 no such user\n5.1.1 try another"),
    Reply(250, "2.1.5 Ok"),
    Reply(250, "2.0.0 Ok: queued as ABC"),
]


def feed_in(pieces: list[bytes]) -> list[Reply]:
    parser = ReplyParser()
    out: list[Reply] = []
    for piece in pieces:
        out += parser.feed(piece)
    return out


def test_a_pipelined_group_fed_whole() -> None:
    assert ReplyParser().feed(GROUP) == EXPECTED


def test_fed_byte_by_byte() -> None:
    assert feed_in([GROUP[i : i + 1] for i in range(len(GROUP))]) == EXPECTED


def test_random_splits() -> None:
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(GROUP)), rng.randint(1, 8)))
        pieces = [GROUP[a:b] for a, b in zip([0, *cuts], [*cuts, len(GROUP)], strict=True)]
        assert feed_in(pieces) == EXPECTED


def test_trailing_partial_reply_waits_for_its_end() -> None:
    parser = ReplyParser()
    assert parser.feed(GROUP + b"250-more") == EXPECTED
    assert parser.feed(b" text\r\n250 last") == []
    assert parser.feed(b"\r\n") == [Reply(250, "more text\nlast")]


def test_lf_only_and_bare_code_lines() -> None:
    assert ReplyParser().feed(b"250 ok\n354\r\n") == [Reply(250, "ok"), Reply(354, "")]


@pytest.mark.parametrize("line", [b"hello\r\n", b"25 x\r\n", b"\r\n", b"2x0 ok\r\n"])
def test_a_line_that_is_not_a_reply(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed SMTP reply line"):
        ReplyParser().feed(b"250 ok\r\n" + line)


def test_line_and_reply_limits() -> None:
    with pytest.raises(LimitExceededError, match="too long"):
        ReplyParser().feed(b"250 " + b"x" * MAX_LINE_LENGTH + b"\r\n")
    with pytest.raises(LimitExceededError, match="too long"):  # no line end at all
        ReplyParser().feed(b"250 " + b"x" * MAX_LINE_LENGTH)
    endless = ReplyParser()
    with pytest.raises(LimitExceededError, match="too long"):  # endless continuations
        for _ in range(MAX_REPLY_LENGTH // 100 + 2):
            endless.feed(b"250-" + b"x" * 96 + b"\r\n")


def test_a_reply_just_under_the_limits_is_read() -> None:
    line = b"250-" + b"x" * (MAX_LINE_LENGTH - 6) + b"\r\n"
    assert len(line) == MAX_LINE_LENGTH
    (reply,) = ReplyParser().feed(line * 3 + b"250 end\r\n")
    assert reply.code == 250 and reply.message.endswith("\nend")


SAMPLES = [
    b"",
    b"a",
    b"a\r\nb\r\n",
    b"a\nb\n",
    b"a\rb\r",
    b"a\r\n\r\n.b\r\n..c\n.\r\n",
    b".starts\r\nmid.dle\r\n.\n.",
    b"mixed\r\nends\nhere\r",
    b"\r\r\n\n\r",
]


@pytest.mark.parametrize("message", SAMPLES)
def test_canonical_lines_agrees_with_aiosmtplib(message: bytes) -> None:
    assert canonical_lines(message) == normalize_message_line_endings(message)


def test_canonical_lines_returns_a_canonical_message_as_it_is() -> None:
    message = b"Subject: x\r\n\r\nbody\r\n"
    assert canonical_lines(message) is message


@pytest.mark.parametrize("message", SAMPLES)
def test_dot_stuffing_agrees_with_aiosmtplib(message: bytes) -> None:
    canonical = canonical_lines(message)
    assert dot_stuffed(canonical) == PERIOD_REGEX.sub(b"..", canonical) + b".\r\n"


REPLY_PIECES = st.sampled_from(
    [b"250", b"550", b"354", b"-", b" ", b"ok", b"2.1.0", b"\r\n", b"\n", b"\r", b"\x00", b"x"]
)
reply_bytes = st.one_of(st.binary(max_size=256), st.lists(REPLY_PIECES, max_size=80).map(b"".join))


def parse_all(pieces: list[bytes]) -> list[Reply] | type[Exception]:
    parser = ReplyParser()
    out: list[Reply] = []
    try:
        for piece in pieces:
            out += parser.feed(piece)
    except (ProtocolError, LimitExceededError) as exc:  # the only errors it may raise
        return type(exc)
    return out


@settings(max_examples=500, deadline=None)
@given(reply_bytes, st.lists(st.integers(0, 256), max_size=6))
def test_any_bytes_in_any_pieces_parse_the_same(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert parse_all(pieces) == parse_all([data])
