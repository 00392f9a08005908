"""What the test mail servers share: running on the caller's event loop or on a
background one, listening on loopback (implicit TLS and/or plain with STARTTLS), and a
line channel whose every read is capped in size and in time.

A server is started either with ``async with server:`` (on the running loop; the test
must then not block that loop, e.g. run stdlib clients through ``asyncio.to_thread``)
or with ``with server:`` (on a private loop in a daemon thread, for synchronous tests
driving stdlib clients directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSStream

__all__ = [
    "BackgroundLoop",
    "Channel",
    "LineTooLongError",
    "LoopService",
    "StreamServer",
]

log = logging.getLogger("mailoauth.testing")

#: How long starting or stopping a server on a background loop may take.
BACKGROUND_CALL_TIMEOUT: Final = 30.0

_T = TypeVar("_T")
_S = TypeVar("_S", bound="LoopService")


class BackgroundLoop:
    """An event loop running in a daemon thread; :meth:`run` calls into it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the background loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(BACKGROUND_CALL_TIMEOUT)

    def close(self) -> None:
        """Cancel whatever is still running on the loop, then stop and close it."""
        self.run(_cancel_other_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(BACKGROUND_CALL_TIMEOUT)
        self.loop.close()


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=BACKGROUND_CALL_TIMEOUT)


class LoopService(ABC):
    """Something with async :meth:`start` / :meth:`stop`, usable as a sync or async
    context manager (see the module docstring)."""

    _background: BackgroundLoop | None = None

    @abstractmethod
    async def start(self) -> None:
        """Start on the running loop."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop and close every connection; safe to call twice."""

    async def __aenter__(self: _S) -> _S:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __enter__(self: _S) -> _S:
        background = BackgroundLoop(type(self).__name__)
        try:
            background.run(self.start())
        except BaseException:
            background.close()
            raise
        self._background = background
        return self

    def __exit__(self, *exc_info: object) -> None:
        background, self._background = self._background, None
        if background is not None:
            try:
                background.run(self.stop())
            finally:
                background.close()

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on this service's background loop (after ``with service:``)."""
        if self._background is None:
            coro.close()
            raise RuntimeError("call() needs the service started with 'with'")
        return self._background.run(coro)


class LineTooLongError(Exception):
    """A client line went over the server's line limit; the server closes."""


class Channel:
    """A client connection: capped lines, exact reads, sends, STARTTLS.

    Each read waits at most ``timeout`` seconds (``TimeoutError``); a closed peer
    raises ``anyio.EndOfStream`` or ``anyio.BrokenResourceError``.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        max_line: int,
        timeout: float,
        tls: bool,
    ) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self.max_line = max_line
        self.timeout = timeout
        self.tls = tls

    async def readline(self) -> bytes:
        """The next line without its CRLF (a bare LF is accepted too)."""
        with anyio.fail_after(self.timeout):
            try:
                line = await self._reader.receive_until(b"\n", self.max_line)
            except anyio.DelimiterNotFound as exc:
                raise LineTooLongError from exc
            except anyio.IncompleteRead as exc:
                raise anyio.EndOfStream from exc
        # receive_until only enforces its cap while the delimiter is missing from
        # what was buffered; a long line that arrived in one chunk gets through.
        if len(line) > self.max_line:
            raise LineTooLongError
        return line[:-1] if line.endswith(b"\r") else line

    async def read_exactly(self, count: int) -> bytes:
        with anyio.fail_after(self.timeout):
            try:
                return await self._reader.receive_exactly(count)
            except anyio.IncompleteRead as exc:
                raise anyio.EndOfStream from exc

    async def send(self, data: bytes) -> None:
        with anyio.fail_after(self.timeout):
            await self._stream.send(data)

    async def send_line(self, line: str | bytes) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        await self.send(line + b"\r\n")

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade to TLS. Anything the client pipelined before the handshake is
        dropped (RFC 3207 §4.2, RFC 2595 §3.1: it must not be trusted)."""
        with anyio.fail_after(self.timeout):
            self._stream = await TLSStream.wrap(
                self._stream, server_side=True, ssl_context=context, standard_compatible=False
            )
        self._reader = BufferedByteReceiveStream(self._stream)
        self.tls = True

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._stream.aclose()


class StreamServer(LoopService):
    """Listens on loopback and hands each connection to :meth:`handle`.

    With a server ``ssl_context`` it listens on up to two ports: :attr:`tls_port`
    (implicit TLS, when ``implicit_tls``) and :attr:`starttls_port` (plain, offering
    STARTTLS, when ``starttls``). Without one, only a plain :attr:`starttls_port`
    without STARTTLS. ``require_tls`` refuses authentication before TLS.
    """

    MAX_LINE: int = 16384

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        implicit_tls: bool = True,
        starttls: bool = True,
        require_tls: bool = True,
        tls_port: int = 0,
        starttls_port: int = 0,
        timeout: float = 300.0,
    ) -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.implicit_tls = implicit_tls and ssl_context is not None
        self.starttls = starttls or ssl_context is None
        self.require_tls = require_tls and ssl_context is not None
        self.timeout = timeout
        self._wanted_ports = (tls_port, starttls_port)
        self._tls_port: int | None = None
        self._starttls_port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[anyio.abc.Listener[Any]] = []

    # -- addresses -------------------------------------------------------------------

    @property
    def tls_port(self) -> int:
        """The implicit-TLS port (993/995-style)."""
        if self._tls_port is None:
            raise RuntimeError(f"{type(self).__name__} has no implicit-TLS port running")
        return self._tls_port

    @property
    def starttls_port(self) -> int:
        """The plain port (143/110-style), offering STARTTLS when there is a context."""
        if self._starttls_port is None:
            raise RuntimeError(f"{type(self).__name__} has no plain/STARTTLS port running")
        return self._starttls_port

    @property
    def port(self) -> int:
        """The implicit-TLS port if there is one, else the plain/STARTTLS port."""
        return self._tls_port if self._tls_port is not None else self.starttls_port

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError(f"{type(self).__name__} is already running")
        if self.implicit_tls:
            self._tls_port = await self._listen(self._wanted_ports[0], tls=True)
        if self.starttls or not self.implicit_tls:
            self._starttls_port = await self._listen(self._wanted_ports[1], tls=False)

    async def _listen(self, port: int, *, tls: bool) -> int:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=port)
        self._listeners.append(listener)

        async def serve_one(stream: anyio.abc.SocketStream) -> None:
            await self._serve_connection(stream, tls=tls)

        task = asyncio.get_running_loop().create_task(listener.serve(serve_one))
        self._tasks.add(task)
        return int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.aclose()
        self._listeners.clear()

    async def _serve_connection(self, stream: anyio.abc.ByteStream, *, tls: bool) -> None:
        try:
            if tls:
                assert self.ssl_context is not None
                with anyio.fail_after(self.timeout):
                    stream = await TLSStream.wrap(
                        stream,
                        server_side=True,
                        ssl_context=self.ssl_context,
                        standard_compatible=False,
                    )
            channel = Channel(stream, max_line=self.MAX_LINE, timeout=self.timeout, tls=tls)
            try:
                await self.handle(channel)
            finally:
                await channel.aclose()
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            TimeoutError,
            OSError,
            ssl.SSLError,
        ):
            pass  # the client went away, or stalled: nothing more to say to it
        except Exception:
            log.exception("%s: session failed", type(self).__name__)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    @abstractmethod
    async def handle(self, channel: Channel) -> None:
        """Talk to one client until it quits; exceptions close the connection."""
