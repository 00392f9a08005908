"""What :meth:`Pop3Protocol.next_event <mailoauth.pop3.protocol.Pop3Protocol.next_event>`
returns: one frozen value per status line, listing, capability list or message chunk.

Every response begins with one status event that names its command -- :class:`Reply`
(or :class:`Greeting` for the greeting, :class:`AuthChallenge` for a ``+`` during AUTH)
-- and, when ``Reply.ok`` and the command carries data, the data follows (see
:data:`mailoauth.pop3.readers.READERS`). :data:`NEED_DATA` says more bytes must be
received first. Pure values: no I/O, no imports beyond the standard library and
:mod:`mailoauth.sasl`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from mailoauth.sasl import ErrorChallenge

__all__ = [
    "NEED_DATA",
    "AuthChallenge",
    "Capabilities",
    "ConnectionClosed",
    "Event",
    "Greeting",
    "Listing",
    "MessageData",
    "MessageEnd",
    "NeedData",
    "Reply",
    "Stat",
    "UidListing",
]


class NeedData(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel."""

    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`Pop3Protocol.next_event` when more bytes must be received first.
NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of everything :meth:`Pop3Protocol.next_event` returns."""


@dataclass(frozen=True, slots=True)
class Greeting(Event):
    """The server's first line. ``ok=False`` means it refused the session.

    ``apop_timestamp`` is the RFC 1939 §7 ``<...@...>`` banner when the server offers
    APOP, else ``None``. ``code`` is an RFC 2449 response code such as ``"SYS/TEMP"``.
    """

    ok: bool
    text: str
    code: str | None = None
    apop_timestamp: str | None = None


@dataclass(frozen=True, slots=True)
class Reply(Event):
    """A ``+OK`` / ``-ERR`` status line answering ``command`` (``"RETR"``, ``"AUTH"``, ...).

    ``text`` is everything after the status indicator, code included, decoded as UTF-8
    with replacement; ``code`` is the bracketed response code at its start (RFC 2449 §8,
    RFC 3206), e.g. ``"AUTH"``, ``"SYS/TEMP"``, ``"IN-USE"``, or ``None``.
    """

    command: str
    ok: bool
    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Stat(Event):
    """The drop listing of ``STAT``: message count and total size in octets."""

    count: int
    size: int


@dataclass(frozen=True, slots=True)
class Listing(Event):
    """Scan listing of ``LIST`` (all messages) or ``LIST n`` (one): (number, size) pairs."""

    entries: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class UidListing(Event):
    """Unique-id listing of ``UIDL`` or ``UIDL n``: (number, unique id) pairs."""

    entries: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Capabilities(Event):
    """``CAPA`` (RFC 2449): upper-cased capability name -> its arguments.

    A name listed twice has its arguments concatenated.
    """

    capabilities: Mapping[str, tuple[str, ...]]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.upper() in self.capabilities

    @property
    def sasl_mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms the server offers, upper-cased (empty if no SASL)."""
        return tuple(m.upper() for m in self.capabilities.get("SASL", ()))


@dataclass(frozen=True, slots=True)
class AuthChallenge(Event):
    """A ``+`` continuation during AUTH; answer it with :meth:`Pop3Protocol.auth_continue`.

    ``raw`` is the base64 text after ``+ ``. Before the initial response was sent it is
    the server's prompt for it and ``challenge`` is ``None``; after, it is an error
    challenge (the token was rejected) and ``challenge`` is its decoded JSON.
    """

    raw: bytes
    challenge: ErrorChallenge | None


@dataclass(frozen=True, slots=True)
class MessageData(Event):
    """A chunk of a RETR/TOP message, dot-unstuffed, bytes exactly as sent."""

    data: bytes

    def __repr__(self) -> str:
        return f"MessageData(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class MessageEnd(Event):
    """The end of a RETR/TOP message (the ``.`` line)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The server closed the connection while no response was outstanding."""
