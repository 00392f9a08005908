"""Every aioimaplib workaround lives here.

aioimaplib (2.x) parses IMAP well but: it has no STARTTLS, never answers an
AUTHENTICATE error challenge (it waits until its timeout), has no OAUTHBEARER, logs
command arguments at DEBUG, and leaves pending commands waiting forever when the
connection drops. This module adds what is missing around its protocol object without
forking it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aioimaplib import aioimaplib as _aio

from mailoauth.errors import ConnectionLostError
from mailoauth.sasl import ErrorChallenge, Mechanism, decode_error_challenge

__all__ = ["AUTH", "NONAUTH", "SELECTED", "AuthenticateCommand", "ImapProtocol", "RawCommand"]

AUTH = _aio.AUTH
NONAUTH = _aio.NONAUTH
SELECTED = _aio.SELECTED


class ImapProtocol(_aio.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus: BYE is recorded, and a lost connection fails every
    pending command at once instead of leaving it to time out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, conn_lost_cb=None)
        self.bye: bytes | None = None
        self.lost = False

    def _untagged_response(self, line: bytes) -> object:
        if line.startswith(b"* BYE"):
            self.bye = line[2:]
        return super()._untagged_response(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = (self.bye or b"connection closed").decode("utf-8", "replace")
        error = ConnectionLostError(f"the IMAP server closed the connection: {reason}")
        commands = list(self.pending_async_commands.values())
        if self.pending_sync_command is not None:
            commands.append(self.pending_sync_command)
        for command in commands:
            if command is not None and not command._event.is_set():
                command._exception = error
                command._timer.cancel()
                command._event.set()
        super().connection_lost(exc)

    def reset_after_starttls(self) -> None:
        """Drop bytes buffered before the TLS handshake (they can only be injected)."""
        self.incomplete_line = b""
        self.current_command = None


class RawCommand(_aio.Command):  # type: ignore[misc]
    """A command whose repr never shows its arguments (aioimaplib logs reprs)."""

    def __str__(self) -> str:
        return str(super().__repr__())

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
