"""The IMAP session's lifecycle, apart from the commands (mailoauth.imap.client).

:class:`ImapSession` owns the connection: dialling, the greeting, STARTTLS,
authentication with the one retry, LOGOUT and close; the deadline around each reply
(``_guard``); reconnecting after the server dropped the session (BYE, reset) and
re-authenticating before the token expires, reselecting the mailbox it had; and IDLE,
renewed before the server's 30-minute limit and across re-authentication.
:class:`~mailoauth.imap.client.ImapClient` adds the commands on top.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth._core.client_base import BaseClient
from mailoauth._core.connection import ProtocolTransport
from mailoauth._core.settings import ConnectionOptions
from mailoauth._providers import THROTTLING_REPLIES
from mailoauth.errors import (
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    MailTimeoutError,
    ProtocolError,
    TLSError,
    _NotSelectedError,
)
from mailoauth.imap._aioimaplib import (
    AUTH,
    MAX_RESPONSE,
    AuthenticateCommand,
    Command,
    ImapProtocol,
    RawCommand,
    capabilities_in_code,
    capability_set,
)
from mailoauth.sasl import Mechanism
from mailoauth.security import SecurityOptions
from mailoauth.tokens.access_token import AccessToken, TokenProvider

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["IDLE_RENEW_AFTER", "REAUTH_MARGIN", "IdleEvent", "ImapSession"]

log = logging.getLogger("mailoauth.imap")

T = TypeVar("T")

#: RFC 2177: servers may drop an IDLE after 30 minutes; renew a little before.
IDLE_RENEW_AFTER = 28 * 60.0
#: Reconnect with a fresh token when the session's token expires within this many
#: seconds (Office 365 ends sessions with ``BYE ... AccessTokenExpired``).
REAUTH_MARGIN = 60.0


@dataclass(frozen=True)
class IdleEvent:
    """Something the server pushed during IDLE: ``kind`` is ``EXISTS``, ``EXPUNGE``,
    ``RECENT``, ``FETCH`` or another keyword; ``number`` the count or sequence number."""

    kind: str
    number: int | None
    raw: bytes


class ImapSession(BaseClient):
    """An authenticated IMAP session that stays up: the lifecycle half of
    :class:`~mailoauth.imap.client.ImapClient` (which see for the arguments and
    errors). Subclasses restore a selection with :meth:`_restore_selection`.
    """

    protocol_name = "imap"

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        token: str | AccessToken | TokenProvider,
        security: SecurityOptions = SecurityOptions.AUTO,
        *,
        idle_renew_after: float = IDLE_RENEW_AFTER,
        max_response_size: int = MAX_RESPONSE,
        clock: Callable[[], dt.datetime] | None = None,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        settings = self._settings_from(host, port, security, options)
        super().__init__(settings, username, token)
        self.idle_renew_after = idle_renew_after
        #: The current aware UTC time, for when the session's token is due: the token
        #: manager's clock unless given, so that a test moves one clock.
        self._clock: Callable[[], dt.datetime] = clock or self.tokens.now
        if isinstance(max_response_size, bool) or not isinstance(max_response_size, int):
            raise ConfigurationError("max_response_size must be an int (bytes)")
        if max_response_size <= 0:
            raise ConfigurationError("max_response_size must be positive")
        #: Largest response to one command held in memory (lines and literals); over
        #: it, the command fails with LimitExceededError and the connection is closed.
        self.max_response_size = max_response_size
        self._protocol: ImapProtocol | None = None
        self._transport: ProtocolTransport | None = None
        self._token: AccessToken | None = None
        self._selected: tuple[str, bool] | None = None
        self._authenticated_at: dt.datetime | None = None
        self._reconnecting = False
        #: Whether a reply deadline is running (an inner _guard leaves it in charge).
        self._deadline_armed = False
        #: How many times the session was re-established (token expiry, BYE, reset).
        self.reconnects = 0

    # -- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        protocol = self._protocol
        return protocol is not None and not protocol.lost and protocol.fatal_error is None

    async def _open(self) -> None:
        conn = await self._dial()
        protocol = ImapProtocol(asyncio.get_running_loop(), max_response=self.max_response_size)
        transport = conn.attach(protocol)
        self._protocol, self._transport = protocol, transport
        try:
            await self._guard(
                protocol.wait_greeting(),
                "waiting for the greeting from",
                hint=""
                if self.plan.implicit_tls
                else (
                    "; if that port expects TLS from the first byte (implicit TLS), "
                    "use SecurityOptions.SSL_IMPLICIT"
                ),
            )
            if self.plan.starttls:
                await self._starttls(protocol, transport)
            await self._authenticate(protocol, transport)
        except BaseException:
            transport.abort()
            self._protocol = self._transport = None
            raise

    async def _starttls(self, protocol: ImapProtocol, transport: ProtocolTransport) -> None:
        if "STARTTLS" not in protocol.capabilities:
            raise TLSError(
                f"{self.host}:{self.port} does not offer STARTTLS, and STARTTLS is required "
                f"({self.security.name}); the connection was closed. If the server uses "
                f"implicit TLS, use port 993 or SSL_IMPLICIT"
            )
        response = await self._guard(
            protocol.execute(RawCommand("STARTTLS", protocol.new_tag(), loop=protocol.loop)),
            "starting TLS with",
        )
        if response.result != "OK":
            raise TLSError(f"{self.host}:{self.port} refused STARTTLS: {_last(response.lines)}")

        def discard() -> None:
            injected = protocol.reset_after_starttls()
            if injected:
                log.warning(
                    "%s:%s sent %d bytes between STARTTLS and the TLS handshake; discarded them",
                    self.host,
                    self.port,
                    injected,
                )

        await transport.start_tls(discard)
        # RFC 3501 §6.2.1: capabilities learnt before TLS must be discarded.
        protocol.capabilities = frozenset()
        await self._guard(protocol.capability(), "reading capabilities from")

    async def _authenticate(self, protocol: ImapProtocol, transport: ProtocolTransport) -> None:
        offered = [c[5:] for c in protocol.capabilities if c.upper().startswith("AUTH=")]
        mechanism = choose_mechanism(
            offered, self.mechanism, "imap", host=self.host, port=self.port
        )
        sasl_ir = "SASL-IR" in protocol.capabilities
        ok_lines: list[bytes | bytearray] = []

        async def exchange(mech: Mechanism) -> SaslOutcome:
            command = AuthenticateCommand(
                protocol.new_tag(),
                mech,
                sasl_ir=sasl_ir,
                write=transport.write,
                loop=protocol.loop,
            )
            scrub = mech.initial_response_b64().decode()
            response = await self._guard(
                protocol.execute(command, scrub=scrub), "authenticating with"
            )
            reply = f"{response.result} {_last(response.lines)}"
            if response.result == "OK":
                nonlocal ok_lines
                ok_lines = list(response.lines)
                return SaslOutcome(ok=True, reply=reply)
            temporary = _busy(_last_bytes(response.lines))
            return SaslOutcome(
                ok=False, reply=reply, challenge=command.challenge, temporary=temporary
            )

        self._token = await authenticate(
            tokens=self.tokens,
            username=self.username,
            host=self.host,
            port=self.port,
            protocol="imap",
            mechanism=mechanism,
            exchange=exchange,
        )
        self._authenticated_at = self._clock()
        self.mechanism_used = mechanism
        protocol.state = AUTH
        # Capabilities change after login (RFC 3501 §6.2.2): read them again, unless
        # the server sent them with its OK (an untagged CAPABILITY, §7.2.1, or a
        # CAPABILITY response code, §7.1), as Dovecot does; saves a round trip.
        sent = _capabilities_sent(ok_lines)
        if sent is not None:
            protocol.capabilities = sent
        else:
            await self._guard(protocol.capability(), "reading capabilities from")

    async def _close(self) -> None:
        protocol, transport = self._protocol, self._transport
        self._protocol = self._transport = None
        if protocol is None or transport is None:
            return
        self._selected = None if not self._reconnecting else self._selected
        logged_out = False
        if not protocol.lost and protocol.fatal_error is None:
            logout = Command("LOGOUT", protocol.new_tag(), loop=protocol.loop)
            try:
                await self._guard(
                    protocol.execute(logout),
                    "logging out of",
                    timeout=min(self.timeout, 5.0),
                    on=(protocol, transport),
                )
                logged_out = True
            except Exception as exc:  # a dying connection must not stop the close
                log.debug("LOGOUT to %s:%s failed: %r", self.host, self.port, exc)
        if logged_out:
            transport.close()  # with a TLS close_notify
        else:
            transport.abort()

    def _seconds_until_reauth(self) -> float | None:
        """Seconds until the session should re-authenticate: when its token is within
        :data:`REAUTH_MARGIN` of expiry, or a quarter of its lifetime if that is less.
        None when the token's expiry is unknown."""
        token, since = self._token, self._authenticated_at
        if token is None or token.expires_at is None or since is None:
            return None
        lifetime = (token.expires_at - since).total_seconds()
        margin = min(REAUTH_MARGIN, lifetime / 4)
        return (token.expires_at - self._clock()).total_seconds() - margin

    def _session_expiring(self) -> bool:
        left = self._seconds_until_reauth()
        return left is not None and left <= 0

    async def _reconnect(self) -> None:
        log.debug("reconnecting to %s:%s (new token, same mailbox)", self.host, self.port)
        selected = self._selected
        self._reconnecting = True
        try:
            await self._close()
            await self._connect()
            self.reconnects += 1
            if selected is not None:
                await self._restore_selection(*selected)
        finally:
            self._reconnecting = False

    async def _guard(
        self,
        awaitable: Awaitable[T],
        what: str,
        *,
        hint: str = "",
        timeout: float | None = None,
        on: tuple[ImapProtocol, ProtocolTransport] | None = None,
    ) -> T:
        """Await an aioimaplib call within one reply's deadline: ``timeout``, growing
        at ``min_rate`` while bytes arrive (the rule of ``reply_deadline``). On timeout
        the connection is closed and the call raises :class:`MailTimeoutError`.

        The deadline is one timer on the event loop that, when it expires, gives the
        protocol up (every pending command fails, the connection is aborted): what is
        awaited here always waits on the protocol, so no task is cancelled and no
        cancel scope is entered per command (an anyio scope cost about as much CPU as
        the command's own parsing). ``on`` names the connection when it is no longer
        the session's (being closed); ``timeout`` replaces the first deadline."""
        protocol, transport = on or (self._protocol, self._transport)
        timer: asyncio.TimerHandle | None = None
        if protocol is not None and transport is not None and not self._deadline_armed:
            loop = protocol.loop
            conn = transport.connection
            start = loop.time()
            base = conn.bytes_received

            def expire() -> None:
                nonlocal timer
                due = self.transfer_deadline(start, conn.bytes_received - base)
                if due > loop.time():  # bytes came meanwhile: at min_rate, it may go on
                    timer = loop.call_at(due, expire)
                    return
                protocol.time_out(
                    MailTimeoutError(
                        f"timed out {what} {self.host}:{self.port}; the connection was closed{hint}"
                    )
                )

            first = self.timeout if timeout is None else timeout
            timer = loop.call_at(start + first, expire)
            self._deadline_armed = True
        try:
            return await awaitable
        except (ConnectionLostError, MailTimeoutError):
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("aioimaplib"):
                raise ProtocolError(f"IMAP error with {self.host}:{self.port}: {exc}") from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()
                self._deadline_armed = False

    async def _ready(self) -> ImapProtocol:
        """The live protocol, reconnecting first when the session's token is about to
        expire (or the server dropped us after an expired token)."""
        if self._protocol is None:
            self._require_opened()
            raise ConnectionLostError(
                f"the connection to {self.host}:{self.port} is not open (connecting failed, "
                f"or it was lost and could not be made again); call connect() to try again"
            )
        dead = self._protocol.lost or self._protocol.fatal_error is not None
        if not self._reconnecting and (dead or self._session_expiring()):
            await self._reconnect()
        assert self._protocol is not None
        return self._protocol

    async def _call(
        self, op: Callable[[ImapProtocol], Awaitable[Any]], what: str, *, retry: bool = True
    ) -> Any:
        """Run one command; if the session died under it (BYE, reset) and the command
        is safe to repeat, reconnect once and run it again."""
        protocol = await self._ready()
        try:
            response = await self._guard(op(protocol), what)
        except ConnectionLostError:
            if not retry or self._protocol is None:
                raise
            await self._reconnect()
            assert self._protocol is not None
            response = await self._guard(op(self._protocol), what)
        return response

    async def _restore_selection(self, mailbox: str, readonly: bool) -> None:
        """Select ``mailbox`` again on a new connection (after a reconnect)."""
        raise NotImplementedError

    # -- selection and IDLE --------------------------------------------------------

    def _require_selected(self) -> None:
        self._require_opened()
        if self._selected is None:
            raise _NotSelectedError(
                "this command works on the selected mailbox: call select() or examine() first"
            )

    async def idle(self, *, timeout: float | None = None) -> AsyncIterator[IdleEvent]:
        """IDLE (RFC 2177) as an async iterator of :class:`IdleEvent`.

        Renewed every ``idle_renew_after`` seconds (before the server's 30-minute
        limit) and re-authenticated before the token expires. Stops after ``timeout``
        seconds when given; ``break`` out of the loop to stop earlier. Raises
        :class:`CommandError` if the server has no IDLE.
        """
        self._require_selected()
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            protocol = await self._ready()
            if "IDLE" not in protocol.capabilities:
                raise CommandError(
                    f"{self.host}:{self.port} does not support IDLE (RFC 2177); poll "
                    f"with noop() instead",
                    command="IDLE",
                    host=self.host,
                    port=self.port,
                    retryable=False,
                )
            renew_at = anyio.current_time() + self.idle_renew_after
            until_reauth = self._seconds_until_reauth()
            if until_reauth is not None:
                renew_at = min(renew_at, anyio.current_time() + max(until_reauth, 1.0))
            if deadline is not None:
                renew_at = min(renew_at, deadline)
            # Changes the server reported beside earlier commands come first: IDLE will
            # not announce them again.
            seen, protocol.unsolicited = protocol.unsolicited, []
            for line in seen:
                event = _idle_event(line)
                if event is not None:
                    yield event
            # No task waits on the IDLE while it runs: its completion is awaited once
            # DONE is sent (memory per idle connection).
            idle = await protocol.start_idle()
            try:
                await self._guard(protocol.wait_for_idle_response(), "starting IDLE on")
                while (left := renew_at - anyio.current_time()) > 0:
                    # A loop timer, not a cancel scope held per idle connection.
                    lines = await protocol.next_idle_lines(left)
                    if lines is None:
                        break
                    for line in lines:
                        if isinstance(line, bytes | bytearray):
                            event = _idle_event(bytes(line))
                            if event is not None:
                                yield event
                    if protocol.fatal_error is not None:
                        raise protocol.fatal_error
                    if protocol.lost:
                        break
            finally:
                if not protocol.lost and protocol.pending_sync_command is idle:
                    protocol.idle_done()
                    try:
                        await self._guard(protocol.end_idle(idle), "ending IDLE on")
                    except Exception as exc:  # the next command will reconnect
                        log.debug("ending IDLE on %s failed: %r", self.host, exc)
            if protocol.lost:
                await self._reconnect()
            if deadline is not None and anyio.current_time() >= deadline:
                return


def _idle_event(line: bytes) -> IdleEvent | None:
    parts = line.split(None, 2)
    if len(parts) >= 2 and parts[0].isdigit():
        return IdleEvent(parts[1].decode("ascii", "replace").upper(), int(parts[0]), line)
    if parts and parts[0] not in (b"OK", b"+"):
        return IdleEvent(parts[0].decode("ascii", "replace").upper(), None, line)
    return None


def _capabilities_sent(lines: list[bytes | bytearray]) -> frozenset[str] | None:
    """The capabilities in a command's response, if the server volunteered them (a
    frozenset shared by the connections that read the same list: memory per session)."""
    for line in lines:
        raw = bytes(line)
        coded = capabilities_in_code(raw)
        if coded is not None:
            return coded
        if raw[:11].upper() == b"CAPABILITY ":
            return capability_set(raw[11:])
    return None


def _busy(reply: bytes) -> bool:
    """Whether a refused AUTHENTICATE says "not now" instead of judging the token:
    ``[UNAVAILABLE]`` (RFC 5530), ``[THROTTLED]``, or Gmail's "Too many simultaneous
    connections" (:data:`~mailoauth._providers.THROTTLING_REPLIES`). Then no token is
    refreshed and no second attempt is made: the caller backs off instead."""
    if b"[UNAVAILABLE]" in reply or b"[THROTTLED]" in reply:
        return True
    text = reply.decode("ascii", "replace").lower()
    return any(phrase in text for phrase in THROTTLING_REPLIES)


def _last_bytes(lines: list[bytes | bytearray]) -> bytes:
    return bytes(lines[-1]) if lines else b""


def _last(lines: list[bytes | bytearray]) -> str:
    return _last_bytes(lines).decode("utf-8", "replace")
