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

And one notion of "this looks like a bearer token" (:func:`looks_like_token`), for
user input echoed into an error or onto a terminal: a token given in the wrong slot
(username and token swapped, a token as the host) is never printed
(:func:`shown`, :func:`hide_tokens`), and a swap is refused before anything is sent
(:func:`refuse_swapped`).

Pure, no I/O; imports nothing from the rest of the package but the errors.
"""

from __future__ import annotations

import re
from typing import Final

from mailoauth.errors import ConfigurationError

__all__ = [
    "CONTROL_CHARACTERS",
    "MIN_TOKEN_LENGTH",
    "TERMINAL_UNSAFE",
    "escape_controls",
    "find_control",
    "hide_tokens",
    "looks_like_token",
    "refuse_controls",
    "refuse_swapped",
    "shown",
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


#: Shortest value taken for a bearer token. Real ones are far longer (Google's access
#: tokens about 200 characters, Microsoft's JWTs over 1,000); shorter mixed strings
#: are ordinary text.
MIN_TOKEN_LENGTH: Final = 20
#: A host name (or a plain login name) by its shape: letters, digits and hyphens in
#: dot-separated labels of at most 63 characters.
_HOST_SHAPE: Final = re.compile(r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.?")
#: Characters of a token word in free text (base64url, base64 and the ``.~`` of RFC
#: 6750's b64token); ``/`` splits, so that paths are judged by their parts.
_TOKEN_WORD: Final = re.compile(rf"[A-Za-z0-9\-_.~+=]{{{MIN_TOKEN_LENGTH},}}")


def looks_like_token(value: str) -> bool:
    """Whether ``value`` looks like a bearer token (an access or refresh token, a JWT)
    rather than a host name, an address or a user name.

    A JWT (``eyJ...``, the base64 of ``{"``), or a string of at least
    :data:`MIN_TOKEN_LENGTH` characters without spaces or ``@`` that mixes upper case,
    lower case and digits and is not shaped like a host name (a host label of 32 or more
    such characters counts as a token). Hex strings and lower-case identifiers (client
    ids, tenant ids) are not tokens by this test.
    """
    text = value.strip()
    if len(text) < MIN_TOKEN_LENGTH or "@" in text or any(c.isspace() for c in text):
        return False
    if text.startswith("eyJ"):
        return True
    mixed = (
        any(c.isupper() for c in text)
        and any(c.islower() for c in text)
        and any(c.isdigit() for c in text)
    )
    if not mixed:
        return False
    if _HOST_SHAPE.fullmatch(text):
        return any(len(label) >= 32 for label in text.split("."))
    return True


def shown(value: str, what: str) -> str:
    """``value`` as it may appear in a message: itself, or ``<the WHAT, not shown: it
    looks like a token>`` when :func:`looks_like_token` says so."""
    if looks_like_token(value):
        return f"<the {what}, not shown: it looks like a token>"
    return value


def _hide_word(match: re.Match[str]) -> str:
    word = match.group()
    return word[:6] + "…" if looks_like_token(word) else word


def hide_tokens(text: str) -> str:
    """``text`` with every word that looks like a token cut to six characters and an
    ellipsis. URLs (words with ``://``) are left whole: their query strings (a PKCE
    challenge, a state) are meant to be shown."""
    return " ".join(
        part if "://" in part else _TOKEN_WORD.sub(_hide_word, part) for part in text.split(" ")
    )


def refuse_swapped(username: str, token: object) -> None:
    """Raise ConfigurationError when ``username`` looks like a token while the token is
    an address: the two were passed in each other's place. Neither is quoted."""
    value = getattr(token, "value", token)
    if looks_like_token(username) and isinstance(value, str) and "@" in value:
        raise ConfigurationError(
            "the username looks like an access token and the token like an address: "
            "they seem swapped. The order is (host, port, username, token, security); "
            "neither is shown here"
        )
