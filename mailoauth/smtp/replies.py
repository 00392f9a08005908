"""Sans-IO pieces of a pipelined SMTP transaction (RFC 2920, RFC 3030): the reply
parser and the bytes of the envelope and of the message. No I/O, no asyncio.

:class:`ReplyParser` takes bytes as they arrive and yields whole replies, several per
call when the server answers a pipelined group at once; it keeps at most one partial
reply (bounded by :data:`MAX_REPLY_LENGTH`) whatever the server sends.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from mailoauth.errors import LimitExceededError, ProtocolError

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_REPLY_LENGTH",
    "Reply",
    "ReplyParser",
    "canonical_lines",
    "dot_stuffed",
]

#: Longest reply line accepted (aiosmtplib's limit, so that both paths agree).
MAX_LINE_LENGTH: Final = 8192
#: Longest reply accepted, continuation lines included; also the most bytes kept
#: while a reply is incomplete.
MAX_REPLY_LENGTH: Final = MAX_LINE_LENGTH * 4

_LINE_ENDINGS: Final = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT: Final = re.compile(rb"(?m)^\.")


class Reply(NamedTuple):
    """One SMTP reply: its code and its text (continuation lines joined by ``\\n``)."""

    code: int
    message: str


class ReplyParser:
    """Split a byte stream into SMTP replies (RFC 5321 §4.2).

    :meth:`feed` returns the replies completed by the bytes given, in order. Raises
    :class:`~mailoauth.errors.ProtocolError` for a line that is not a reply and
    :class:`~mailoauth.errors.LimitExceededError` for a line or a reply over the
    limits; the parser is unusable after either.
    """

    __slots__ = ("_buffer", "_lines", "_size")

    def __init__(self) -> None:
        self._buffer = b""
        #: The lines of the reply being read (continuations so far).
        self._lines: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[Reply]:
        buffer = self._buffer + data if self._buffer else data
        replies: list[Reply] = []
        start = 0
        end = buffer.find(b"\n")
        while end >= 0:
            line = buffer[start : end + 1]
            start = end + 1
            if len(line) > MAX_LINE_LENGTH:
                raise LimitExceededError(f"reply line too long (over {MAX_LINE_LENGTH} bytes)")
            code = line[:3]
            if not code.isdigit() or len(code) < 3:
                raise ProtocolError(
                    f"malformed SMTP reply line: {line[:80].decode('ascii', 'replace')!r}"
                )
            self._size += len(line)
            if self._size > MAX_REPLY_LENGTH:
                raise LimitExceededError(f"reply too long (over {MAX_REPLY_LENGTH} bytes)")
            text = line[4:].strip(b" \t\r\n")
            if line[3:4] == b"-":
                self._lines.append(text)
            else:
                if self._lines:
                    self._lines.append(text)
                    text = b"\n".join(self._lines)
                    self._lines = []
                self._size = 0
                replies.append(Reply(int(code), text.decode("utf-8", "surrogateescape")))
            end = buffer.find(b"\n", start)
        rest = buffer[start:] if start else buffer
        if len(rest) + self._size > MAX_REPLY_LENGTH or len(rest) > MAX_LINE_LENGTH:
            raise LimitExceededError(f"reply too long (over {MAX_REPLY_LENGTH} bytes)")
        self._buffer = rest
        return replies


def canonical_lines(message: bytes) -> bytes:
    """``message`` with every line ending CRLF and a final CRLF (RFC 5321 §2.3.8), as
    DATA and BDAT transmit it. A message that is already so is returned as it is,
    after three C-speed counts instead of a regular-expression pass."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") == crlf and message.count(b"\r") == crlf and message.endswith(b"\r\n"):
        return message
    message = _LINE_ENDINGS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def dot_stuffed(message: bytes) -> bytes:
    """A canonical message as DATA sends it: a dot doubled at the start of every line
    (RFC 5321 §4.5.2) and the ending ``.`` line added. Only scans with a regular
    expression when a line does start with a dot."""
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    return message + b".\r\n"
