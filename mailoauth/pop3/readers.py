"""How POP3 responses are read: the receive buffer, the readers, and the table that
picks one (sans-IO: no sockets, no asyncio).

A response is a status line and, for some commands after ``+OK``, data. What that data
looks like depends only on the command, so each queued command carries a
:class:`ResponseKind`, and :data:`READERS` maps every kind to the reader of its data,
as h11's ``READERS`` (``h11/_readers.py``) maps (state, framing) to a body reader:

================  =====================================================================
kind              data after ``+OK``
================  =====================================================================
GREETING, STATUS  none (the status line is the whole response)
AUTH              none (``+`` continuations are handled by the protocol's SASL state)
STAT, LIST_ONE,   on the status line itself: ``SingleLineReader`` parses its text
UIDL_ONE
LIST_ALL,         lines up to ``.``: ``ListingReader`` collects them (bounded by
UIDL_ALL, CAPA    :data:`MAX_LISTING_SIZE`) and parses them as a whole
MESSAGE           a dot-stuffed message: ``MessageReader`` streams it
================  =====================================================================

A reader is made per response by its factory, ``factory(verb, status_text)``; its
:meth:`~Reader.read` takes the :class:`ReceiveBuffer` and returns an event or
:data:`~mailoauth.pop3.events.NEED_DATA`, and sets ``done`` once the response is
complete. Readers raise :class:`~mailoauth.errors.ProtocolError` for malformed data
and :class:`~mailoauth.errors.LimitExceededError` past a named limit; they never see
the end of the stream (the protocol turns ``NEED_DATA`` at EOF into
:class:`~mailoauth.errors.ConnectionLostError`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Final, Literal, Protocol

from mailoauth.errors import LimitExceededError, ProtocolError
from mailoauth.pop3.events import (
    NEED_DATA,
    Capabilities,
    Event,
    Listing,
    MessageData,
    MessageEnd,
    NeedData,
    Stat,
    UidListing,
)

__all__ = [
    "MAX_LINE",
    "MAX_LISTING_SIZE",
    "READERS",
    "WHOLE_MESSAGE_MAX",
    "ListingReader",
    "MessageReader",
    "Reader",
    "ReaderFactory",
    "ReceiveBuffer",
    "ResponseKind",
    "SingleLineReader",
    "dot_stuff",
    "response_code",
    "split_status",
    "whole_message",
]

#: Longest status line, listing line or CAPA line accepted, CRLF included. RFC 1939
#: allows 512 octets and RFC 2449 §4 keeps that; servers that append diagnostics go
#: over it, so be lenient but bounded.
MAX_LINE: Final = 8192
#: Largest multi-line CAPA, LIST or UIDL response accepted (lines and CRLFs, not the
#: status line). A UIDL line is at most ~85 octets (a number, a 70-character id), so
#: this is roughly 200,000 messages with the longest ids, more with typical ones --
#: beyond any real maildrop served over POP3 -- while a hostile server can make us hold
#: at most this much (plus the parsed tuples) in memory.
MAX_LISTING_SIZE: Final = 16 * 1024 * 1024
#: Largest RETR/TOP response :func:`whole_message` waits for and returns in one piece
#: (status line, body and terminator); a longer one is streamed chunk by chunk, so
#: that the receive buffer stays bounded by about this much plus one read.
WHOLE_MESSAGE_MAX: Final = 64 * 1024

_CRLF: Final = b"\r\n"
_DOT: Final = 0x2E
_CR: Final = 0x0D
_LF: Final = 0x0A
# RFC 2449 §8: resp-code = "[" resp-level *("/" resp-level) "]"
_RESP_CODE: Final = re.compile(rb"\[([A-Za-z0-9-]+(?:/[A-Za-z0-9-]+)*)\]")
_LINE_DOT: Final = re.compile(rb"\r\n\.")
_OK: Final = b"+OK"
# Dots not at a line start tolerated before the body scan stops using memchr for the
# rest of the session (see unstuff).
_DOT_SCAN_MISSES: Final = 8

_NeedData = Literal[NeedData.NEED_DATA]


def decode(raw: bytes) -> str:
    """``raw`` as UTF-8 with replacement (server text is shown, never trusted)."""
    return raw.decode("utf-8", "replace")


# -- the receive buffer -----------------------------------------------------------------


class ReceiveBuffer:
    """The bytes received and not yet read, and how to scan them.

    A chunk that arrives into an empty buffer is kept as the caller's bytes object, so
    that a message body passes through without copies.
    """

    __slots__ = ("data", "eof", "scan_dots", "scan_from", "whole_from")

    def __init__(self) -> None:
        self.data: bytes | bytearray = b""
        self.eof = False
        # Offset from which to look for the next CRLF, so that a long line fed in small
        # pieces is not rescanned from its start each time.
        self.scan_from = 0
        # Whether a body is scanned with a memchr for "." (see unstuff); once dots turn
        # out to be common, a CRLF "." search for the rest of the session.
        self.scan_dots = True
        # Offset from which whole_message() looks for the terminator again.
        self.whole_from = 0

    def __len__(self) -> int:
        return len(self.data)

    def feed(self, data: bytes) -> None:
        """Append ``data`` (``b""`` marks the end of the stream)."""
        if not data:
            self.eof = True
        elif not self.data and type(data) is bytes:
            self.data = data
        else:
            if type(self.data) is not bytearray:
                self.data = bytearray(self.data)
            self.data += data

    def read_line(self) -> bytes | None:
        """The next line without its CRLF, or ``None`` until a whole line is here.

        Raises :class:`~mailoauth.errors.LimitExceededError` for a line longer than
        :data:`MAX_LINE`, as soon as that many bytes arrived without a CRLF.
        """
        buf = self.data
        i = buf.find(_CRLF, self.scan_from)
        if i < 0:
            if len(buf) >= MAX_LINE:
                raise LimitExceededError(
                    f"a POP3 response line is longer than MAX_LINE ({MAX_LINE} octets)"
                )
            self.scan_from = max(0, len(buf) - 1)
            return None
        if i + 2 > MAX_LINE:
            raise LimitExceededError(
                f"a POP3 response line is longer than MAX_LINE ({MAX_LINE} octets)"
            )
        line = bytes(buf[:i])
        self.consume(i + 2)
        self.scan_from = 0
        return line

    def consume(self, count: int) -> None:
        """Drop the first ``count`` bytes."""
        self.whole_from = 0
        buf = self.data
        if count == len(buf):
            self.data = b""
        elif type(buf) is bytearray:
            # Deleting from the front of a bytearray is O(1) in CPython (it moves a
            # start pointer), so consuming line by line does not copy the rest.
            del buf[:count]
        else:
            self.data = bytearray(buf[count:])

    def discard(self) -> bytes:
        """Empty the buffer; what it held."""
        held = bytes(self.data)
        self.data = b""
        self.scan_from = self.whole_from = 0
        return held


# -- status lines -----------------------------------------------------------------------


def split_status(line: bytes) -> tuple[bool, bytes]:
    """(``+OK``?, the text after the indicator and its space).

    Raises :class:`~mailoauth.errors.ProtocolError` for anything but ``+OK`` / ``-ERR``
    followed by nothing or a space.
    """
    if line.startswith(b"+OK"):
        ok, rest = True, line[3:]
    elif line.startswith(b"-ERR"):
        ok, rest = False, line[4:]
    else:
        raise ProtocolError(f"expected +OK or -ERR from the server, got {decode(line[:80])!r}")
    if rest and rest[:1] != b" ":
        raise ProtocolError(f"malformed POP3 status line: {decode(line[:80])!r}")
    return ok, rest[1:]


def response_code(text: bytes) -> str | None:
    """The RFC 2449 §8 response code at the start of ``text`` (``"SYS/TEMP"``), or None."""
    match = _RESP_CODE.match(text)
    return match.group(1).decode("ascii") if match else None


# -- the readers ------------------------------------------------------------------------


class ResponseKind(enum.Enum):
    """What a queued command's response carries after ``+OK`` (the key of READERS)."""

    GREETING = enum.auto()
    STATUS = enum.auto()  # a status line only
    AUTH = enum.auto()  # a status line, after any number of "+" continuations
    STAT = enum.auto()
    LIST_ONE = enum.auto()
    UIDL_ONE = enum.auto()
    LIST_ALL = enum.auto()
    UIDL_ALL = enum.auto()
    CAPA = enum.auto()
    MESSAGE = enum.auto()


class Reader(Protocol):
    """Reads the data of one response; ``done`` once it returned the last event."""

    done: bool

    def read(self, buf: ReceiveBuffer) -> Event | _NeedData:
        """The next event of this response, or NEED_DATA."""
        ...


#: Makes the reader of one response from its command and its ``+OK`` line's text.
ReaderFactory = Callable[[str, bytes], Reader]


class SingleLineReader:
    """STAT, LIST n, UIDL n: the data is the status line's text, parsed by ``parse``."""

    __slots__ = ("_parse", "_text", "done")

    def __init__(self, parse: Callable[[bytes], Event], verb: str, text: bytes) -> None:
        self._parse = parse
        self._text = text
        self.done = False

    def read(self, buf: ReceiveBuffer) -> Event:
        self.done = True
        return self._parse(self._text)


class ListingReader:
    """LIST, UIDL, CAPA: lines up to ``.`` (dot-unstuffed), parsed as a whole by ``parse``.

    Raises LimitExceededError past :data:`MAX_LISTING_SIZE`.
    """

    __slots__ = ("_lines", "_parse", "_size", "_verb", "done")

    def __init__(self, parse: Callable[[list[bytes]], Event], verb: str, text: bytes) -> None:
        self._parse = parse
        self._verb = verb
        self._lines: list[bytes] = []
        self._size = 0
        self.done = False

    def read(self, buf: ReceiveBuffer) -> Event | _NeedData:
        lines = self._lines
        while True:
            line = buf.read_line()
            if line is None:
                return NEED_DATA
            if line == b".":
                break
            self._size += len(line) + 2
            if self._size > MAX_LISTING_SIZE:
                raise LimitExceededError(
                    f"the {self._verb} response is larger than MAX_LISTING_SIZE "
                    f"({MAX_LISTING_SIZE} octets)"
                )
            lines.append(line[1:] if line.startswith(b"..") else line)
        self._lines = []
        self.done = True
        return self._parse(lines)


class MessageReader:
    """RETR, TOP: the message streamed as :class:`MessageData` chunks, dot-unstuffed,
    then :class:`MessageEnd`."""

    __slots__ = ("_ended", "_line_start", "done")

    def __init__(self, verb: str = "", text: bytes = b"") -> None:
        self._line_start = True
        self._ended = False
        self.done = False

    def read(self, buf: ReceiveBuffer) -> Event | _NeedData:
        if self._ended:
            self.done = True
            return MessageEnd()
        data = buf.data
        n = len(data)
        start = 0
        if self._line_start:
            # The first line has no CRLF before it in the buffer, so check it by hand.
            if n == 0:
                return NEED_DATA
            if data[0] == _DOT:
                if n < 2 or (data[1] == _CR and n < 3):
                    return NEED_DATA
                if data[1] == _DOT:
                    start = 1
                elif data[1] == _CR and data[2] == _LF:
                    buf.consume(3)
                    self.done = True
                    return MessageEnd()
            self._line_start = False
        content, consumed, ended, buf.scan_dots = unstuff(data, start, buf.scan_dots)
        buf.consume(consumed)
        if ended:
            if not content:
                self.done = True
                return MessageEnd()
            self._ended = True
        elif not content:
            return NEED_DATA
        return MessageData(content)


def whole_message(buf: ReceiveBuffer) -> bytes | _NeedData | None:
    """A whole ``+OK`` RETR/TOP response at the start of ``buf``: consumed, and its
    content returned dot-unstuffed (what the :class:`MessageReader` chunks joined give).

    The fast path of a small message: one scan for the lines that begin with a dot
    (the terminator, and any stuffed line) and bytes operations, instead of events.
    :data:`NEED_DATA` while the response may still come whole within
    :data:`WHOLE_MESSAGE_MAX` bytes; ``None`` (nothing consumed) when it will not be
    taken whole -- a ``-ERR``, anything malformed, a longer message, the end of the
    stream: read it with :class:`MessageReader` then, which also raises the errors.
    """
    data = buf.data
    n = len(data)
    if not data.startswith(_OK):
        return NEED_DATA if n < 3 and _OK.startswith(data) and not buf.eof else None
    eol = data.find(_CRLF, 3, MAX_LINE)
    if eol < 0 or (eol > 3 and data[3] != 0x20):  # "+OK" then CRLF or a space
        return NEED_DATA if n < MAX_LINE and eol < 0 and not buf.eof else None
    # Every line of the body follows a CRLF, the first one the status line's. A line
    # that begins with a dot is the terminator (a lone "."), stuffed (".." loses a
    # dot), or kept as it is (a dot the server did not stuff, as MessageReader and
    # poplib keep it). Dots that begin lines are rare: one search finds each.
    stuffed: list[int] = []  # the dots to drop
    search = _LINE_DOT.search
    pos = max(eol, buf.whole_from)
    while (match := search(data, pos, WHOLE_MESSAGE_MAX)) is not None:
        i = match.start()
        if i + 5 > n:  # the line is not all here: look at it again with more bytes
            pos = i
            break
        after = data[i + 3 : i + 5]
        if after == _CRLF:
            return _take(buf, eol + 2, i + 2, stuffed)
        if after[0] == _DOT:
            stuffed.append(i + 2)
        pos = i + 3
    else:
        pos = max(pos, n - 2)  # the next CRLF "." may have begun
    if n >= WHOLE_MESSAGE_MAX or buf.eof:
        return None
    # Resume the scan there with more bytes, unless dots to drop were found before it.
    buf.whole_from = eol if stuffed else pos
    return NEED_DATA


def _take(buf: ReceiveBuffer, start: int, stop: int, stuffed: list[int]) -> bytes:
    """``buf.data[start:stop]`` without the bytes at ``stuffed``, as bytes; consumes up
    to the terminator after ``stop``."""
    data = buf.data
    if stuffed:
        pieces = []
        for dot in stuffed:
            pieces.append(data[start:dot])
            start = dot + 1
        pieces.append(data[start:stop])
        content = b"".join(pieces)
    elif type(data) is bytes:
        content = data[start:stop]
    else:
        with memoryview(data) as view, view[start:stop] as part:
            content = part.tobytes()
    buf.consume(stop + 3)
    return content


# -- parsers of the data ----------------------------------------------------------------


def _parse_int(raw: bytes, what: str) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise ProtocolError(f"malformed {what} from the server: {decode(raw[:80])!r}")
    return int(raw)


def parse_scan(text: bytes, what: str) -> tuple[int, int]:
    """``n size`` (a scan listing or the STAT reply); ProtocolError if malformed."""
    parts = text.split()
    if len(parts) < 2:
        raise ProtocolError(f"malformed {what} from the server: {decode(text[:80])!r}")
    return _parse_int(parts[0], what), _parse_int(parts[1], what)


def parse_uid(text: bytes) -> tuple[int, str]:
    """``n unique-id``; ProtocolError if malformed."""
    parts = text.split()
    # RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
    if len(parts) < 2 or not parts[1].isascii():
        raise ProtocolError(f"malformed unique-id listing: {decode(text[:80])!r}")
    return _parse_int(parts[0], "unique-id listing"), parts[1].decode("ascii")


def parse_capabilities(lines: list[bytes]) -> Capabilities:
    """The CAPA lines as :class:`Capabilities` (a name listed twice: arguments joined)."""
    caps: dict[str, tuple[str, ...]] = {}
    for line in lines:
        words = decode(line).split()
        if not words:
            continue
        name = words[0].upper()
        caps[name] = caps.get(name, ()) + tuple(words[1:])
    return Capabilities(caps)


def _stat(text: bytes) -> Stat:
    return Stat(*parse_scan(text, "STAT reply"))


def _list_one(text: bytes) -> Listing:
    return Listing((parse_scan(text, "scan listing"),))


def _uidl_one(text: bytes) -> UidListing:
    return UidListing((parse_uid(text),))


def _list_all(lines: list[bytes]) -> Listing:
    return Listing(tuple(parse_scan(line, "scan listing") for line in lines))


def _uidl_all(lines: list[bytes]) -> UidListing:
    return UidListing(tuple(parse_uid(line) for line in lines))


def _single(parse: Callable[[bytes], Event]) -> ReaderFactory:
    return lambda verb, text: SingleLineReader(parse, verb, text)


def _listing(parse: Callable[[list[bytes]], Event]) -> ReaderFactory:
    return lambda verb, text: ListingReader(parse, verb, text)


_K = ResponseKind

#: The reader of the data after ``+OK``, for every response kind; ``None``: the
#: status line is the whole response. A ``-ERR`` never has data.
READERS: Final[Mapping[ResponseKind, ReaderFactory | None]] = {
    _K.GREETING: None,
    _K.STATUS: None,
    _K.AUTH: None,
    _K.STAT: _single(_stat),
    _K.LIST_ONE: _single(_list_one),
    _K.UIDL_ONE: _single(_uidl_one),
    _K.LIST_ALL: _listing(_list_all),
    _K.UIDL_ALL: _listing(_uidl_all),
    _K.CAPA: _listing(parse_capabilities),
    _K.MESSAGE: MessageReader,
}


# -- dot-stuffing -----------------------------------------------------------------------


def dot_stuff(content: bytes) -> bytes:
    """The multi-line wire form of ``content``: dot-stuffed, CRLF-ended, ``.`` CRLF.

    Dots are stuffed at the start of ``content`` and after every CRLF; a CRLF is added
    when ``content`` is non-empty and does not end with one (as servers do), so what
    :class:`~mailoauth.pop3.protocol.Pop3Protocol` reads back is ``content`` with that
    CRLF. Never raises.
    """
    body = content.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if body and not body.endswith(_CRLF):
        body += _CRLF
    return body + b".\r\n"


def unstuff(
    buf: bytes | bytearray, start: int, scan_dots: bool = True
) -> tuple[bytes, int, bool, bool]:
    """Unstuff ``buf[start:]`` up to the terminator: (content, bytes consumed, ended,
    whether to keep scanning for lone dots).

    ``buf[start:]`` is never at the start of a line. Bytes that may be the beginning
    of a CRLF "." sequence split across reads are left unconsumed. ``scan_dots`` picks
    the search: a memchr for "." (fastest when dots are rare) or a search for CRLF "."
    (steady when they are common, as in mail full of addresses); the first gives way
    to the second after :data:`_DOT_SCAN_MISSES` dots that start no line, and the
    caller keeps that choice for the rest of the session.
    """
    n = len(buf)
    pieces: list[memoryview] = []
    ended = False
    search = start  # where the next CRLF "." may begin
    misses = 0 if scan_dots else _DOT_SCAN_MISSES
    with memoryview(buf) as view:
        while True:
            # Looking for a lone "." is a memchr, many times faster than searching for
            # CRLF "."; it only loses when dots are common, so give up on it then.
            if misses < _DOT_SCAN_MISSES:
                d = buf.find(b".", search + 2)
                if d >= 0 and (buf[d - 1] != _LF or buf[d - 2] != _CR):
                    misses += 1
                    search = d - 1
                    continue
                i = d - 2 if d >= 0 else -1
            else:
                match = _LINE_DOT.search(buf, search)
                i = match.start() if match else -1
            if i < 0:
                if buf.endswith(b"\r\n"):
                    cut = n - 2
                elif buf.endswith(b"\r"):
                    cut = n - 1
                else:
                    cut = n
                cut = max(cut, start)
                break
            j = i + 3
            if j >= n:
                cut = i
                break
            c = buf[j]
            if c == _DOT:
                pieces.append(view[start : i + 2])
                start = search = j
            elif c == _CR:
                if j + 1 >= n:
                    cut = i
                    break
                if buf[j + 1] == _LF:
                    cut = i + 2
                    ended = True
                    break
                search = j
            else:
                # Not stuffed although it should be; keep the dot, as poplib does.
                search = j
        if not pieces and start == 0 and cut == n and type(buf) is bytes:
            data = buf  # the common case: a whole chunk of plain content, not copied
        else:
            if cut > start or not pieces:
                pieces.append(view[start:cut])
            data = pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)
            for piece in pieces:
                piece.release()
    consumed = cut + 3 if ended else cut
    return data, consumed, ended, misses < _DOT_SCAN_MISSES
