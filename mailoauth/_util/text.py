"""Control characters: refused in what we send, escaped in what we show.

Two directions, one definition of what counts as a control character
(:data:`CONTROL_CHARACTERS`):

- :func:`refuse_controls` is the one injection guard. Every value the library puts on
  a protocol line (username, host, addresses, mailbox names, POP3 arguments, the
  access token inside a SASL message) passes through it before anything is sent. CR
  and LF would start a new command, NUL ends a C string on the server, ``\\x01`` is the
  SASL XOAUTH2/OAUTHBEARER field separator (a username with it forges ``auth=``), and
  the rest of C0, DEL, C1 (``\\x85`` is a line break to Python's ``str.splitlines``)
  and the Unicode line and paragraph separators have no place in any of them.
- :func:`escape_controls` makes server text safe to print on a terminal: an escape
  sequence can set the window title, clear the screen or move the cursor, a bare CR
  or LF can draw a fake line, and bidirectional overrides can reorder what is shown.

Pure, no I/O; imports nothing from the rest of the package but the errors.
"""

from __future__ import annotations

import re
from typing import Final

from mailoauth.errors import ConfigurationError

__all__ = [
    "CONTROL_CHARACTERS",
    "TERMINAL_UNSAFE",
    "escape_controls",
    "find_control",
    "refuse_controls",
]

#: C0 controls (NUL, ``\\x01``, TAB, LF, CR, ESC, ...), DEL, the C1 controls (NEL
#: ``\\x85``, CSI ``\\x9b``, ...) and U+2028/U+2029, the Unicode line and paragraph
#: separators: characters that split or end a line somewhere between us and the
#: server, or that a terminal acts on.
CONTROL_CHARACTERS: Final = (
    "".join([chr(c) for c in range(0x00, 0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)])
    + "\u2028\u2029"
)

#: What :func:`escape_controls` escapes: the control characters, plus the bidirectional
#: formatting characters (U+200E/F, U+202A-E, U+2066-9) that reorder displayed text.
TERMINAL_UNSAFE: Final = (
    CONTROL_CHARACTERS
    + "\u200e\u200f"
    + "".join(chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
)

_CONTROL_RE: Final = re.compile("[" + re.escape(CONTROL_CHARACTERS) + "]")
_UNSAFE_RE: Final = re.compile("[" + re.escape(TERMINAL_UNSAFE) + "]")


def find_control(value: str, *, allow: str = "") -> str | None:
    """The first control character in ``value`` that is not in ``allow``, or None."""
    for match in _CONTROL_RE.finditer(value):
        if match.group() not in allow:
            return match.group()
    return None


def refuse_controls(value: str, what: str, *, allow: str = "") -> str:
    """Return ``value`` unchanged if it has no control character (other than those in
    ``allow``, e.g. ``"\\t"`` where a protocol permits a tab).

    Raises :class:`~mailoauth.errors.ConfigurationError` naming ``what`` and the code
    point (never the value: it may be a secret) otherwise, before anything is sent.
    """
    found = find_control(value, allow=allow)
    if found is not None:
        raise ConfigurationError(
            f"the {what} contains the control character U+{ord(found):04X} at position "
            f"{value.index(found)}; control characters (CR, LF or NUL, the SASL separator "
            f"\\x01 and the rest) could inject protocol lines or forge SASL fields, so "
            f"nothing was sent: remove it from the {what}"
        )
    return value


_NAMED: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every character of :data:`TERMINAL_UNSAFE` shown as ``\\r``,
    ``\\n``, ``\\t``, ``\\xNN`` or ``\\uNNNN``, so that server text printed on a
    terminal is one inert line."""
    return _UNSAFE_RE.sub(_escape, text)
