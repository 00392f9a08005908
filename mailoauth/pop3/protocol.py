"""Sans-IO POP3 client protocol (RFC 1939, 2449, 2595, 3206, 5034). No sockets here.

The driver owns the connection and runs a short loop, like h11::

    proto = Pop3Protocol()
    while (event := proto.next_event()) is NEED_DATA:
        proto.receive_data(await stream.receive())    # b"" when the server hung up
    assert isinstance(event, Greeting)
    await stream.send(b"".join(proto.retr(n) for n in (1, 2, 3)))   # pipelined

Commands are methods that check the state and arguments, queue what the reply will be,
and return the bytes to send. Replies come back from :meth:`Pop3Protocol.next_event`
strictly in the order the commands were sent (FIFO). Every response begins with one
status event that names its command -- :class:`Reply` (or :class:`Greeting` for the
greeting, :class:`AuthChallenge` for a ``+`` during AUTH) -- and, when ``Reply.ok`` and
the command carries data, the data follows:

    STAT -> Stat          LIST -> Listing       UIDL -> UidListing
    CAPA -> Capabilities  RETR/TOP -> MessageData*, MessageEnd

Message bodies are streamed: :class:`MessageData` chunks hold the bytes exactly as the
server sent them after dot-unstuffing (the CRLF before the final ``.`` belongs to the
message), never decoded and never collected whole.

Errors: misuse by the caller (a command illegal in the current state, a command after a
pipelining barrier, CR/LF/NUL in an argument) raises
:class:`~mailoauth.errors.ConfigurationError` before any bytes are produced and leaves
the object usable. A server breaking the protocol raises
:class:`~mailoauth.errors.ProtocolError`, a named limit exceeded raises
:class:`~mailoauth.errors.LimitExceededError`, and the server hanging up in the middle
of a response raises :class:`~mailoauth.errors.ConnectionLostError`; after any of those
the object is in :attr:`State.ERROR` (or CLOSED) and the connection must be dropped.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from mailoauth._util.text import refuse_controls
from mailoauth.errors import (
    ConfigurationError,
    ConnectionLostError,
    LimitExceededError,
    ProtocolError,
)
from mailoauth.pop3._states import (
    ALLOWED_COMMANDS,
    BARRIER_COMMANDS,
    TRANSITIONS,
    State,
    Trigger,
)
from mailoauth.sasl import (
    POP3_MAX_AUTH_LINE,
    ErrorChallenge,
    Mechanism,
    decode_error_challenge,
    fits_initial_response,
)

__all__ = [
    "MAX_COMMAND_LINE",
    "MAX_LINE",
    "MAX_LISTING_SIZE",
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
    "Pop3Protocol",
    "Reply",
    "Stat",
    "State",
    "UidListing",
    "dot_stuff",
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
#: Longest command line we produce, CRLF included (RFC 2449 §4). Continuation lines
#: of AUTH are not commands and are not limited (long tokens must get through).
MAX_COMMAND_LINE: Final = 255

_CRLF: Final = b"\r\n"
_DOT: Final = 0x2E
_CR: Final = 0x0D
_LF: Final = 0x0A
# RFC 2449 §8: resp-code = "[" resp-level *("/" resp-level) "]"
_RESP_CODE: Final = re.compile(rb"\[([A-Za-z0-9-]+(?:/[A-Za-z0-9-]+)*)\]")
# RFC 1939 §7: the APOP timestamp is a msg-id, "<" ... "@" ... ">", in the greeting.
_APOP_TIMESTAMP: Final = re.compile(rb"<[^<>\s@]+@[^<>\s]+>")
_LINE_DOT: Final = re.compile(rb"\r\n\.")
# Dots not at a line start tolerated before the body scan stops using memchr for the
# rest of the session (see _unstuff).
_DOT_SCAN_MISSES: Final = 8


# -- events -------------------------------------------------------------------------


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


# -- pending responses ----------------------------------------------------------------


class _Kind(enum.Enum):
    GREETING = enum.auto()
    STATUS = enum.auto()  # a status line only
    STAT = enum.auto()
    LIST_ONE = enum.auto()
    UIDL_ONE = enum.auto()
    LIST_ALL = enum.auto()
    UIDL_ALL = enum.auto()
    CAPA = enum.auto()
    MESSAGE = enum.auto()
    AUTH = enum.auto()


_MULTILINE_KINDS: Final = frozenset({_Kind.LIST_ALL, _Kind.UIDL_ALL, _Kind.CAPA})


@dataclass(frozen=True, slots=True)
class _Pending:
    verb: str
    kind: _Kind


@dataclass(slots=True)
class _AuthExchange:
    mechanism: Mechanism
    initial_sent: bool
    challenge: bytes | None = None  # the raw challenge awaiting auth_continue()
    error_answered: bool = False


def dot_stuff(content: bytes) -> bytes:
    """The multi-line wire form of ``content``: dot-stuffed, CRLF-ended, ``.`` CRLF.

    Dots are stuffed at the start of ``content`` and after every CRLF; a CRLF is added
    when ``content`` is non-empty and does not end with one (as servers do), so what
    :class:`Pop3Protocol` reads back is ``content`` with that CRLF. Never raises.
    """
    body = content.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if body and not body.endswith(_CRLF):
        body += _CRLF
    return body + b".\r\n"


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _parse_int(raw: bytes, what: str) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise ProtocolError(f"malformed {what} from the server: {_decode(raw[:80])!r}")
    return int(raw)


def _check_arg(value: str, what: str) -> None:
    refuse_controls(value, what)


def _check_msg_number(number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ConfigurationError(f"message numbers start at 1, got {number!r}")


# -- the protocol object ----------------------------------------------------------------


class Pop3Protocol:
    """One POP3 client session: bytes in, events out; commands in, bytes out.

    Starts in :attr:`State.GREETING` with the greeting as the first expected response.
    Several commands may be sent before their replies are read (RFC 2449 PIPELINING);
    replies are matched to them in order. ``PASS``, ``APOP``, ``AUTH``, ``STLS`` and
    ``QUIT`` are barriers: nothing else may be sent until their reply has been read.
    """

    def __init__(self) -> None:
        self._state = State.GREETING
        # The unparsed bytes. A chunk that arrives into an empty buffer is kept as the
        # caller's bytes object, so that a message body passes through without copies.
        self._buf: bytes | bytearray = b""
        self._eof = False
        # Offset from which to look for the next CRLF, so that a long line fed in small
        # pieces is not rescanned from its start each time.
        self._scan_from = 0
        self._pending: deque[_Pending] = deque([_Pending("GREETING", _Kind.GREETING)])
        self._barrier: str | None = None
        self._apop_timestamp: bytes | None = None
        self._auth: _AuthExchange | None = None
        self._tls_started = False
        # Set once a successful status line of a data-carrying command has been read.
        self._in_data = False
        self._status_text = b""
        self._listing_lines: list[bytes] = []
        self._listing_size = 0
        self._body_line_start = True
        self._scan_dots = True
        self._body_ended = False

    # -- introspection ----------------------------------------------------------------

    @property
    def state(self) -> State:
        """The session state (see :mod:`mailoauth.pop3._states`)."""
        return self._state

    @property
    def pending_responses(self) -> int:
        """How many responses the server still owes (the greeting counts as one)."""
        return len(self._pending)

    @property
    def apop_timestamp(self) -> str | None:
        """The APOP banner from the greeting, or ``None`` if the server offers none."""
        ts = self._apop_timestamp
        return None if ts is None else ts.decode("latin-1")

    @property
    def buffered_bytes(self) -> int:
        """How many received bytes have not been turned into events yet."""
        return len(self._buf)

    # -- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the server; ``b""`` means it closed the connection.

        Raises :class:`~mailoauth.errors.ConfigurationError` if called after ``b""``.
        """
        if self._eof:
            raise ConfigurationError("receive_data() called after the end of the stream")
        if not data:
            self._eof = True
        elif not self._buf and type(data) is bytes:
            self._buf = data
        else:
            if type(self._buf) is not bytearray:
                self._buf = bytearray(self._buf)
            self._buf += data

    def next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        """The next event parsed from the received bytes, or :data:`NEED_DATA`.

        Raises :class:`~mailoauth.errors.ProtocolError` for a malformed or unsolicited
        response, :class:`~mailoauth.errors.LimitExceededError` for a line or listing
        over a named limit, :class:`~mailoauth.errors.ConnectionLostError` when the
        server closed the connection with a response outstanding, and
        :class:`~mailoauth.errors.ConfigurationError` when called while an
        :class:`AuthChallenge` is unanswered or the TLS handshake is due.
        """
        if self._state is State.ERROR:
            raise ProtocolError("the POP3 session is broken by an earlier error; reconnect")
        if self._state is State.STARTTLS:
            raise ConfigurationError("STLS was accepted: call start_tls() and run the handshake")
        if self._auth is not None and self._auth.challenge is not None:
            raise ConfigurationError("answer the AUTH challenge with auth_continue() first")
        try:
            return self._next_event()
        except ProtocolError:
            self._transition(Trigger.PROTOCOL_ERROR)
            raise
        except ConnectionLostError:
            self._transition(Trigger.PEER_CLOSED)
            raise

    def start_tls(self) -> bytes:
        """Prepare for the TLS handshake after ``Reply("STLS", ok=True)``.

        Returns and discards every byte received after the ``+OK`` line: it was sent
        before the handshake and must not be trusted (RFC 2595 §4; a non-empty result
        suggests command injection, so a driver should log it or fail). Afterwards the
        session is back in AUTHORIZATION; re-read CAPA over TLS.

        Raises :class:`~mailoauth.errors.ConfigurationError` unless STLS was just
        accepted.
        """
        if self._state is not State.STARTTLS:
            raise ConfigurationError(f"start_tls() needs an accepted STLS, state is {self._state}")
        discarded = bytes(self._buf)
        self._buf = b""
        self._scan_from = 0
        self._tls_started = True
        self._transition(Trigger.TLS_STARTED)
        return discarded

    # -- commands ---------------------------------------------------------------------

    def user(self, name: str) -> bytes:
        """``USER name``. Raises ConfigurationError if illegal now or ``name`` has CR/LF/NUL."""
        _check_arg(name, "user name")
        return self._command("USER", _Kind.STATUS, name)

    def pass_(self, password: str) -> bytes:
        """``PASS password`` (may contain spaces). Raises ConfigurationError like :meth:`user`."""
        _check_arg(password, "password")
        return self._command("PASS", _Kind.STATUS, password, secret=True)

    def apop(self, name: str, secret: str) -> bytes:
        """``APOP name digest`` with ``digest = md5(timestamp + secret)`` (RFC 1939 §7).

        Raises ConfigurationError if the greeting had no timestamp, the command is
        illegal now, or an argument contains CR/LF/NUL.
        """
        _check_arg(name, "user name")
        _check_arg(secret, "APOP secret")
        if self._apop_timestamp is None:
            raise ConfigurationError("the server's greeting offers no APOP timestamp")
        # APOP mandates MD5; it is a protocol requirement, not our choice of hash.
        digest = hashlib.md5(
            self._apop_timestamp + secret.encode(), usedforsecurity=False
        ).hexdigest()
        return self._command("APOP", _Kind.STATUS, f"{name} {digest}", secret=True)

    def auth(self, mechanism: Mechanism) -> bytes:
        """``AUTH MECH [initial-response]`` (RFC 5034).

        The initial response goes on the AUTH line only if the line fits in
        :data:`~mailoauth.sasl.POP3_MAX_AUTH_LINE` octets; otherwise it is sent by
        :meth:`auth_continue` after the server's ``+`` prompt. Raises ConfigurationError
        if AUTH is illegal now.
        """
        self._check_can_send("AUTH")
        prefix = f"AUTH {mechanism.name} ".encode()
        fits = fits_initial_response(prefix, mechanism, POP3_MAX_AUTH_LINE)
        if fits:
            line = prefix + mechanism.initial_response_b64() + _CRLF
        else:
            line = f"AUTH {mechanism.name}\r\n".encode()
        self._enqueue("AUTH", _Kind.AUTH)
        self._auth = _AuthExchange(mechanism, initial_sent=fits)
        return line

    def auth_continue(self) -> bytes:
        """The line answering the last :class:`AuthChallenge`.

        That is the initial response if it was not on the AUTH line, else the
        mechanism's answer to the error challenge (after which the server must fail).
        Raises ConfigurationError if no challenge is waiting for an answer.
        """
        auth = self._auth
        if auth is None or auth.challenge is None:
            raise ConfigurationError("no AUTH challenge is waiting for an answer")
        if auth.initial_sent:
            answer = auth.mechanism.respond(auth.challenge)
            auth.error_answered = True
        else:
            answer = auth.mechanism.initial_response_b64()
            auth.initial_sent = True
        auth.challenge = None
        return answer + _CRLF

    def stls(self) -> bytes:
        """``STLS`` (RFC 2595). Raises ConfigurationError if illegal now or TLS is on."""
        if self._tls_started:
            raise ConfigurationError("STLS was already done on this connection")
        return self._command("STLS", _Kind.STATUS)

    def capa(self) -> bytes:
        """``CAPA`` (RFC 2449). Raises ConfigurationError if illegal now."""
        return self._command("CAPA", _Kind.CAPA)

    def stat(self) -> bytes:
        """``STAT``. Raises ConfigurationError if illegal now."""
        return self._command("STAT", _Kind.STAT)

    def list(self, number: int | None = None) -> bytes:
        """``LIST`` or ``LIST n``. Raises ConfigurationError if illegal now or n < 1."""
        if number is None:
            return self._command("LIST", _Kind.LIST_ALL)
        _check_msg_number(number)
        return self._command("LIST", _Kind.LIST_ONE, str(number))

    def uidl(self, number: int | None = None) -> bytes:
        """``UIDL`` or ``UIDL n``. Raises ConfigurationError if illegal now or n < 1."""
        if number is None:
            return self._command("UIDL", _Kind.UIDL_ALL)
        _check_msg_number(number)
        return self._command("UIDL", _Kind.UIDL_ONE, str(number))

    def retr(self, number: int) -> bytes:
        """``RETR n``. Raises ConfigurationError if illegal now or n < 1."""
        _check_msg_number(number)
        return self._command("RETR", _Kind.MESSAGE, str(number))

    def retr_many(self, numbers: Sequence[int]) -> bytes:
        """``RETR n`` for each of ``numbers``, as one write (for PIPELINING, RFC 2449;
        the replies come back in order). Raises ConfigurationError like :meth:`retr`,
        before anything is queued."""
        for number in numbers:
            _check_msg_number(number)
        self._check_can_send("RETR")
        pending = _Pending("RETR", _Kind.MESSAGE)  # immutable: one serves them all
        self._pending.extend(pending for _ in numbers)
        return b"".join(b"RETR %d\r\n" % number for number in numbers)

    def top(self, number: int, lines: int) -> bytes:
        """``TOP n lines``. Raises ConfigurationError if illegal now, n < 1 or lines < 0."""
        _check_msg_number(number)
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise ConfigurationError(f"TOP needs a line count >= 0, got {lines!r}")
        return self._command("TOP", _Kind.MESSAGE, f"{number} {lines}")

    def dele(self, number: int) -> bytes:
        """``DELE n``. Raises ConfigurationError if illegal now or n < 1."""
        _check_msg_number(number)
        return self._command("DELE", _Kind.STATUS, str(number))

    def noop(self) -> bytes:
        """``NOOP``. Raises ConfigurationError if illegal now."""
        return self._command("NOOP", _Kind.STATUS)

    def rset(self) -> bytes:
        """``RSET``. Raises ConfigurationError if illegal now."""
        return self._command("RSET", _Kind.STATUS)

    def quit(self) -> bytes:
        """``QUIT``; from TRANSACTION this enters UPDATE. Raises ConfigurationError if illegal."""
        line = self._command("QUIT", _Kind.STATUS)
        self._transition(Trigger.QUIT_SENT)
        return line

    # -- internals: sending -----------------------------------------------------------

    def _check_can_send(self, verb: str) -> None:
        if self._barrier is not None:
            raise ConfigurationError(
                f"cannot send {verb} before the reply to {self._barrier} has been read"
            )
        if verb not in ALLOWED_COMMANDS[self._state]:
            raise ConfigurationError(f"{verb} is not allowed in the {self._state.value} state")

    def _enqueue(self, verb: str, kind: _Kind) -> None:
        self._pending.append(_Pending(verb, kind))
        if verb in BARRIER_COMMANDS:
            self._barrier = verb

    def _command(
        self, verb: str, kind: _Kind, arg: str | None = None, *, secret: bool = False
    ) -> bytes:
        self._check_can_send(verb)
        line = (verb if arg is None else f"{verb} {arg}").encode() + _CRLF
        if len(line) > MAX_COMMAND_LINE:
            what = "its argument" if secret else repr(arg)
            raise ConfigurationError(
                f"{verb} line would be {len(line)} octets with {what}; "
                f"POP3 allows {MAX_COMMAND_LINE} (RFC 2449 §4)"
            )
        self._enqueue(verb, kind)
        return line

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise ProtocolError(
                f"no POP3 transition from {self._state.value} on {trigger.value}"
            ) from None

    # -- internals: parsing -----------------------------------------------------------

    def _next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        if not self._pending:
            if self._buf:
                raise ProtocolError(
                    f"unsolicited data from the server: {_decode(bytes(self._buf[:80]))!r}"
                )
            if self._eof:
                if self._state is not State.CLOSED:
                    self._transition(Trigger.PEER_CLOSED)
                return ConnectionClosed()
            return NEED_DATA
        head = self._pending[0]
        if self._in_data:
            if head.kind is _Kind.MESSAGE:
                return self._read_body()
            return self._read_listing(head)
        line = self._read_line()
        if line is None:
            return self._need_data(head)
        if head.kind is _Kind.GREETING:
            return self._on_greeting(line)
        if head.kind is _Kind.AUTH and (line == b"+" or line.startswith(b"+ ")):
            return self._on_auth_challenge(line[2:])
        reply = self._parse_status(line, head.verb)
        if not reply.ok or head.kind in (_Kind.STATUS, _Kind.AUTH):
            self._finish(reply)
            return reply
        if head.kind is _Kind.MESSAGE:
            self._body_line_start = True
        elif head.kind in _MULTILINE_KINDS:
            self._listing_lines = []
            self._listing_size = 0
        else:  # STAT, LIST n, UIDL n: the data is on the status line itself
            self._status_text = self._split_status(line)[1]
        self._in_data = True
        return reply

    def _need_data(self, head: _Pending) -> Literal[NeedData.NEED_DATA]:
        if self._eof:
            raise ConnectionLostError(
                f"the server closed the connection before answering {head.verb}"
            )
        return NEED_DATA

    def _finish(self, reply: Reply | None = None) -> None:
        """The head response is complete: pop it and apply its state effects."""
        head = self._pending.popleft()
        self._in_data = False
        if head.verb == self._barrier:
            self._barrier = None
        if reply is None:
            return
        if head.kind is _Kind.AUTH:
            self._auth = None
        if head.verb == "QUIT":
            self._transition(Trigger.QUIT_REPLIED)
        elif reply.ok and head.verb in ("PASS", "APOP", "AUTH"):
            self._transition(Trigger.LOGIN_OK)
        elif reply.ok and head.verb == "STLS":
            self._transition(Trigger.STLS_OK)

    def _read_line(self) -> bytes | None:
        buf = self._buf
        i = buf.find(_CRLF, self._scan_from)
        if i < 0:
            if len(buf) >= MAX_LINE:
                raise LimitExceededError(
                    f"a POP3 response line is longer than MAX_LINE ({MAX_LINE} octets)"
                )
            self._scan_from = max(0, len(buf) - 1)
            return None
        if i + 2 > MAX_LINE:
            raise LimitExceededError(
                f"a POP3 response line is longer than MAX_LINE ({MAX_LINE} octets)"
            )
        line = bytes(buf[:i])
        self._consume(i + 2)
        self._scan_from = 0
        return line

    def _consume(self, count: int) -> None:
        buf = self._buf
        if count == len(buf):
            self._buf = b""
        elif type(buf) is bytearray:
            # Deleting from the front of a bytearray is O(1) in CPython (it moves a
            # start pointer), so consuming line by line does not copy the rest.
            del buf[:count]
        else:
            self._buf = bytearray(buf[count:])

    @staticmethod
    def _split_status(line: bytes) -> tuple[bool, bytes]:
        if line.startswith(b"+OK"):
            ok, rest = True, line[3:]
        elif line.startswith(b"-ERR"):
            ok, rest = False, line[4:]
        else:
            raise ProtocolError(f"expected +OK or -ERR from the server, got {_decode(line[:80])!r}")
        if rest and rest[:1] != b" ":
            raise ProtocolError(f"malformed POP3 status line: {_decode(line[:80])!r}")
        return ok, rest[1:]

    def _parse_status(self, line: bytes, verb: str) -> Reply:
        ok, text = self._split_status(line)
        match = _RESP_CODE.match(text)
        code = match.group(1).decode("ascii") if match else None
        return Reply(verb, ok, _decode(text), code)

    def _on_greeting(self, line: bytes) -> Greeting:
        ok, text = self._split_status(line)
        match = _RESP_CODE.match(text)
        code = match.group(1).decode("ascii") if match else None
        stamp = _APOP_TIMESTAMP.search(text) if ok else None
        self._apop_timestamp = stamp.group(0) if stamp else None
        self._pending.popleft()
        self._transition(Trigger.GREETING_OK if ok else Trigger.GREETING_ERR)
        return Greeting(ok, _decode(text), code, self.apop_timestamp)

    def _on_auth_challenge(self, raw: bytes) -> AuthChallenge:
        auth = self._auth
        assert auth is not None  # an AUTH pending always has its exchange
        if auth.error_answered:
            raise ProtocolError(
                "the server sent another AUTH challenge after the error challenge was "
                "answered; it must fail the exchange (RFC 7628 §3.2.2)"
            )
        challenge = decode_error_challenge(raw) if auth.initial_sent else None
        auth.challenge = raw
        return AuthChallenge(raw, challenge)

    def _read_listing(self, head: _Pending) -> Event | Literal[NeedData.NEED_DATA]:
        if head.kind in (_Kind.STAT, _Kind.LIST_ONE, _Kind.UIDL_ONE):
            single = self._parse_single(head.kind, self._status_text)
            self._finish()
            return single
        lines = self._listing_lines
        while True:
            line = self._read_line()
            if line is None:
                return self._need_data(head)
            if line == b".":
                break
            self._listing_size += len(line) + 2
            if self._listing_size > MAX_LISTING_SIZE:
                raise LimitExceededError(
                    f"the {head.verb} response is larger than MAX_LISTING_SIZE "
                    f"({MAX_LISTING_SIZE} octets)"
                )
            lines.append(line[1:] if line.startswith(b"..") else line)
        self._listing_lines = []
        event: Event
        if head.kind is _Kind.CAPA:
            event = _parse_capabilities(lines)
        elif head.kind is _Kind.LIST_ALL:
            event = Listing(tuple(_parse_scan(line, "scan listing") for line in lines))
        else:
            event = UidListing(tuple(_parse_uid(line) for line in lines))
        self._finish()
        return event

    @staticmethod
    def _parse_single(kind: _Kind, text: bytes) -> Event:
        if kind is _Kind.STAT:
            count, size = _parse_scan(text, "STAT reply")
            return Stat(count, size)
        if kind is _Kind.LIST_ONE:
            return Listing((_parse_scan(text, "scan listing"),))
        return UidListing((_parse_uid(text),))

    def _read_body(self) -> Event | Literal[NeedData.NEED_DATA]:
        if self._body_ended:
            self._body_ended = False
            self._finish()
            return MessageEnd()
        buf = self._buf
        n = len(buf)
        start = 0
        if self._body_line_start:
            # The first line has no CRLF before it in the buffer, so check it by hand.
            if n == 0:
                return self._need_data(self._pending[0])
            if buf[0] == _DOT:
                if n < 2 or (buf[1] == _CR and n < 3):
                    return self._need_data(self._pending[0])
                if buf[1] == _DOT:
                    start = 1
                elif buf[1] == _CR and buf[2] == _LF:
                    self._consume(3)
                    self._finish()
                    return MessageEnd()
            self._body_line_start = False
        data, consumed, ended, self._scan_dots = _unstuff(buf, start, self._scan_dots)
        self._consume(consumed)
        if ended:
            if not data:
                self._finish()
                return MessageEnd()
            self._body_ended = True
        elif not data:
            return self._need_data(self._pending[0])
        return MessageData(data)


def _unstuff(
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


def _parse_scan(text: bytes, what: str) -> tuple[int, int]:
    parts = text.split()
    if len(parts) < 2:
        raise ProtocolError(f"malformed {what} from the server: {_decode(text[:80])!r}")
    return _parse_int(parts[0], what), _parse_int(parts[1], what)


def _parse_uid(text: bytes) -> tuple[int, str]:
    parts = text.split()
    # RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
    if len(parts) < 2 or not parts[1].isascii():
        raise ProtocolError(f"malformed unique-id listing: {_decode(text[:80])!r}")
    return _parse_int(parts[0], "unique-id listing"), parts[1].decode("ascii")


def _parse_capabilities(lines: list[bytes]) -> Capabilities:
    caps: dict[str, tuple[str, ...]] = {}
    for line in lines:
        words = _decode(line).split()
        if not words:
            continue
        name = words[0].upper()
        caps[name] = caps.get(name, ()) + tuple(words[1:])
    return Capabilities(caps)
