"""IMAP4rev1 syntax for the test server, pure: tokenizing commands, sequence sets,
SEARCH keys and FETCH items. No I/O; the session in :mod:`imap_server` drives it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from typing import Final, TypeAlias

from mailoauth.testing.mailstore import StoredMessage

__all__ = [
    "SYSTEM_FLAGS",
    "FetchItem",
    "ImapSyntaxError",
    "Literal",
    "Token",
    "compile_search",
    "format_flags",
    "format_uid_set",
    "normalize_flag",
    "parse_date",
    "parse_fetch_items",
    "parse_internaldate",
    "parse_sequence_set",
    "quote",
    "render_fetch_item",
    "split_message",
    "tokenize",
]

SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_CANONICAL = {flag.lower(): flag for flag in (*SYSTEM_FLAGS, "\\Recent")}


class ImapSyntaxError(ValueError):
    """The command does not parse; the session answers ``BAD`` with the message."""


class Literal(bytes):
    """A ``{n}`` literal's bytes (as opposed to a quoted string)."""


Token: TypeAlias = "str | bytes | list[Token]"
"""An atom (``str``), a string (``bytes``: quoted or :class:`Literal`), or a list."""

_ATOM_END = frozenset(b" ()")


def tokenize(segments: Sequence[bytes]) -> list[Token]:
    """Turn a command's text segments and literals into tokens.

    ``segments`` alternate as read: text, then (if the text ended in ``{n}``) a
    :class:`Literal`, then the text after it, and so on; the ``{n}`` markers are
    already cut off. Square brackets keep spaces and parentheses inside one atom, so
    ``BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>`` is one token.
    """
    stack: list[list[Token]] = [[]]
    for seg in segments:
        if isinstance(seg, Literal):
            stack[-1].append(seg)
            continue
        i, n = 0, len(seg)
        while i < n:
            c = seg[i]
            if c == 0x20:
                i += 1
            elif c == 0x28:  # (
                new: list[Token] = []
                stack[-1].append(new)
                stack.append(new)
                i += 1
            elif c == 0x29:  # )
                if len(stack) == 1:
                    raise ImapSyntaxError("unbalanced parenthesis")
                stack.pop()
                i += 1
            elif c == 0x22:  # "
                i, value = _quoted(seg, i + 1)
                stack[-1].append(value)
            else:
                start, depth = i, 0
                while i < n and (depth or seg[i] not in _ATOM_END):
                    if seg[i] == 0x5B:  # [
                        depth += 1
                    elif seg[i] == 0x5D and depth:  # ]
                        depth -= 1
                    i += 1
                stack[-1].append(seg[start:i].decode("utf-8", "replace"))
    if len(stack) != 1:
        raise ImapSyntaxError("unbalanced parenthesis")
    return stack[0]


def _quoted(seg: bytes, i: int) -> tuple[int, bytes]:
    out = bytearray()
    while i < len(seg):
        c = seg[i]
        if c == 0x5C and i + 1 < len(seg):  # backslash escape
            out.append(seg[i + 1])
            i += 2
        elif c == 0x22:
            return i + 1, bytes(out)
        else:
            out.append(c)
            i += 1
    raise ImapSyntaxError("unterminated quoted string")


def text_of(token: Token) -> str:
    """An atom or string as text; a list is a syntax error."""
    if isinstance(token, list):
        raise ImapSyntaxError("expected an atom or a string, got a list")
    if isinstance(token, bytes):
        return token.decode("utf-8", "replace")
    return token


def quote(text: str) -> str:
    """An IMAP quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- sequence sets ------------------------------------------------------------------

_SEQ_RE = re.compile(r"^(\d+|\*)(?::(\d+|\*))?$")


def parse_sequence_set(text: str, star: int) -> list[tuple[int, int]]:
    """Parse ``1:3,5,7:*`` into inclusive ``(low, high)`` ranges; ``*`` is ``star``."""
    ranges = []
    for part in text.split(","):
        m = _SEQ_RE.match(part)
        if m is None:
            raise ImapSyntaxError(f"bad sequence set {text[:40]!r}")
        if m[1] == "0" or m[2] == "0":
            raise ImapSyntaxError("0 is not a valid message number")
        # With an empty mailbox ``star`` is 0, and a range up to it matches nothing.
        first = star if m[1] == "*" else int(m[1])
        last = first if m[2] is None else (star if m[2] == "*" else int(m[2]))
        ranges.append((min(first, last), max(first, last)))
    return ranges


def in_ranges(value: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(low <= value <= high for low, high in ranges)


def format_uid_set(uids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1:3,7`` (keeping the given order between runs)."""
    parts: list[str] = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        parts.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(parts)


# -- flags and dates ----------------------------------------------------------------


def normalize_flag(flag: str) -> str:
    """System flags in their canonical case; keywords as given."""
    return _CANONICAL.get(flag.lower(), flag)


def format_flags(flags: Iterable[str]) -> str:
    return "(" + " ".join(sorted(flags)) + ")"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def parse_date(text: str) -> dt.date:
    """An IMAP ``date`` such as ``1-Feb-2024``."""
    try:
        day, month, year = text.split("-")
        return dt.date(int(year), _MONTHS.index(month.title()) + 1, int(day))
    except ValueError as exc:
        raise ImapSyntaxError(f"bad date {text[:30]!r}") from exc


def parse_internaldate(text: str) -> float:
    """An APPEND ``date-time`` such as ``" 1-Feb-2024 10:00:00 +0000"``."""
    try:
        return dt.datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
    except ValueError as exc:
        raise ImapSyntaxError(f"bad date-time {text[:40]!r}") from exc


def format_internaldate(timestamp: float) -> str:
    when = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return f'"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year} {when:%H:%M:%S} +0000"'


# -- messages -----------------------------------------------------------------------


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """``(header including the blank line, body)``."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = data.find(sep)
        if pos >= 0:
            return data[: pos + len(sep)], data[pos + len(sep) :]
    return data, b""


def _header_fields(header: bytes) -> list[tuple[str, bytes]]:
    fields: list[tuple[str, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line.strip() == b"":
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        else:
            fields.append((line.split(b":", 1)[0].strip().decode("ascii", "replace").lower(), line))
    return fields


def header_value(data: bytes, name: str) -> str:
    """All values of header ``name``, decoded, joined by newlines."""
    msg = BytesHeaderParser().parsebytes(data)
    values = msg.get_all(name) or []
    out = []
    for value in values:
        try:
            out.append(str(make_header(decode_header(str(value)))))
        except (ValueError, LookupError):
            out.append(str(value))
    return "\n".join(out)


# -- SEARCH -------------------------------------------------------------------------

Predicate = Callable[[int, StoredMessage, bool], bool]
"""``predicate(sequence_number, message, recent) -> bool``."""

_FLAG_KEYS: Final = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS: Final = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT"})


def compile_search(tokens: list[Token], *, max_seq: int, max_uid: int) -> Predicate:
    """Compile SEARCH keys (all ANDed) into a predicate; unknown keys raise."""
    tokens = list(tokens)
    if tokens and isinstance(tokens[0], str) and tokens[0].upper() == "CHARSET":
        if len(tokens) < 2 or text_of(tokens[1]).upper() not in ("US-ASCII", "UTF-8"):
            raise ImapSyntaxError("only US-ASCII and UTF-8 are supported")
        tokens = tokens[2:]
    if not tokens:
        raise ImapSyntaxError("SEARCH needs at least one key")
    preds = []
    while tokens:
        preds.append(_search_key(tokens, max_seq, max_uid))
    return lambda seq, msg, recent: all(p(seq, msg, recent) for p in preds)


def _search_key(tokens: list[Token], max_seq: int, max_uid: int) -> Predicate:
    token = tokens.pop(0)
    if isinstance(token, list):
        inner = list(token)
        preds = []
        while inner:
            preds.append(_search_key(inner, max_seq, max_uid))
        return lambda seq, msg, recent: all(p(seq, msg, recent) for p in preds)

    def arg() -> str:
        if not tokens:
            raise ImapSyntaxError(f"SEARCH {text_of(token)} needs an argument")
        return text_of(tokens.pop(0))

    key = text_of(token).upper()
    if key == "ALL":
        return lambda seq, msg, recent: True
    if key in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[key]
        return lambda seq, msg, recent: (flag in msg.flags) == present
    if key == "RECENT":
        return lambda seq, msg, recent: recent
    if key == "OLD":
        return lambda seq, msg, recent: not recent
    if key == "NEW":
        return lambda seq, msg, recent: recent and "\\Seen" not in msg.flags
    if key in ("KEYWORD", "UNKEYWORD"):
        word, present = arg(), key == "KEYWORD"
        return lambda seq, msg, recent: (word in msg.flags) == present
    if key in _HEADER_KEYS or key == "HEADER":
        name = arg().lower() if key == "HEADER" else key.lower()
        needle = arg().lower()
        return lambda seq, msg, recent: needle in header_value(msg.data, name).lower()
    if key in ("BODY", "TEXT"):
        needle_b = arg().lower().encode()
        part = 1 if key == "BODY" else None
        return lambda seq, msg, recent: (
            needle_b in (split_message(msg.data)[1] if part else msg.data).lower()
        )
    if key in ("SINCE", "BEFORE", "ON"):
        day = parse_date(arg())

        def by_date(seq: int, msg: StoredMessage, recent: bool) -> bool:
            got = dt.datetime.fromtimestamp(msg.internal_date, dt.timezone.utc).date()
            return got >= day if key == "SINCE" else got < day if key == "BEFORE" else got == day

        return by_date
    if key in ("LARGER", "SMALLER"):
        try:
            size = int(arg())
        except ValueError as exc:
            raise ImapSyntaxError(f"SEARCH {key} needs a number") from exc
        if key == "LARGER":
            return lambda seq, msg, recent: msg.size > size
        return lambda seq, msg, recent: msg.size < size
    if key == "UID":
        uid_ranges = parse_sequence_set(arg(), max_uid)
        return lambda seq, msg, recent: in_ranges(msg.uid, uid_ranges)
    if key == "NOT":
        inner_pred = _search_key(tokens, max_seq, max_uid)
        return lambda seq, msg, recent: not inner_pred(seq, msg, recent)
    if key == "OR":
        left = _search_key(tokens, max_seq, max_uid)
        if not tokens:
            raise ImapSyntaxError("SEARCH OR needs two keys")
        right = _search_key(tokens, max_seq, max_uid)
        return lambda seq, msg, recent: left(seq, msg, recent) or right(seq, msg, recent)
    if key[:1].isdigit() or key[:1] == "*":
        seq_ranges = parse_sequence_set(key, max_seq)
        return lambda seq, msg, recent: in_ranges(seq, seq_ranges)
    raise ImapSyntaxError(f"unsupported SEARCH key {key[:30]}")


# -- FETCH --------------------------------------------------------------------------

_SECTION_RE = re.compile(r"^(BODY|BODY\.PEEK)\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?$", re.IGNORECASE)
_FIELDS_RE = re.compile(r"^(HEADER\.FIELDS(?:\.NOT)?)\s*\((.*)\)$", re.IGNORECASE)
_SIMPLE_ITEMS: Final = frozenset(
    {"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
)
_MACROS: Final = {
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
}


@dataclass(frozen=True)
class FetchItem:
    """One FETCH data item: ``name`` is a simple item or ``BODY``; for ``BODY`` the
    ``section`` (``""``, ``HEADER``, ``TEXT``, ``HEADER.FIELDS``, ...), ``fields``,
    ``peek`` and an optional partial ``(start, length)``."""

    name: str
    section: str = ""
    fields: tuple[str, ...] = ()
    peek: bool = True
    partial: tuple[int, int | None] | None = None

    @property
    def sets_seen(self) -> bool:
        return (self.name == "BODY" and not self.peek) or self.name in ("RFC822", "RFC822.TEXT")


def parse_fetch_items(token: Token) -> list[FetchItem]:
    """Parse a FETCH item, a macro or a parenthesized list of items."""
    raw = token if isinstance(token, list) else [token]
    items: list[FetchItem] = []
    for tok in raw:
        text = text_of(tok)
        upper = text.upper()
        if upper in _MACROS:
            items.extend(FetchItem(name) for name in _MACROS[upper])
        elif upper in _SIMPLE_ITEMS:
            items.append(FetchItem(upper))
        else:
            items.append(_body_item(text))
    return items


def _body_item(text: str) -> FetchItem:
    m = _SECTION_RE.match(text)
    if m is None:
        raise ImapSyntaxError(f"unsupported FETCH item {text[:40]}")
    section = m[2].strip()
    fields: tuple[str, ...] = ()
    fm = _FIELDS_RE.match(section)
    if fm is not None:
        section = fm[1].upper()
        fields = tuple(f.strip('"') for f in fm[2].split())
    elif section.upper() in ("", "HEADER", "TEXT"):
        section = section.upper()
    else:
        raise ImapSyntaxError(f"unsupported BODY section {section[:40]}")
    partial = None
    if m[3] is not None:
        partial = (int(m[3]), None if m[4] is None else int(m[4]))
    return FetchItem("BODY", section, fields, m[1].upper() == "BODY.PEEK", partial)


def _section_bytes(item: FetchItem, data: bytes) -> bytes:
    header, body = split_message(data)
    if item.section == "":
        return data
    if item.section == "HEADER":
        return header
    if item.section == "TEXT":
        return body
    wanted = {f.lower() for f in item.fields}
    keep = item.section == "HEADER.FIELDS"
    picked = b"".join(raw for name, raw in _header_fields(header) if (name in wanted) == keep)
    return picked + b"\r\n"


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def render_fetch_item(item: FetchItem, msg: StoredMessage, flags: Iterable[str]) -> bytes:
    """``NAME value`` for one item, literals included."""
    if item.name == "UID":
        return b"UID %d" % msg.uid
    if item.name == "FLAGS":
        return b"FLAGS " + format_flags(flags).encode()
    if item.name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % msg.size
    if item.name == "INTERNALDATE":
        return b"INTERNALDATE " + format_internaldate(msg.internal_date).encode()
    if item.name == "RFC822":
        return b"RFC822 " + _literal(msg.data)
    if item.name == "RFC822.HEADER":
        return b"RFC822.HEADER " + _literal(split_message(msg.data)[0])
    if item.name == "RFC822.TEXT":
        return b"RFC822.TEXT " + _literal(split_message(msg.data)[1])
    data = _section_bytes(item, msg.data)
    section = item.section
    if item.fields:
        section += " (" + " ".join(f.upper() for f in item.fields) + ")"
    name = f"BODY[{section}]"
    if item.partial is not None:
        start, length = item.partial
        data = data[start:] if length is None else data[start : start + length]
        name += f"<{start}>"
    return name.encode() + b" " + _literal(data)
