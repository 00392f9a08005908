"""A scripted ESMTP server for the pipelining tests: it offers what a test asks
(PIPELINING, CHUNKING, ...), answers each command as the test scripts it, and records
what arrived.

With ``hold_replies`` it answers a pipelined group only once the group's last command
(DATA, BDAT ... LAST, RSET, NOOP, QUIT) has arrived: a client that waits for each
reply before the next command never gets one, so that only a pipelining client can
send through it. Plaintext on 127.0.0.1, port 0, on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

Reply = bytes | None  # None: the default for the command


@dataclass
class Script:
    """How the server answers. Reply functions get the command's argument."""

    extensions: tuple[str, ...] = ("PIPELINING", "CHUNKING", "8BITMIME", "SIZE 1000000")
    mail: Callable[[str], Reply] = lambda arg: None
    rcpt: Callable[[str], Reply] = lambda arg: None
    data_start: Callable[[int], Reply] = lambda accepted: None
    data_end: Callable[[bytes], Reply] = lambda body: None
    #: Close the connection when this command (its verb) arrives, without replying...
    close_on: str | None = None
    #: ... in this many sessions (the first ones).
    close_sessions: int = 1_000_000
    #: Never answer this verb (the client must time out).
    silent_on: str | None = None
    hold_replies: bool = False


@dataclass
class Session:
    commands: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    #: Whether any command arrived while the one before it was still unanswered.
    pipelined: bool = False
    #: For each command: whether more bytes had already arrived behind it.
    followed: list[bool] = field(default_factory=list)


class ScriptedSmtp:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.sessions: list[Session] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedSmtp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script, session = self.script, Session()
        self.sessions.append(session)
        held: list[bytes] = []
        accepted = 0
        in_mail = False

        def reply(line: bytes, *, flush: bool) -> None:
            held.append(line if line.endswith(b"\r\n") else line + b"\r\n")
            if flush or not script.hold_replies:
                writer.write(b"".join(held))
                held.clear()

        writer.write(b"220 scripted ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                return
            followed = bool(reader._buffer)  # type: ignore[attr-defined]
            session.followed.append(followed)
            if not held and followed:
                session.pipelined = True
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, arg = command.partition(" ")
            verb = verb.upper()
            session.commands.append(command)
            if verb == (script.close_on or "").upper() and (
                len(self.sessions) <= script.close_sessions
            ):
                writer.close()
                return
            if verb == (script.silent_on or "").upper():
                await asyncio.sleep(3600)
            if verb == "EHLO":
                lines = ["scripted", "AUTH XOAUTH2 OAUTHBEARER", *script.extensions]
                text = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}"
                reply(text.encode(), flush=True)
            elif verb == "AUTH":
                reply(b"235 2.7.0 ok", flush=True)
            elif verb == "MAIL":
                answer = script.mail(arg)
                in_mail = answer is None
                accepted = 0
                reply(answer or b"250 2.1.0 ok", flush=False)
            elif verb == "RCPT":
                answer = script.rcpt(arg) if in_mail else b"503 5.5.1 need MAIL"
                accepted += answer is None
                reply(answer or b"250 2.1.5 ok", flush=False)
            elif verb == "DATA":
                answer = script.data_start(accepted)
                if answer is None and (not in_mail or not accepted):
                    answer = b"554 5.5.1 no valid recipients"
                reply(answer or b"354 go ahead", flush=True)
                if answer is not None and not answer.startswith(b"354"):
                    continue
                body = bytearray()
                while (chunk := await reader.readline()) != b".\r\n":
                    if not chunk:
                        return
                    body += chunk[1:] if chunk.startswith(b".") else chunk
                session.bodies.append(bytes(body))
                reply(self._end(bytes(body), in_mail and accepted > 0), flush=True)
                in_mail = False
            elif verb == "BDAT":
                size, *last = arg.split()
                chunk = await reader.readexactly(int(size))
                session.bodies.append(chunk)
                reply(self._end(chunk, in_mail and accepted > 0), flush=True)
                in_mail = False
                assert last == ["LAST"]
            elif verb == "RSET":
                in_mail = False
                reply(b"250 2.0.0 reset", flush=True)
            elif verb == "NOOP":
                reply(b"250 2.0.0 ok", flush=True)
            elif verb == "QUIT":
                reply(b"221 2.0.0 bye", flush=True)
                await writer.drain()
                return
            else:
                reply(b"502 5.5.2 unknown command", flush=True)

    def _end(self, body: bytes, ok: bool) -> bytes:
        if not ok:
            return b"554 5.5.1 no valid recipients"
        return self.script.data_end(body) or b"250 2.0.0 queued as SCRIPTED"
