"""Parsers for the IMAP responses aioimaplib hands back as lists of lines. Pure.

aioimaplib returns ``Response(result, lines)``: untagged lines without their ``* ``,
literals as ``bytearray`` items, and the tagged completion text last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "FetchRecord",
    "Folder",
    "MailboxInfo",
    "encode_mailbox",
    "parse_appenduid",
    "parse_fetch",
    "parse_list",
    "parse_response_code",
    "parse_search",
    "parse_select",
    "parse_status",
    "quote",
]

_FETCH_START = re.compile(rb"^(\d+) FETCH \(")
_LITERAL_KEY = re.compile(
    rb"(BODY\[[^\]]*\](?:<\d+>)?|BINARY\[[^\]]*\]|RFC822(?:\.HEADER|\.TEXT)?) \{(\d+)\}$"
)
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
# aioimaplib drops the keyword of untagged replies to async commands ("* LIST (...)"
# arrives as "(...)"), so the keyword is optional.
_LIST = re.compile(rb'^(?:(?:LIST|LSUB) )?\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.+)$')
_STATUS = re.compile(rb"^(?:STATUS )?(.+) \(([^)]*)\)$")
# resp-text-code (RFC 3501 §9): an atom, maybe followed by arguments, in brackets.
_RESPONSE_CODE = re.compile(r"\[([A-Za-z0-9./_-]+)(?: [^\]\r\n]*)?\]")


@dataclass
class FetchRecord:
    """One message's data from a FETCH response."""

    seq: int
    uid: int | None = None
    flags: frozenset[str] | None = None
    size: int | None = None
    sections: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Folder:
    """A mailbox from LIST: its name, hierarchy delimiter and attributes."""

    name: str
    delimiter: str | None
    flags: frozenset[str]


@dataclass(frozen=True)
class MailboxInfo:
    """What SELECT/EXAMINE reported."""

    name: str
    exists: int
    uidvalidity: int | None
    uidnext: int | None
    flags: frozenset[str]
    readonly: bool


def parse_fetch(lines: list[bytes | bytearray]) -> list[FetchRecord]:
    """Group FETCH lines into records; literals are attached to their section name."""
    records: list[FetchRecord] = []
    current: FetchRecord | None = None
    # A record's lines are joined once at its end: a record of many lines (literals
    # between them) would otherwise be re-copied for each line.
    text: list[bytes] = []
    pending_key: str | None = None

    def finish() -> None:
        if current is not None:
            _fill(current, b" ".join(text))
            records.append(current)

    for item in lines:
        if isinstance(item, bytearray):
            if current is not None and pending_key is not None:
                current.sections[pending_key] = bytes(item)
            pending_key = None
            continue
        start = _FETCH_START.match(item)
        if start:
            finish()
            current = FetchRecord(seq=int(start.group(1)))
            text = []
        if current is None:
            continue
        text.append(item)
        literal = _LITERAL_KEY.search(item)
        pending_key = literal.group(1).decode("ascii").upper() if literal else None
    finish()
    return records


def _fill(record: FetchRecord, text: bytes) -> None:
    if m := _UID.search(text):
        record.uid = int(m.group(1))
    if m := _FLAGS.search(text):
        record.flags = frozenset(m.group(1).decode("utf-8", "replace").split())
    if m := _SIZE.search(text):
        record.size = int(m.group(1))


def parse_search(lines: list[bytes | bytearray]) -> list[int]:
    """Numbers from ``SEARCH`` lines (UIDs for UID SEARCH)."""
    result: list[int] = []
    for line in lines[:-1]:  # the last line is the tagged completion text
        if not isinstance(line, bytes):
            continue
        words = line.split()
        if words and words[0] == b"SEARCH":
            words = words[1:]
        if words and all(w.isdigit() for w in words):
            result.extend(int(w) for w in words)
    return result


def _unquote(raw: bytes) -> str:
    if raw.startswith(b'"') and raw.endswith(b'"'):
        raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return decode_mailbox(raw.decode("utf-8", "replace"))


def parse_list(lines: list[bytes | bytearray]) -> list[Folder]:
    """Folders from ``LIST`` lines (a literal name is taken from the next item)."""
    folders: list[Folder] = []
    items = list(lines)
    for i, line in enumerate(items):
        if not isinstance(line, bytes):
            continue
        m = _LIST.match(line)
        if not m:
            continue
        flags = frozenset(m.group(1).decode("utf-8", "replace").split())
        delim = None if m.group(2) == b"NIL" else _unquote(m.group(2))
        raw_name = m.group(3)
        literal = re.match(rb"^\{(\d+)\}$", raw_name)
        if literal and i + 1 < len(items) and isinstance(items[i + 1], bytearray):
            name = decode_mailbox(bytes(items[i + 1]).decode("utf-8", "replace"))
        else:
            name = _unquote(raw_name)
        folders.append(Folder(name, delim, flags))
    return folders


_EXISTS = re.compile(rb"(\d+) EXISTS")
_SELECT_CODE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT) (\d+)\]")
_SELECT_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def parse_select(name: str, lines: list[bytes | bytearray], readonly: bool) -> MailboxInfo:
    """EXISTS, UIDVALIDITY, UIDNEXT and FLAGS from a SELECT/EXAMINE response."""
    exists = 0
    uidvalidity = uidnext = None
    flags: frozenset[str] = frozenset()
    for line in lines:
        if not isinstance(line, bytes):
            continue
        if m := _EXISTS.match(line):
            exists = int(m.group(1))
        elif m := _SELECT_CODE.search(line):
            if m.group(1) == b"UIDVALIDITY":
                uidvalidity = int(m.group(2))
            else:
                uidnext = int(m.group(2))
        elif m := _SELECT_FLAGS.match(line):
            flags = frozenset(m.group(1).decode("utf-8", "replace").split())
        elif b"[READ-ONLY]" in line:
            readonly = True
    return MailboxInfo(name, exists, uidvalidity, uidnext, flags, readonly)


def parse_status(lines: list[bytes | bytearray]) -> dict[str, int]:
    """``{"MESSAGES": 3, "UIDNEXT": 7, ...}`` from a STATUS response."""
    for line in lines:
        if isinstance(line, bytes) and (m := _STATUS.match(line)):
            parts = m.group(2).decode("ascii", "replace").split()
            # A value that is not a number is skipped, as any junk is: never raise.
            pairs = zip(parts[::2], parts[1::2], strict=False)
            return {k.upper(): int(v) for k, v in pairs if v.isascii() and v.isdigit()}
    return {}


def parse_appenduid(lines: list[bytes | bytearray]) -> int | None:
    """The new message's UID from ``[APPENDUID validity uid]`` (UIDPLUS), if sent."""
    for line in lines:
        if isinstance(line, bytes) and (m := re.search(rb"\[APPENDUID \d+ (\d+)\]", line)):
            return int(m.group(1))
    return None


def quote(value: str) -> str:
    """An IMAP quoted string (``\\`` and ``"`` escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_mailbox(name: str) -> str:
    """Modified UTF-7 (RFC 3501 §5.1.3) for a mailbox name, quoted for the wire."""
    out: list[str] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            raw = "".join(buf).encode("utf-16-be")
            import base64

            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            buf.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return quote("".join(out))


def decode_mailbox(name: str) -> str:
    """Decode modified UTF-7; text that is not valid modified UTF-7 is returned as is."""
    if "&" not in name:
        return name
    import base64

    def repl(m: re.Match[str]) -> str:
        body = m.group(1)
        if not body:
            return "&"
        b64 = body.replace(",", "/")
        b64 += "=" * (-len(b64) % 4)
        try:
            return base64.b64decode(b64).decode("utf-16-be")
        except ValueError:
            return m.group(0)

    return re.sub(r"&([^-]*)-", repl, name)


def parse_response_code(text: str) -> str | None:
    """The response code (RFC 3501 §7.1, RFC 5530) at the start of a completion's text,
    upper case and without its arguments: ``"[UNAVAILABLE] Try later"`` gives
    ``"UNAVAILABLE"``; None when the text has none."""
    found = _RESPONSE_CODE.match(text.lstrip())
    return None if found is None else found.group(1).upper()
