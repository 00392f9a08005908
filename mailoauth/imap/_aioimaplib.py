"""Every aioimaplib workaround lives here.

aioimaplib (2.x) parses IMAP well but: it has no STARTTLS, never answers an
AUTHENTICATE error challenge (it waits until its timeout), has no OAUTHBEARER, logs
command arguments at DEBUG, leaves pending commands (and the wait for the greeting)
waiting forever when the connection drops, accepts any greeting containing "OK", and
buffers lines and literals without bound (re-scanning a partial line on every read).
This module adds what is missing around its protocol object without forking it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

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
    "NONAUTH",
    "SELECTED",
    "AuthenticateCommand",
    "ImapProtocol",
    "RawCommand",
]

#: Unsolicited mailbox-size updates kept between commands; older ones add nothing.
MAX_UNSOLICITED: Final = 64
_MAILBOX_SIZE = re.compile(rb"^\* \d+ (EXISTS|RECENT)\b")

AUTH = _aio.AUTH
NONAUTH = _aio.NONAUTH
SELECTED = _aio.SELECTED

#: Longest response line held while waiting for its CRLF (literals not included). A
#: UID SEARCH of a million-message mailbox is about 8 MB on one line; leave room.
MAX_LINE: Final = 16 * 1024 * 1024
#: Largest literal a server may announce. Above any provider's message size limit
#: (Gmail 50 MB, Exchange Online 150 MB); a literal is held in memory whole.
MAX_LITERAL: Final = 256 * 1024 * 1024


class ImapProtocol(_aio.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus: BYE is recorded; a lost connection fails every
    pending command, and the wait for the greeting, at once instead of leaving them to
    time out; a greeting that is not IMAP is a :class:`ProtocolError`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, conn_lost_cb=None)
        self.bye: bytes | None = None
        self.lost = False
        #: Why the greeting (and the CAPABILITY that follows it) failed, if it did.
        self.greeting_error: MailOAuthError | None = None
        #: Set when the server went over :data:`MAX_LINE` or :data:`MAX_LITERAL`.
        self.limit_error: LimitExceededError | None = None
        #: ``N EXISTS`` / ``N RECENT`` the server sent beside an unrelated command.
        self.unsolicited: list[bytes] = []
        self._held: list[bytes] = []
        self._held_size = 0
        self._wire_lines: dict[str, str] = {}

    async def welcome(self, command: bytes) -> None:
        # aioimaplib accepts any line containing "OK" and raises its own Error inside a
        # task nobody awaits; record a typed error and wake wait_greeting() instead.
        try:
            if not command.startswith((b"* OK", b"* PREAUTH")):
                text = command[:80].decode("utf-8", "replace")
                raise ProtocolError(f"the server's greeting is not IMAP: {text!r}")
            await super().welcome(command)
        except MailOAuthError as exc:
            self.greeting_error = exc
        except Exception as exc:
            self.greeting_error = ProtocolError(f"the IMAP greeting failed: {exc}")
        else:
            return
        await self._wake_waiters()

    async def _wake_waiters(self) -> None:
        async with self.state_condition:
            self.state_condition.notify_all()

    async def wait_greeting(self) -> None:
        """Wait for the greeting and the capabilities that follow it. Raises
        :class:`ConnectionLostError` if the server hangs up first and
        :class:`ProtocolError` if the greeting is not IMAP."""
        ready = (NONAUTH, AUTH)
        async with self.state_condition:
            await self.state_condition.wait_for(
                lambda: self.state in ready or self.greeting_error is not None or self.lost
            )
        if self.greeting_error is not None:
            raise self.greeting_error
        if self.state not in ready:
            reason = (self.bye or b"before its greeting").decode("utf-8", "replace")
            raise ConnectionLostError(f"the IMAP server closed the connection {reason}")

    def _untagged_response(self, line: bytes) -> object:
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
        return super()._untagged_response(line)

    async def execute(self, command: _aio.Command, scrub: str | None = None) -> _aio.Response:
        # aioimaplib sends str(command), which a RawCommand keeps free of secrets.
        if isinstance(command, RawCommand):
            self._wire_lines[str(command)] = command.wire_line()
        try:
            return await super().execute(command, scrub=scrub)
        finally:
            self._wire_lines.pop(str(command), None)

    def send(self, line: str, scrub: str | None = None) -> None:
        super().send(self._wire_lines.pop(line, line), scrub=scrub)

    def data_received(self, d: bytes) -> None:
        if self.limit_error is not None:
            return
        # aioimaplib buffers a line until its CRLF, and a literal up to the size the
        # server announces, with no bound: a hostile server could fill our memory. It
        # also re-joins and re-scans the partial line on every read (quadratic), so the
        # chunks of a long line are held here until one brings its line end.
        command = self.current_command
        in_literal = command is not None and command.wait_literal_data()
        if self.incomplete_line and not in_literal and b"\n" not in d:
            self._held.append(d)
            self._held_size += len(d)
            if len(self.incomplete_line) + self._held_size > MAX_LINE:
                self._over_limit(f"sent a line over {MAX_LINE} bytes without CRLF")
            return
        if self._held:
            d = b"".join(self._held) + d
            self._held.clear()
            self._held_size = 0
        super().data_received(d)
        command = self.current_command
        if len(self.incomplete_line) > MAX_LINE:
            self._over_limit(f"sent a line over {MAX_LINE} bytes without CRLF")
        elif command is not None and command._expected_size > MAX_LITERAL:
            self._over_limit(
                f"announced a literal of {command._expected_size} bytes (limit {MAX_LITERAL})"
            )

    def _over_limit(self, what: str) -> None:
        error = LimitExceededError(f"the IMAP server {what}; the connection was closed")
        self.limit_error = error
        self.incomplete_line = b""
        self._held.clear()
        self.current_command = None
        if self.greeting_error is None and self.state == _aio.CONNECTED:
            self.greeting_error = error
        self._fail_pending(error)
        if self.transport is not None:
            self.transport.close()

    def _fail_pending(self, error: Exception) -> None:
        commands = list(self.pending_async_commands.values())
        if self.pending_sync_command is not None:
            commands.append(self.pending_sync_command)
        for command in commands:
            if command is not None and not command._event.is_set():
                command._exception = error
                command._timer.cancel()
                command._event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = (self.bye or b"connection closed").decode("utf-8", "replace")
        self._fail_pending(ConnectionLostError(f"the IMAP server closed the connection: {reason}"))
        task = asyncio.ensure_future(self._wake_waiters())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        super().connection_lost(exc)

    def reset_after_starttls(self) -> None:
        """Drop bytes buffered before the TLS handshake (they can only be injected)."""
        self.incomplete_line = b""
        self._held.clear()
        self._held_size = 0
        self.current_command = None


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
