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

The module is the session (state, pipelining, SASL) and the commands; the events are in
:mod:`mailoauth.pop3.events`, the readers of response data and the table that picks
them by response kind in :mod:`mailoauth.pop3.readers`, the states and their
transitions in :mod:`mailoauth.pop3._states`. Every name is also exported from here.

Message bodies are streamed: :class:`MessageData` chunks hold the bytes exactly as the
server sent them after dot-unstuffing (the CRLF before the final ``.`` belongs to the
message), never decoded and never collected whole. The one exception is
:meth:`Pop3Protocol.next_message`, for a driver that wants the message as one value: a
reply of at most :data:`~mailoauth.pop3.readers.WHOLE_MESSAGE_MAX` bytes comes whole,
in one step; a longer one streams as above.

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

import hashlib
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from mailoauth._util.text import refuse_controls
from mailoauth.errors import (
    ConfigurationError,
    ConnectionLostError,
    ProtocolError,
)
from mailoauth.pop3._states import (
    ALLOWED_COMMANDS,
    BARRIER_COMMANDS,
    REPLY_TRIGGERS,
    TRANSITIONS,
    State,
    Trigger,
)
from mailoauth.pop3.events import (
    NEED_DATA,
    AuthChallenge,
    Capabilities,
    ConnectionClosed,
    Event,
    Greeting,
    Listing,
    MessageData,
    MessageEnd,
    NeedData,
    Reply,
    Stat,
    UidListing,
)
from mailoauth.pop3.readers import (
    MAX_LINE,
    MAX_LISTING_SIZE,
    READERS,
    Reader,
    ReceiveBuffer,
    ResponseKind,
    decode,
    dot_stuff,
    response_code,
    split_status,
    whole_message,
)
from mailoauth.sasl import (
    POP3_MAX_AUTH_LINE,
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

#: Longest command line we produce, CRLF included (RFC 2449 §4). Continuation lines
#: of AUTH are not commands and are not limited (long tokens must get through).
MAX_COMMAND_LINE: Final = 255

_CRLF: Final = b"\r\n"
# RFC 1939 §7: the APOP timestamp is a msg-id, "<" ... "@" ... ">", in the greeting.
_APOP_TIMESTAMP: Final = re.compile(rb"<[^<>\s@]+@[^<>\s]+>")
_K = ResponseKind


@dataclass(frozen=True, slots=True)
class _Pending:
    verb: str
    kind: ResponseKind


@dataclass(slots=True)
class _AuthExchange:
    mechanism: Mechanism
    initial_sent: bool
    challenge: bytes | None = None  # the raw challenge awaiting auth_continue()
    error_answered: bool = False


# What a RETR awaits (immutable: one serves them all).
_RETR: Final = _Pending("RETR", _K.MESSAGE)


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
        self._allowed = ALLOWED_COMMANDS[self._state]  # the commands legal in it
        self._buf = ReceiveBuffer()
        self._pending: deque[_Pending] = deque([_Pending("GREETING", _K.GREETING)])
        self._barrier: str | None = None
        self._apop_timestamp: bytes | None = None
        self._auth: _AuthExchange | None = None
        self._tls_started = False
        # The reader of the head response's data, once its +OK line has been read.
        self._reader: Reader | None = None

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

    @property
    def _scan_dots(self) -> bool:
        # How message bodies are scanned for the rest of the session (see
        # mailoauth.pop3.readers.unstuff); read by a test.
        return self._buf.scan_dots

    # -- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the server; ``b""`` means it closed the connection.

        Raises :class:`~mailoauth.errors.ConfigurationError` if called after ``b""``.
        """
        if self._buf.eof:
            raise ConfigurationError("receive_data() called after the end of the stream")
        self._buf.feed(data)

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

    def next_message(self) -> bytes | Event | Literal[NeedData.NEED_DATA]:
        """:meth:`next_event`, with a fast path for a small RETR/TOP reply.

        When the next response is a message, returns its content (dot-unstuffed, the
        :class:`MessageData` chunks joined) once the status line, the body and the
        terminator are all buffered, in one step instead of :class:`Reply`,
        :class:`MessageData`... and :class:`MessageEnd`; :data:`NEED_DATA` until then
        while it may still come whole within
        :data:`~mailoauth.pop3.readers.WHOLE_MESSAGE_MAX` bytes. Otherwise (a ``-ERR``,
        a longer message, any other response, the data of a message already begun)
        it is :meth:`next_event`: the :class:`Reply`, then the message's events. Raises
        what :meth:`next_event` raises.
        """
        pending = self._pending
        if (
            self._reader is None
            and pending
            and pending[0].kind is _K.MESSAGE
            and self._state is not State.ERROR
        ):
            content = whole_message(self._buf)
            if content is not None:
                if content is not NEED_DATA:
                    pending.popleft()  # neither a barrier nor a state change
                return content
        return self.next_event()

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
        discarded = self._buf.discard()
        self._tls_started = True
        self._transition(Trigger.TLS_STARTED)
        return discarded

    # -- commands ---------------------------------------------------------------------

    def user(self, name: str) -> bytes:
        """``USER name``. Raises ConfigurationError if illegal now or ``name`` has CR/LF/NUL."""
        _check_arg(name, "user name")
        return self._command("USER", _K.STATUS, name)

    def pass_(self, password: str) -> bytes:
        """``PASS password`` (may contain spaces). Raises ConfigurationError like :meth:`user`."""
        _check_arg(password, "password")
        return self._command("PASS", _K.STATUS, password, secret=True)

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
        return self._command("APOP", _K.STATUS, f"{name} {digest}", secret=True)

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
        self._enqueue("AUTH", _K.AUTH)
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
        return self._command("STLS", _K.STATUS)

    def capa(self) -> bytes:
        """``CAPA`` (RFC 2449). Raises ConfigurationError if illegal now."""
        return self._command("CAPA", _K.CAPA)

    def stat(self) -> bytes:
        """``STAT``. Raises ConfigurationError if illegal now."""
        return self._command("STAT", _K.STAT)

    def list(self, number: int | None = None) -> bytes:
        """``LIST`` or ``LIST n``. Raises ConfigurationError if illegal now or n < 1."""
        if number is None:
            return self._command("LIST", _K.LIST_ALL)
        _check_msg_number(number)
        return self._command("LIST", _K.LIST_ONE, str(number))

    def uidl(self, number: int | None = None) -> bytes:
        """``UIDL`` or ``UIDL n``. Raises ConfigurationError if illegal now or n < 1."""
        if number is None:
            return self._command("UIDL", _K.UIDL_ALL)
        _check_msg_number(number)
        return self._command("UIDL", _K.UIDL_ONE, str(number))

    def retr(self, number: int) -> bytes:
        """``RETR n``. Raises ConfigurationError if illegal now or n < 1."""
        _check_msg_number(number)
        line = b"RETR %d\r\n" % number
        if len(line) > MAX_COMMAND_LINE:
            return self._command("RETR", _K.MESSAGE, str(number))  # which refuses it
        self._check_can_send("RETR")
        self._pending.append(_RETR)
        return line

    def retr_many(self, numbers: Sequence[int]) -> bytes:
        """``RETR n`` for each of ``numbers``, as one write (for PIPELINING, RFC 2449;
        the replies come back in order). Raises ConfigurationError like :meth:`retr`,
        before anything is queued."""
        for number in numbers:
            _check_msg_number(number)
        self._check_can_send("RETR")
        self._pending.extend(_RETR for _ in numbers)
        return b"".join(b"RETR %d\r\n" % number for number in numbers)

    def top(self, number: int, lines: int) -> bytes:
        """``TOP n lines``. Raises ConfigurationError if illegal now, n < 1 or lines < 0."""
        _check_msg_number(number)
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise ConfigurationError(f"TOP needs a line count >= 0, got {lines!r}")
        return self._command("TOP", _K.MESSAGE, f"{number} {lines}")

    def dele(self, number: int) -> bytes:
        """``DELE n``. Raises ConfigurationError if illegal now or n < 1."""
        _check_msg_number(number)
        return self._command("DELE", _K.STATUS, str(number))

    def noop(self) -> bytes:
        """``NOOP``. Raises ConfigurationError if illegal now."""
        return self._command("NOOP", _K.STATUS)

    def rset(self) -> bytes:
        """``RSET``. Raises ConfigurationError if illegal now."""
        return self._command("RSET", _K.STATUS)

    def quit(self) -> bytes:
        """``QUIT``; from TRANSACTION this enters UPDATE. Raises ConfigurationError if illegal."""
        line = self._command("QUIT", _K.STATUS)
        self._transition(Trigger.QUIT_SENT)
        return line

    # -- internals: sending -----------------------------------------------------------

    def _check_can_send(self, verb: str) -> None:
        if self._barrier is not None:
            raise ConfigurationError(
                f"cannot send {verb} before the reply to {self._barrier} has been read"
            )
        if verb not in self._allowed:
            raise ConfigurationError(f"{verb} is not allowed in the {self._state.value} state")

    def _enqueue(self, verb: str, kind: ResponseKind) -> None:
        self._pending.append(_Pending(verb, kind))
        if verb in BARRIER_COMMANDS:
            self._barrier = verb

    def _command(
        self, verb: str, kind: ResponseKind, arg: str | None = None, *, secret: bool = False
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
        self._allowed = ALLOWED_COMMANDS[self._state]

    # -- internals: parsing -----------------------------------------------------------

    def _next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        buf = self._buf
        if not self._pending:
            if buf.data:
                raise ProtocolError(
                    f"unsolicited data from the server: {decode(bytes(buf.data[:80]))!r}"
                )
            if buf.eof:
                if self._state is not State.CLOSED:
                    self._transition(Trigger.PEER_CLOSED)
                return ConnectionClosed()
            return NEED_DATA
        reader = self._reader
        if reader is not None:
            event = reader.read(buf)
            if reader.done:
                self._reader = None
                self._finish()
            elif event is NEED_DATA:
                return self._need_data()
            return event
        line = buf.read_line()
        if line is None:
            return self._need_data()
        head = self._pending[0]
        kind = head.kind
        if kind is _K.GREETING:
            return self._on_greeting(line)
        if kind is _K.AUTH and (line == b"+" or line.startswith(b"+ ")):
            return self._on_auth_challenge(line[2:])
        ok, text = split_status(line)
        reply = Reply(head.verb, ok, decode(text), response_code(text))
        factory = READERS[kind]
        if not ok or factory is None:
            self._finish(reply)
        else:
            self._reader = factory(head.verb, text)
        return reply

    def _need_data(self) -> Literal[NeedData.NEED_DATA]:
        if self._buf.eof:
            raise ConnectionLostError(
                f"the server closed the connection before answering {self._pending[0].verb}"
            )
        return NEED_DATA

    def _finish(self, reply: Reply | None = None) -> None:
        """The head response is complete: pop it and apply its state effects."""
        head = self._pending.popleft()
        if head.verb == self._barrier:
            self._barrier = None
        if reply is None:
            return
        if head.kind is _K.AUTH:
            self._auth = None
        trigger = REPLY_TRIGGERS.get((head.verb, reply.ok))
        if trigger is not None:
            self._transition(trigger)

    def _on_greeting(self, line: bytes) -> Greeting:
        ok, text = split_status(line)
        stamp = _APOP_TIMESTAMP.search(text) if ok else None
        self._apop_timestamp = stamp.group(0) if stamp else None
        self._pending.popleft()
        self._transition(Trigger.GREETING_OK if ok else Trigger.GREETING_ERR)
        return Greeting(ok, decode(text), response_code(text), self.apop_timestamp)

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
