"""Every aioimaplib workaround lives here.

aioimaplib (2.x) parses IMAP well but: it has no STARTTLS, never answers an
AUTHENTICATE error challenge (it waits until its timeout), has no OAUTHBEARER, logs
command arguments at DEBUG, leaves pending commands (and the wait for the greeting)
waiting forever when the connection drops, accepts any greeting containing "OK", and
buffers lines and literals without bound (re-scanning a partial line on every read).
Its response handler recurses once per line (a read of ~1,000 lines raises
RecursionError) and copies the rest of the read for every line (quadratic), its FETCH
command re-scans the whole response after every line (quadratic again), and it deletes
every ``"* "`` inside an untagged line, not only the leading one. This module adds what
is missing around its protocol object without forking it: :meth:`ImapProtocol.
data_received` is an iterative replacement for its handler, calling its per-line
dispatch (``_handle_line``) unchanged. Upstream reports: docs/upstream/aioimaplib.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

from aioimaplib import aioimaplib as _aio

from mailoauth.errors import (
    ConnectionLostError,
    LimitExceededError,
    MailOAuthError,
    ProtocolError,
)
from mailoauth.sasl import ErrorChallenge, Mechanism, decode_error_challenge

__all__ = [
    "AUTH",
    "MAX_LINE",
    "MAX_LITERAL",
    "MAX_RESPONSE",
    "NONAUTH",
    "SELECTED",
    "AuthenticateCommand",
    "Command",
    "ImapProtocol",
    "RawCommand",
]

#: Unsolicited mailbox-size updates kept between commands; older ones add nothing.
MAX_UNSOLICITED: Final = 64
_MAILBOX_SIZE = re.compile(rb"^\* \d+ (EXISTS|RECENT)\b")

AUTH = _aio.AUTH
NONAUTH = _aio.NONAUTH
#: aioimaplib's command object (name, tag, arguments; ``prefix="UID"``).
Command = _aio.Command
SELECTED = _aio.SELECTED

#: Longest response line held while waiting for its CRLF (literals not included). A
#: UID SEARCH of a million-message mailbox is about 8 MB on one line; leave room.
MAX_LINE: Final = 16 * 1024 * 1024
#: Largest literal a server may announce. Above any provider's message size limit
#: (Gmail 50 MB, Exchange Online 150 MB); a literal is held in memory whole.
MAX_LITERAL: Final = 256 * 1024 * 1024
#: Largest response to one command held in memory, lines and literals together (a
#: FETCH is held whole until its tagged completion; during IDLE, what the server pushed
#: and the caller has not read yet). Two 150 MB messages in one FETCH go over it:
#: fetch fewer messages per call, or raise it with ``ImapClient(max_response_size=)``.
MAX_RESPONSE: Final = 256 * 1024 * 1024
#: During IDLE, stop reading the socket while this many bytes of pushed lines wait for
#: the caller (an ``async for`` over ``ImapClient.idle()`` whose body is slow), and read
#: again once the caller has taken them down to a quarter of it: the server's pushes
#: wait in the TCP buffers instead of in memory. Ending the IDLE reads again at once.
IDLE_PAUSE_READING_AT: Final = 1024 * 1024
_CRLF: Final = b"\r\n"
_CONNECTED: Final = _aio.CONNECTED
_IdleCommand: Final = _aio.IdleCommand
#: aioimaplib's literal pattern (``.*\{(?P<size>\d+)\}$``), tried only on lines
#: that can match it: ``}`` last, or before a final LF (``$`` allows one).
_LITERAL: Final = _aio.literal_data_re
_LITERAL_ENDS: Final = (b"}", b"}\n")
#: ``[CAPABILITY IMAP4rev1 ...]`` at the start of a status response's text (RFC 3501 §7.1).
_CAPABILITY_CODE: Final = re.compile(rb"\[CAPABILITY ([^\]\r\n]+)\]", re.IGNORECASE)


#: Capability sets already seen, by the text they were read from: one shared frozenset
#: for all the connections to a server instead of ~40 strings and a set each (4.4 KB
#: per connection). Bounded: cleared when full (a server per entry, or two).
_CAPABILITY_SETS: dict[bytes, frozenset[str]] = {}
_CAPABILITY_SETS_MAX: Final = 256


def capability_set(text: bytes) -> frozenset[str]:
    """The capabilities named (space-separated) in ``text``, as a frozenset shared with
    every other connection that read the same text, of interned strings."""
    shared = _CAPABILITY_SETS.get(text)
    if shared is None:
        names = text.decode("ascii", "replace").split()
        shared = frozenset(sys.intern(name) for name in names)
        if len(_CAPABILITY_SETS) >= _CAPABILITY_SETS_MAX:
            _CAPABILITY_SETS.clear()
        _CAPABILITY_SETS[bytes(text)] = shared
    return shared


def capabilities_in_code(line: bytes) -> frozenset[str] | None:
    """The capabilities in a ``[CAPABILITY ...]`` response code that opens the text of
    a status response (``* OK [CAPABILITY ...] ready``, or a tagged completion's text
    as aioimaplib keeps it, ``[CAPABILITY ...] Logged in``); None without one. Shared
    and immutable (see :func:`capability_set`)."""
    if line.startswith(b"* "):
        parts = line.split(b" ", 2)  # "*", the status, the text
        line = parts[2] if len(parts) == 3 else b""
    code = _CAPABILITY_CODE.match(line)
    return None if code is None else capability_set(code.group(1))


def _imap4rev1(capabilities: frozenset[str]) -> bool:
    return any(c.upper() == "IMAP4REV1" for c in capabilities)


class _FetchCommand(_aio.FetchCommand):  # type: ignore[misc]
    """aioimaplib's FetchCommand re-scans every line of the response after each new
    line to see whether a message's parentheses are balanced: quadratic in the number
    of messages. This one keeps a running count over the lines it has not seen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scanned = 0
        self._depth = 0

    def wait_data(self) -> bool:
        # Same answer as upstream: parentheses of the bytes lines (literals, which are
        # bytearrays, excluded) from the last "N FETCH (" line on must balance.
        lines = self._resp_lines
        for i in range(self._scanned, len(lines)):
            line = lines[i]
            if type(line) is bytes:
                if self.FETCH_MESSAGE_DATA_RE.match(line):
                    self._depth = 0
                self._depth += line.count(b"(") - line.count(b")")
        self._scanned = len(lines)
        return self._depth != 0


class _Signal:
    """What aioimaplib uses of an ``asyncio.Event`` (``set``, ``clear``, ``is_set``,
    ``wait``), slotted and holding a list of waiters only while someone waits: an
    Event costs ~800 bytes (its deque) on every connection, idle or not."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        """Return True once set (at once if it is). Cancellable."""
        if self._set:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class _NoTimer:
    """The timer of a command without a timeout: aioimaplib makes an ``asyncio.Handle``
    (and a context copy) per command just to cancel it."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


_NO_TIMER: Final = _NoTimer()


class _LineQueue:
    """What aioimaplib and :class:`ImapProtocol` use of the ``asyncio.Queue`` of IDLE
    lines (``put_nowait``, ``put``, ``get``, ``get_nowait``, ``empty``, ``qsize``),
    unbounded as aioimaplib's is (the protocol bounds it: ``IDLE_PAUSE_READING_AT``),
    slotted, holding a list only while items or getters exist: an asyncio.Queue costs
    ~3 KB per connection (three deques and an Event). An item stays queued until a
    getter returns it, so a getter cancelled after being woken loses nothing."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = []
        self._items.append(item)
        getters, self._getters = self._getters, None
        for getter in getters or ():
            if not getter.done():
                getter.set_result(None)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        """The oldest item; raises ``asyncio.QueueEmpty`` when there is none."""
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.pop(0)
        if not self._items:
            self._items = None
        return item

    async def get(
        self, timeout: float | None = None, taken: Callable[[Any], None] | None = None
    ) -> Any:
        """The oldest item, waiting for one (items are never None); None when
        ``timeout`` seconds pass first (one loop timer: no cancel scope is held while
        waiting). ``taken`` is called with the item before it is returned, so that a
        caller needs no coroutine of its own around this one. Cancellable."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._items:
            if deadline is not None and loop.time() >= deadline:
                return None
            getter: asyncio.Future[None] = loop.create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            timer = None if deadline is None else loop.call_at(deadline, _wake, getter)
            try:
                await getter
            finally:
                if timer is not None:
                    timer.cancel()
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
        item = self.get_nowait()
        if taken is not None:
            taken(item)
        return item


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ImapProtocol(_aio.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus: BYE is recorded; a lost connection fails every
    pending command, and the wait for the greeting, at once instead of leaving them to
    time out; a greeting that is not IMAP is a :class:`ProtocolError`; responses of any
    length are parsed iteratively within :data:`MAX_LINE`, :data:`MAX_LITERAL` and
    ``max_response`` (:data:`MAX_RESPONSE`), else :class:`LimitExceededError`; bytes
    after a STARTTLS go-ahead are never parsed.

    Slotted, aioimaplib's attributes included: no instance ``__dict__`` is made (with
    ~40 attributes it is a 1.5 KB table per connection).
    """

    # Every attribute, aioimaplib's (IMAP4ClientProtocol.__init__) and mailoauth's.
    __slots__ = (
        "_greeting",
        "_held",
        "_held_size",
        "_idle_batches",
        "_idle_bytes",
        "_idle_ended",
        "_idle_event",
        "_idle_unread",
        "_injected",
        "_pipelined",
        "_reading_paused",
        "_response_size",
        "_state_condition",
        "_tasks",
        "_tls_pending",
        "_welcomed",
        "_wire_lines",
        "bye",
        "capabilities",
        "conn_lost_cb",
        "current_command",
        "fatal_error",
        "greeting_error",
        "idle_queue",
        "imap_version",
        "incomplete_line",
        "limit_error",
        "literal_data",
        "loop",
        "lost",
        "max_response",
        "pending_async_commands",
        "pending_sync_command",
        "state",
        "tagnum",
        "tagpre",
        "transport",
        "unsolicited",
    )

    current_command: _aio.Command | None
    pending_sync_command: _aio.Command | None
    _state_condition: asyncio.Condition | None
    _tasks: set[asyncio.Future[Any]] | None

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, max_response: int = MAX_RESPONSE
    ) -> None:
        super().__init__(loop, conn_lost_cb=None)
        # Lighter stand-ins for aioimaplib's per-connection asyncio objects (memory
        # per idle connection; see _Signal, _LineQueue and state_condition).
        self.idle_queue = _LineQueue()
        self._idle_event = _Signal()
        self.max_response = max_response
        self.bye: bytes | None = None
        self.lost = False
        #: Why the greeting (and the CAPABILITY that follows it) failed, if it did.
        self.greeting_error: MailOAuthError | None = None
        #: Set when the server went over :data:`MAX_LINE`, :data:`MAX_LITERAL` or
        #: :attr:`max_response`.
        self.limit_error: LimitExceededError | None = None
        #: Why the connection was given up (a limit, or a response out of order).
        self.fatal_error: MailOAuthError | None = None
        #: ``N EXISTS`` / ``N RECENT`` the server sent beside an unrelated command.
        self.unsolicited: list[bytes] = []
        self._held: list[bytes] = []
        self._held_size = 0
        self._response_size = 0
        #: Bytes of IDLE lines counted but not yet queued, and of each queued batch.
        self._idle_bytes = 0
        self._idle_batches: list[int] = []
        #: Bytes of the queued batches (what the caller has not taken yet).
        self._idle_unread = 0
        #: The IDLE for which DONE was sent (its completion must be read).
        self._idle_ended: _aio.Command | None = None
        self._reading_paused = False
        #: After a STARTTLS go-ahead: plaintext bytes received (and never parsed).
        self._tls_pending = False
        self._injected = 0
        self._welcomed = False
        #: Set when the greeting came (or the connection ended before it).
        self._greeting = _Signal()
        #: Commands sent after :attr:`pending_sync_command` without waiting for it
        #: (:meth:`pipeline`), in the order sent: each becomes the pending one in turn.
        #: (Lists, not deques: an empty deque holds a 760-byte block.)
        self._pipelined: list[_aio.Command] = []
        #: RawCommand lines to send, by their str(); None while there are none.
        self._wire_lines: dict[str, str] | None = None

    @property
    def state_condition(self) -> asyncio.Condition:
        """aioimaplib's lock around its state-changing commands (LOGIN, SELECT, CLOSE,
        LOGOUT methods, which mailoauth does not call): made on first use, not for
        every connection (~1 KB each)."""
        condition: asyncio.Condition | None = self._state_condition
        if condition is None:
            condition = self._state_condition = asyncio.Condition()
        return condition

    @state_condition.setter
    def state_condition(self, condition: asyncio.Condition) -> None:
        # aioimaplib's __init__ assigns one: dropped, made again when first used.
        self._state_condition = None

    @property
    def tasks(self) -> set[asyncio.Future[Any]]:
        """aioimaplib's tasks of this connection (mailoauth's paths start none): made on
        first use, not an empty set (216 bytes) on every connection."""
        tasks: set[asyncio.Future[Any]] | None = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        return tasks

    @tasks.setter
    def tasks(self, tasks: set[asyncio.Future[Any]]) -> None:
        self._tasks = tasks or None

    def _greet(self, line: bytes) -> None:
        """Take the greeting, in the callback that received it (aioimaplib starts a task
        per greeting that sends CAPABILITY whatever the greeting said). Capabilities in
        a ``[CAPABILITY ...]`` code (RFC 3501 §7.1; Dovecot sends them) are used as they
        are, saving a round trip; :meth:`wait_greeting` asks only when none came."""
        if not line.startswith((b"* OK", b"* PREAUTH")):
            # aioimaplib accepts any line containing "OK".
            text = line[:80].decode("utf-8", "replace")
            self.greeting_error = ProtocolError(f"the server's greeting is not IMAP: {text!r}")
        else:
            self.state = AUTH if line.startswith(b"* PREAUTH") else NONAUTH
            sent = capabilities_in_code(line)
            if sent is not None and _imap4rev1(sent):
                self.capabilities = sent
                self.imap_version = "IMAP4REV1"
        self._greeted()

    def _greeted(self) -> None:
        self._greeting.set()

    async def wait_greeting(self) -> None:
        """Wait for the greeting and the server's capabilities: those it sent with the
        greeting, else the answer to a CAPABILITY command. Raises
        :class:`ConnectionLostError` if the server hangs up first and
        :class:`ProtocolError` if the greeting is not IMAP (or the server is not
        IMAP4rev1)."""
        await self._greeting.wait()
        if self.greeting_error is not None:
            raise self.greeting_error
        if self.state not in (NONAUTH, AUTH):
            reason = (self.bye or b"before its greeting").decode("utf-8", "replace")
            raise ConnectionLostError(f"the IMAP server closed the connection {reason}")
        if not self.capabilities:
            try:
                await self.capability()
            except _aio.AioImapException as exc:  # no IMAP4rev1 among them
                raise ProtocolError(f"the IMAP greeting failed: {exc}") from exc

    async def capability(self) -> None:
        """aioimaplib's CAPABILITY, keeping the set shared with every connection that
        read the same list (:func:`capability_set`: Gmail and Exchange Online send none
        with their greeting) instead of ~40 strings and a set per connection. Raises
        aioimaplib's ``Error`` when the server is not IMAP4."""
        response = await self.execute(_aio.Command("CAPABILITY", self.new_tag(), loop=self.loop))
        capabilities = capability_set(bytes(response.lines[0]))
        versions = {c.upper() for c in capabilities} & set(_aio.AllowedVersions)
        if not versions:
            raise _aio.Error("server not IMAP4 compliant")
        self.capabilities = capabilities
        self.imap_version = min(versions, key=_aio.AllowedVersions.index)  # IMAP4rev1 first

    def _untagged_response(self, line: bytes) -> _aio.Command | None:
        if line.startswith(b"* BYE"):
            self.bye = line[2:]
        elif (
            self.pending_sync_command is None
            and _MAILBOX_SIZE.match(line)
            and len(self.unsolicited) < MAX_UNSOLICITED
        ):
            # A server reports new mail with whatever command runs next (RFC 3501
            # §7.3.1); aioimaplib drops it when that command is SEARCH or FETCH. Keep
            # it, so that an IDLE starting next does not wait for a change already seen.
            self.unsolicited.append(line[2:])
        # aioimaplib's own routing, except that it strips every "* " in the line (a
        # folder named "a* b", an envelope's subject), not only the leading one.
        if line.startswith(b"* "):
            line = line[2:]
        if self.pending_sync_command is not None:
            self.pending_sync_command.append_to_resp(line)
            return self.pending_sync_command
        match = _aio.message_data_re.match(line)
        if match:
            name, text = match.group(1), line
        else:
            name, _, text = line.partition(b" ")
        command = self.pending_async_commands.get(name.decode("ascii", "replace").upper())
        if command is not None:
            command.append_to_resp(text)
            return command
        # NOOP is async, and servers may send anything untagged beside it.
        command = self.pending_async_commands.get("NOOP")
        if command is not None:
            command.append_to_resp(line)
        return command

    def _response_done(self, line: bytes) -> None:
        command = self.pending_sync_command
        if type(command) is _IdleCommand:
            # aioimaplib queues IDLE lines only at the end of a read while IDLE is
            # pending: lines that came with the IDLE's completion were dropped. Queue
            # them now; the next idle() reports them first.
            self._queue_idle_lines(command)
        super()._response_done(line)
        if self._pipelined and self.pending_sync_command is None:
            self.pending_sync_command = self._pipelined.pop(0)  # the next one answers
        self._response_size = 0
        self._flow()  # an IDLE that ended reads again
        if command is not None and command.name == "STARTTLS" and command.response.result == "OK":
            # Whatever follows the go-ahead in plaintext can only be injected (RFC 3501
            # §6.2.1, RFC 2595 §3.1): stop parsing until reset_after_starttls().
            self._tls_pending = True

    async def execute(self, command: _aio.Command, scrub: str | None = None) -> _aio.Response:
        # aioimaplib sends str(command), which a RawCommand keeps free of secrets.
        if isinstance(command, RawCommand):
            if self._wire_lines is None:
                self._wire_lines = {}
            self._wire_lines[str(command)] = command.wire_line()
        try:
            return await super().execute(command, scrub=scrub)
        finally:
            if self._wire_lines is not None:
                self._wire_lines.pop(str(command), None)
                if not self._wire_lines:
                    self._wire_lines = None
            if not self.pending_async_commands:
                # An emptied dict keeps its table (184 bytes); clear() lets it go.
                self.pending_async_commands.clear()

    async def fetch(
        self,
        message_set: str,
        message_parts: str,
        by_uid: bool = False,
        timeout: float | None = None,
    ) -> _aio.Response:
        command = _FetchCommand(
            self.new_tag(),
            message_set,
            message_parts,
            prefix="UID" if by_uid else "",
            loop=self.loop,
            timeout=timeout,
        )
        return await self.execute(command)

    def send(self, line: str, scrub: str | None = None) -> None:
        if self._wire_lines is not None:
            line = self._wire_lines.pop(line, line)
        if _aio.log.isEnabledFor(logging.DEBUG):
            super().send(line, scrub=scrub)  # logs the line (scrubbed) as aioimaplib does
        else:  # aioimaplib formats its DEBUG message before the logger can skip it
            self.transport.write(line.encode() + _CRLF)

    async def pipeline(self, *commands: _aio.Command) -> list[_aio.Response]:
        """Send ``commands`` (synchronous ones, without literals or continuations) in
        one write, without waiting for each completion before sending the next (RFC
        3501 §5.5), and return their responses in order. The caller makes sure that
        the sequence is one IMAP allows: each command is answered as if sent alone,
        after the ones before it (a SELECT, then a UID SEARCH in it: if the SELECT
        fails, no mailbox is selected and the search fails with it). Raises as
        :meth:`execute`."""
        first = commands[0]
        if self.state not in _aio.Commands[first.name].valid_states:
            raise _aio.Abort(f"command {first.name} illegal in state {self.state}")
        if self.pending_sync_command is not None:
            await self.pending_sync_command.wait()
        if self.pending_async_commands:
            await self.wait_async_pending_commands()
        self.pending_sync_command = commands[0]
        self._pipelined.extend(commands[1:])
        lines = [str(command) for command in commands]
        if _aio.log.isEnabledFor(logging.DEBUG):
            _aio.log.debug("Sending pipelined : %s", lines)
        self.transport.write(("\r\n".join(lines) + "\r\n").encode())
        for command in commands:
            await command.wait()
        return [command.response for command in commands]

    # -- receiving ----------------------------------------------------------------------

    def data_received(self, d: bytes) -> None:
        """Parse what arrived: iteratively (bounded stack, each byte scanned a bounded
        number of times), within :data:`MAX_LINE`, :data:`MAX_LITERAL` and
        :attr:`max_response`; past a limit, fail every pending command with
        :class:`LimitExceededError` and close the connection."""
        if self.fatal_error is not None:
            return
        if self._tls_pending:
            self._injected += len(d)
            return
        if self._held:
            # Waiting for the end of a line: hold chunks until one brings its CRLF, so a
            # long line is joined once instead of re-scanned on every read.
            if _CRLF not in d and not (d[:1] == b"\n" and self._held[-1][-1:] == b"\r"):
                self._held.append(d)
                self._held_size += len(d)
                if self._held_size > MAX_LINE:
                    self._over_limit(f"sent a line over {MAX_LINE} bytes without CRLF")
                return
            self._held.append(d)
            d = b"".join(self._held)
            self._held.clear()
            self._held_size = 0
        try:
            self._feed(d)
        except _aio.AioImapException as exc:  # e.g. a tagged reply nobody asked for
            self._give_up(ProtocolError(f"the IMAP server sent a response out of order: {exc}"))

    def _feed(self, data: bytes) -> None:
        """aioimaplib's ``_handle_responses`` as a loop over ``data`` by offset."""
        command: _aio.Command | None = self.current_command
        pos, end = 0, len(data)
        while self.fatal_error is None:
            if command is not None and command.wait_literal_data():
                need = command._expected_size - len(command._resp_literal_data)
                command.append_literal_data(data[pos : pos + need])
                pos = min(pos + need, end)
                if command.wait_literal_data():
                    break  # the rest of the literal comes with the next read
                continue
            if self._tls_pending:
                self._injected += end - pos
                command = None
                break
            if pos >= end:
                break
            eol = data.find(_CRLF, pos)
            if eol < 0:
                self._held.append(data[pos:])
                self._held_size = end - pos
                if self._held_size > MAX_LINE:
                    self._over_limit(f"sent a line over {MAX_LINE} bytes without CRLF")
                break
            command = self._line(data[pos:eol], command)
            pos = eol + 2
        self.current_command = command
        pending = self.pending_sync_command
        if type(pending) is _IdleCommand:
            self._queue_idle_lines(pending)
        elif pending is not None:
            pending.flush()

    def _queue_idle_lines(self, idle: _aio.IdleCommand) -> None:
        if idle.buffer:
            self._idle_batches.append(self._idle_bytes)  # what next_idle_lines() takes
            self._idle_unread += self._idle_bytes
            self._idle_bytes = 0
            idle.flush()
            self._flow()

    def _flow(self) -> None:
        """Read back-pressure: pause the transport's reading while an IDLE (not being
        ended) has more than :data:`IDLE_PAUSE_READING_AT` bytes unread; resume below
        a quarter of it, when the IDLE ends, and when the connection is given up."""
        idling = (
            type(self.pending_sync_command) is _IdleCommand
            and self.pending_sync_command is not self._idle_ended
        )
        if not self._reading_paused:
            pause = idling and self._idle_unread > IDLE_PAUSE_READING_AT
        else:
            pause = idling and self._idle_unread > IDLE_PAUSE_READING_AT // 4
        if pause == self._reading_paused or self.transport is None:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    async def start_idle(self) -> _aio.IdleCommand:
        """Send IDLE (after any pending command, as ``execute`` does) and return its
        command without waiting for its completion: no task is held per connection
        while it idles. Wait for the ``+`` with ``wait_for_idle_response``, end it with
        :meth:`idle_done` then :meth:`end_idle`. Raises aioimaplib's ``Abort`` when the
        server has no IDLE or no mailbox is selected."""
        if "IDLE" not in self.capabilities:
            raise _aio.Abort("server has not IDLE capability")
        if self.state not in _aio.Commands["IDLE"].valid_states:
            raise _aio.Abort(f"command IDLE illegal in state {self.state}")
        command = _IdleCommand(self.new_tag(), self.idle_queue, loop=self.loop)
        command._event = _Signal()  # what an idle connection holds: no asyncio.Event
        command._timer = _NO_TIMER  # nor a Handle (IDLE has no aioimaplib timeout)
        if self.pending_sync_command is not None:
            await self.pending_sync_command.wait()
        if self.pending_async_commands:
            await self.wait_async_pending_commands()
        self._idle_event.clear()
        self.pending_sync_command = command
        self.send(str(command))
        return command

    async def end_idle(self, command: _aio.IdleCommand) -> _aio.Response:
        """Wait for the completion of an IDLE from :meth:`start_idle` (after
        :meth:`idle_done`). Raises what failed it (a lost connection, a limit)."""
        try:
            await command.wait()
        finally:
            self._idle_event.clear()
        return command.response

    async def idle(self) -> _aio.Response:
        """aioimaplib's ``idle()``: IDLE until its completion (see :meth:`start_idle`)."""
        return await self.end_idle(await self.start_idle())

    def idle_done(self) -> None:
        """DONE; reads again if the socket was paused: the IDLE's completion must come."""
        self._idle_ended = self.pending_sync_command
        self._flow()
        super().idle_done()

    def _line(self, line: bytes, current: _aio.Command | None) -> _aio.Command | None:
        """Dispatch one line; return the command that the next line continues, if any."""
        if self.state == _CONNECTED:
            # A compliant server sends one greeting line; what else comes before the
            # greeting was taken is ignored (aioimaplib started a task for each).
            if not self._welcomed and line:
                self._welcomed = True
                self._greet(line)
            return None
        command: _aio.Command | None = self._handle_line(line, current)
        if command is not None:
            self._response_size += len(line) + 2
            if type(command) is _IdleCommand:
                self._idle_bytes += len(line) + 2
            if self._response_size > self.max_response:
                self._over_response()
                return None
        if line.endswith(_LITERAL_ENDS):
            literal = _LITERAL.match(line)
            if literal:
                size = int(literal.group("size"))
                if size > MAX_LITERAL:
                    self._over_limit(f"announced a literal of {size} bytes (limit {MAX_LITERAL})")
                    return None
                if command is None:
                    command = _aio.Command("NIL", "unused", loop=self.loop)
                else:
                    self._response_size += size
                    if self._response_size > self.max_response:
                        self._over_response()
                        return None
                command.begin_literal_data(size)
                return command
        if command is not None and command.wait_data():
            return command
        return None

    def forget_unsolicited(self) -> None:
        """Drop what the server reported about the selected mailbox and nobody read yet
        (before selecting another: its changes do not concern the new one)."""
        self.unsolicited.clear()
        while not self.idle_queue.empty():
            self.idle_queue.get_nowait()
        self._idle_batches.clear()
        self._idle_bytes = 0
        self._idle_unread = 0
        self._flow()

    def next_idle_lines(
        self, timeout: float | None = None
    ) -> Coroutine[Any, Any, list[bytes] | None]:
        """The next batch of lines the server pushed during IDLE (empty when the
        connection is gone: check :attr:`lost` and :attr:`fatal_error`); None when
        ``timeout`` seconds pass first. (The queue's own coroutine: an idle connection
        holds one coroutine frame less.)"""
        return cast(
            "Coroutine[Any, Any, list[bytes] | None]",
            self.idle_queue.get(timeout, self._took_idle_lines),
        )

    def _took_idle_lines(self, lines: list[bytes]) -> None:
        if lines and self._idle_batches:
            taken = self._idle_batches.pop(0)
            self._response_size = max(0, self._response_size - taken)
            self._idle_unread -= taken
            self._flow()

    # -- giving up ----------------------------------------------------------------------

    def _over_response(self) -> None:
        self._over_limit(
            f"sent a response over {self.max_response} bytes (max_response_size); fetch "
            f"fewer messages per call, or raise ImapClient(max_response_size=...)"
        )

    def _over_limit(self, what: str) -> None:
        error = LimitExceededError(f"the IMAP server {what}; the connection was closed")
        self.limit_error = error
        self._give_up(error)

    def time_out(self, error: MailOAuthError) -> None:
        """A reply did not come in time: fail every pending command (and the wait for
        the greeting or for IDLE to start) with ``error`` and abort the connection."""
        self._give_up(error)

    def _give_up(self, error: MailOAuthError) -> None:
        self.fatal_error = error
        self.incomplete_line = b""
        self._held.clear()
        self._held_size = 0
        self.current_command = None
        if self.greeting_error is None and self.state == _aio.CONNECTED:
            self.greeting_error = error
        self._greeted()
        self._fail_pending(error)
        self.idle_queue.put_nowait([])  # wake an IDLE reader
        self._idle_event.set()  # and one waiting for IDLE to start
        if self.transport is not None:
            self.transport.abort()  # no TLS close_notify: the session did not end well

    def _fail_pending(self, error: Exception) -> None:
        commands = list(self.pending_async_commands.values())
        if self.pending_sync_command is not None:
            commands.append(self.pending_sync_command)
        commands.extend(self._pipelined)
        # Forgotten as well: a later command would otherwise wait for them first (and
        # leave a "Task exception was never retrieved" behind).
        self.pending_async_commands.clear()
        self.pending_sync_command = None
        self._pipelined.clear()
        for command in commands:
            if command is not None and not command._event.is_set():
                command._exception = error
                command._timer.cancel()
                command._event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = (self.bye or b"connection closed").decode("utf-8", "replace")
        self._fail_pending(ConnectionLostError(f"the IMAP server closed the connection: {reason}"))
        self.idle_queue.put_nowait([])  # wake an IDLE reader
        self._idle_event.set()  # and one waiting for IDLE to start
        self._greeted()
        super().connection_lost(exc)

    def reset_after_starttls(self) -> int:
        """Forget everything received in plaintext before the TLS handshake: bytes after
        the go-ahead (they can only be injected), and what untagged lines taught (mailbox
        sizes, a BYE). Returns how many bytes were discarded."""
        injected = self._injected + self._held_size
        self._tls_pending = False
        self._injected = 0
        self.incomplete_line = b""
        self._held.clear()
        self._held_size = 0
        self.current_command = None
        self.unsolicited.clear()
        self.bye = None
        self._response_size = 0
        return injected


class RawCommand(_aio.Command):  # type: ignore[misc]
    """A command whose str and repr never show its arguments: aioimaplib logs both
    (``continuation line appended to pending sync command %s``). The line sent on the
    wire is :meth:`wire_line`; :meth:`ImapProtocol.execute` arranges for it."""

    def wire_line(self) -> str:
        return str(super().__repr__())

    def __str__(self) -> str:
        return self.__repr__()

    def __repr__(self) -> str:
        return f"{self.tag} {self.name} <arguments hidden>"


class AuthenticateCommand(RawCommand):
    """AUTHENTICATE that answers continuations: the initial response when the server
    lacks SASL-IR, and the mechanism's answer to an error challenge."""

    def __init__(
        self,
        tag: str,
        mechanism: Mechanism,
        *,
        sasl_ir: bool,
        write: Callable[[bytes], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        initial = mechanism.initial_response_b64().decode("ascii")
        args = (mechanism.name, initial) if sasl_ir else (mechanism.name,)
        super().__init__("AUTHENTICATE", tag, *args, loop=loop)
        self._mechanism = mechanism
        self._initial_pending = None if sasl_ir else initial.encode("ascii")
        self._write = write
        self._handled = 0
        self.challenge: ErrorChallenge | None = None

    def flush(self) -> None:
        lines = self._resp_lines
        while self._handled < len(lines):
            line = lines[self._handled]
            if isinstance(line, bytes) and line.startswith(b"+"):
                payload = line[1:].strip()
                del lines[self._handled]
                if self._initial_pending is not None:
                    self._write(self._initial_pending + b"\r\n")
                    self._initial_pending = None
                else:
                    self.challenge = decode_error_challenge(payload)
                    self._write(self._mechanism.respond(payload) + b"\r\n")
                continue
            self._handled += 1
