"""ImapClient: IMAP with an OAuth 2.0 bearer token, over aioimaplib's parser.

The socket is the connection core's; aioimaplib's protocol object parses over it. All
of aioimaplib's gaps (STARTTLS, error challenges, OAUTHBEARER, dropped connections)
are filled in :mod:`mailoauth.imap._aioimaplib`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.message
import email.policy
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any, Final, TypeVar

import anyio

from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth._core.client_base import DEFAULT_MIN_RATE, DEFAULT_TIMEOUT, BaseClient
from mailoauth._core.connection import ProtocolTransport
from mailoauth._util.text import refuse_controls
from mailoauth.errors import (
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    MailTimeoutError,
    ProtocolError,
    TLSError,
    UsageError,
)
from mailoauth.imap import parsing
from mailoauth.imap._aioimaplib import (
    AUTH,
    MAX_RESPONSE,
    SELECTED,
    AuthenticateCommand,
    ImapProtocol,
    RawCommand,
)
from mailoauth.imap.parsing import Folder, MailboxInfo
from mailoauth.sasl import Mechanism
from mailoauth.security import SecurityOptions
from mailoauth.tokens.access_token import AccessToken, TokenProvider

__all__ = ["IdleEvent", "ImapClient"]

log = logging.getLogger("mailoauth.imap")

T = TypeVar("T")

#: RFC 2177: servers may drop an IDLE after 30 minutes; renew a little before.
IDLE_RENEW_AFTER = 28 * 60.0
#: Reconnect with a fresh token when the session's token expires within this many
#: seconds (Office 365 ends sessions with ``BYE ... AccessTokenExpired``).
REAUTH_MARGIN = 60.0

_parser = BytesParser(policy=email.policy.default)
#: ``[CAPABILITY IMAP4rev1 ...]`` at the start of a tagged OK's text (RFC 3501 §7.1).
_CAPABILITY_CODE = re.compile(rb"\[CAPABILITY ([^\]\r\n]+)\]", re.IGNORECASE)


#: Longest command line sent, CRLF included: RFC 7162 §4 recommends that clients keep
#: command lines within 8192 octets (Dovecot refuses lines over its
#: ``imap_max_line_length``, 64 KB by default, with ``BAD ... Too long argument``).
#: Longer UID sets are sent as several commands and their results merged.
MAX_COMMAND_LINE: Final = 8192
#: Room kept on a command line for the tag (aioimaplib's are 5 to 10 characters).
_TAG_ROOM: Final = 24
#: Largest UID (RFC 3501 §9: nz-number is a 32-bit unsigned integer).
_MAX_UID: Final = 0xFFFFFFFF


def _uid_ranges(uids: Iterable[int]) -> list[str]:
    """Sorted, de-duplicated UIDs as ``first:last`` ranges and single numbers. Raises
    :class:`ConfigurationError` when there is none or one is not in 1..2**32-1."""
    values = sorted({int(u) for u in uids})
    if not values or values[0] <= 0 or values[-1] > _MAX_UID:
        raise ConfigurationError("give at least one UID, each an integer from 1 to 2**32-1")
    pieces: list[str] = []
    start = prev = values[0]
    for value in values[1:]:
        if value != prev + 1:
            pieces.append(f"{start}:{prev}" if prev > start else str(start))
            start = value
        prev = value
    pieces.append(f"{start}:{prev}" if prev > start else str(start))
    return pieces


def _uid_sets(uids: Iterable[int], *command: str) -> list[str]:
    """UID sets (``1:5,7,9:12``) covering ``uids``, each short enough that the command
    line ``<tag> <command...> <set>`` stays within :data:`MAX_COMMAND_LINE`."""
    # "<tag> <part> <part> <set>\r\n": a space before each part and before the set.
    fixed = _TAG_ROOM + sum(len(part.encode()) + 1 for part in command) + 1 + len("\r\n")
    room = MAX_COMMAND_LINE - fixed
    if room < len(f"{_MAX_UID}:{_MAX_UID}"):
        raise ConfigurationError(
            f"the command's other arguments are too long for one command line "
            f"(MAX_COMMAND_LINE, {MAX_COMMAND_LINE} octets)"
        )
    sets: list[str] = []
    current: list[str] = []
    length = -1  # no comma before the first piece
    for piece in _uid_ranges(uids):
        if current and length + 1 + len(piece) > room:
            sets.append(",".join(current))
            current, length = [], -1
        current.append(piece)
        length += 1 + len(piece)
    sets.append(",".join(current))
    return sets


def _check_arg(value: str, what: str) -> str:
    # A quoted string may hold a tab (RFC 3501 TEXT-CHAR); no other control character.
    return refuse_controls(value, what, allow="\t")


@dataclass(frozen=True)
class IdleEvent:
    """Something the server pushed during IDLE: ``kind`` is ``EXISTS``, ``EXPUNGE``,
    ``RECENT``, ``FETCH`` or another keyword; ``number`` the count or sequence number."""

    kind: str
    number: int | None
    raw: bytes


class ImapClient(BaseClient):
    """Read and manage a mailbox over IMAP, authenticated with a bearer token.

    ``token`` is an access token string, an :class:`~mailoauth.AccessToken` or a
    :class:`~mailoauth.TokenProvider`. With a provider, a long session re-authenticates
    (reconnect and reselect) before the token expires and after the server ends the
    session for an expired token. Every operation raises on failure:
    :class:`~mailoauth.errors.CommandError` (NO/BAD),
    :class:`~mailoauth.errors.AuthenticationError`,
    :class:`~mailoauth.errors.TLSError`, :class:`~mailoauth.errors.MailTimeoutError`,
    :class:`~mailoauth.errors.ConnectionLostError`. One task at a time per client.

    Big mailboxes: UID sets are sent as ranges, split into several commands when longer
    than :data:`MAX_COMMAND_LINE`. A response held in memory (a FETCH until it ends)
    may not exceed ``max_response_size`` bytes (``MAX_RESPONSE``, 256 MiB, by default):
    over it the command raises
    :class:`~mailoauth.errors.LimitExceededError` and the connection is closed (the
    next command reconnects); fetch fewer messages per call.

    ``clock`` returns the current aware UTC time, which decides when the session's
    token is due for re-authentication; by default it is the token manager's
    (``TokenManager(clock=)``), so that tests move one clock
    (:class:`mailoauth.testing.clock.FakeClock`) instead of sleeping.
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
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        mechanism: str | None = None,
        allow_insecure_auth: bool = False,
        idle_renew_after: float = IDLE_RENEW_AFTER,
        max_response_size: int = MAX_RESPONSE,
        connect_timeout: float | None = None,
        min_rate: float = DEFAULT_MIN_RATE,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__(
            host,
            port,
            username,
            token,
            security,
            ssl_context=ssl_context,
            timeout=timeout,
            mechanism=mechanism,
            allow_insecure_auth=allow_insecure_auth,
            connect_timeout=connect_timeout,
            min_rate=min_rate,
        )
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
        protocol.capabilities = set()
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
            temporary = b"[UNAVAILABLE]" in _last_bytes(response.lines)
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
            try:
                with anyio.fail_after(min(self.timeout, 5.0)):
                    await protocol.logout()
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
                await self._select(*selected)
        finally:
            self._reconnecting = False

    async def _guard(self, awaitable: Awaitable[T], what: str, *, hint: str = "") -> T:
        """Await an aioimaplib call within one reply's deadline (``timeout``, growing at
        ``min_rate`` while bytes arrive: see ``reply_deadline``); on timeout close the
        connection."""
        try:
            with self.reply_deadline():
                return await awaitable
        except TimeoutError as exc:
            if self._transport is not None:
                self._transport.abort()
            raise MailTimeoutError(
                f"timed out {what} {self.host}:{self.port}; the connection was closed{hint}"
            ) from exc
        except ConnectionLostError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("aioimaplib"):
                raise ProtocolError(f"IMAP error with {self.host}:{self.port}: {exc}") from exc
            raise

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

    def _check(self, response: Any, command: str) -> list[bytes | bytearray]:
        if response.result != "OK":
            reply = _last(response.lines)
            raise CommandError(
                f"{self.host}:{self.port} refused {command}: {response.result} {reply}",
                command=command,
                reply=f"{response.result} {reply}",
                response_code=parsing.parse_response_code(reply),
                host=self.host,
                port=self.port,
            )
        lines: list[bytes | bytearray] = response.lines
        return lines

    # -- operations -------------------------------------------------------------------

    async def capabilities(self) -> frozenset[str]:
        """The server's capabilities, as read after authentication."""
        protocol = await self._ready()
        return frozenset(protocol.capabilities)

    async def list_folders(self, reference: str = "", pattern: str = "*") -> list[Folder]:
        """LIST the folders matching ``pattern`` below ``reference``."""
        ref, pat = (
            parsing.quote(_check_arg(reference, "reference")),
            parsing.encode_mailbox(_check_arg(pattern, "pattern")),
        )
        response = await self._call(lambda p: p.simple_command("LIST", ref, pat), "listing")
        return parsing.parse_list(self._check(response, "LIST"))

    async def _select(self, mailbox: str, readonly: bool) -> MailboxInfo:
        name = parsing.encode_mailbox(_check_arg(mailbox, "mailbox name"))
        command = "EXAMINE" if readonly else "SELECT"

        async def op(p: ImapProtocol) -> Any:
            p.forget_unsolicited()  # the new selection reports its own size
            if readonly:
                response = await p.simple_command("EXAMINE", name)
                if response.result == "OK":
                    p.state = SELECTED
                return response
            return await p.select(name)

        response = await self._call(op, f"selecting {mailbox!r} on")
        info = parsing.parse_select(mailbox, self._check(response, command), readonly)
        self._selected = (mailbox, readonly)
        return info

    async def select(self, mailbox: str = "INBOX") -> MailboxInfo:
        """SELECT ``mailbox`` read-write; returns its counts and UIDVALIDITY."""
        return await self._select(mailbox, False)

    async def examine(self, mailbox: str = "INBOX") -> MailboxInfo:
        """EXAMINE ``mailbox`` (read-only: nothing is marked seen)."""
        return await self._select(mailbox, True)

    async def status(
        self,
        mailbox: str = "INBOX",
        items: Sequence[str] = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"),
    ) -> dict[str, int]:
        """STATUS of a mailbox that need not be selected."""
        name = parsing.encode_mailbox(_check_arg(mailbox, "mailbox name"))
        what = "(" + " ".join(_check_arg(i, "status item") for i in items) + ")"
        response = await self._call(lambda p: p.simple_command("STATUS", name, what), "status")
        return parsing.parse_status(self._check(response, "STATUS"))

    def _require_selected(self) -> None:
        self._require_opened()
        if self._selected is None:
            raise UsageError(
                "this command works on the selected mailbox: call select() or examine() first"
            )

    async def uid_search(self, *criteria: str) -> list[int]:
        """UID SEARCH with IMAP search keys, e.g. ``uid_search("UNSEEN")``; returns UIDs."""
        self._require_selected()
        keys = [_check_arg(c, "search criterion") for c in criteria] or ["ALL"]
        response = await self._call(
            lambda p: p.search(*keys, charset=None, by_uid=True), "searching"
        )
        return parsing.parse_search(self._check(response, "UID SEARCH"))

    async def _fetch(self, uids: Iterable[int], items: str) -> list[parsing.FetchRecord]:
        """UID FETCH ``items``: one command per :func:`_uid_sets` piece, merged."""
        self._require_selected()
        uids = list(uids)
        if not uids:
            return []
        records: list[parsing.FetchRecord] = []
        for uid_set in _uid_sets(uids, "UID", "FETCH", items):

            def op(p: ImapProtocol, uid_set: str = uid_set) -> Any:
                return p.fetch(uid_set, items, by_uid=True)

            response = await self._call(op, "fetching from")
            found = parsing.parse_fetch(self._check(response, "UID FETCH"))
            records.extend(r for r in found if r.uid is not None)
        return records

    async def fetch_raw(self, uids: Iterable[int]) -> dict[int, bytes]:
        """The full RFC 5322 bytes of each message, by UID (without marking it seen)."""
        records = await self._fetch(uids, "(UID BODY.PEEK[])")
        return {r.uid: r.sections.get("BODY[]", b"") for r in records if r.uid is not None}

    async def fetch_messages(self, uids: Iterable[int]) -> dict[int, email.message.EmailMessage]:
        """Messages parsed as :class:`email.message.EmailMessage`, by UID."""
        raw = await self.fetch_raw(uids)
        return {uid: _parse(data) for uid, data in raw.items()}

    async def fetch_message(self, uid: int) -> email.message.EmailMessage:
        """One message by UID; raises :class:`CommandError` if there is no such UID."""
        messages = await self.fetch_messages([uid])
        if uid not in messages:
            raise CommandError(
                f"{self.host}:{self.port} has no message with UID {uid} in the selected mailbox",
                command="UID FETCH",
                host=self.host,
                port=self.port,
                retryable=False,
            )
        return messages[uid]

    async def fetch_headers(self, uids: Iterable[int]) -> dict[int, email.message.EmailMessage]:
        """Only the header of each message, parsed, by UID."""
        records = await self._fetch(uids, "(UID BODY.PEEK[HEADER])")
        return {
            r.uid: _parse(r.sections.get("BODY[HEADER]", b"")) for r in records if r.uid is not None
        }

    async def fetch_flags(self, uids: Iterable[int]) -> dict[int, frozenset[str]]:
        """The flags of each message, by UID."""
        records = await self._fetch(uids, "(UID FLAGS)")
        return {r.uid: r.flags or frozenset() for r in records if r.uid is not None}

    async def fetch_sizes(self, uids: Iterable[int]) -> dict[int, int]:
        """The RFC822.SIZE of each message, by UID."""
        records = await self._fetch(uids, "(UID RFC822.SIZE)")
        return {r.uid: r.size or 0 for r in records if r.uid is not None}

    async def append(
        self,
        message: bytes | email.message.Message,
        mailbox: str = "INBOX",
        *,
        flags: Sequence[str] = (),
        date: dt.datetime | None = None,
    ) -> int | None:
        """APPEND a message; returns its UID when the server reports it (UIDPLUS).

        Not retried after a dropped connection: the message may already be stored.
        """
        data = message if isinstance(message, bytes) else message.as_bytes(policy=email.policy.SMTP)
        name = parsing.encode_mailbox(_check_arg(mailbox, "mailbox name"))
        flag_text = "(" + " ".join(_check_arg(f, "flag") for f in flags) + ")" if flags else None
        response = await self._call(
            lambda p: p.append(data, mailbox=name, flags=flag_text, date=date),
            "appending to",
            retry=False,
        )
        return parsing.parse_appenduid(self._check(response, "APPEND"))

    async def _store(self, uids: Iterable[int], how: str, flags: Sequence[str]) -> None:
        self._require_selected()
        text = "(" + " ".join(_check_arg(f, "flag") for f in flags) + ")"
        for uid_set in _uid_sets(uids, "UID", "STORE", how, text):

            def op(p: ImapProtocol, uid_set: str = uid_set) -> Any:
                return p.store(uid_set, how, text, by_uid=True)

            self._check(await self._call(op, "storing flags on"), "UID STORE")

    async def add_flags(self, uids: Iterable[int], flags: Sequence[str]) -> None:
        """Add ``flags`` (e.g. ``["\\\\Seen"]``) to the messages."""
        await self._store(uids, "+FLAGS.SILENT", flags)

    async def remove_flags(self, uids: Iterable[int], flags: Sequence[str]) -> None:
        """Remove ``flags`` from the messages."""
        await self._store(uids, "-FLAGS.SILENT", flags)

    async def copy(self, uids: Iterable[int], destination: str) -> None:
        """UID COPY messages to ``destination``. Not retried after a dropped connection.
        A UID set too long for one command line is copied by several commands."""
        self._require_selected()
        dest = parsing.encode_mailbox(_check_arg(destination, "mailbox name"))
        for uid_set in _uid_sets(uids, "UID", "COPY", dest):

            def op(p: ImapProtocol, uid_set: str = uid_set) -> Any:
                return p.copy(uid_set, dest, by_uid=True)

            self._check(await self._call(op, "copying on", retry=False), "UID COPY")

    async def move(self, uids: Iterable[int], destination: str) -> None:
        """UID MOVE (RFC 6851), or COPY + \\\\Deleted + UID EXPUNGE where MOVE is missing.
        A UID set too long for one command line is moved by several commands."""
        self._require_selected()
        values = list(uids)
        dest = parsing.encode_mailbox(_check_arg(destination, "mailbox name"))
        moves = _uid_sets(values, "UID", "MOVE", dest)
        protocol = await self._ready()
        if "MOVE" in protocol.capabilities:
            for uid_set in moves:

                def move(p: ImapProtocol, uid_set: str = uid_set) -> Any:
                    return p.move(uid_set, dest, by_uid=True)

                self._check(await self._call(move, "moving on", retry=False), "UID MOVE")
            return
        await self.copy(values, destination)
        await self.add_flags(values, ["\\Deleted"])
        for uid_set in _uid_sets(values, "UID", "EXPUNGE"):

            def expunge(p: ImapProtocol, uid_set: str = uid_set) -> Any:
                return p.expunge(uid_set, by_uid=True)

            self._check(await self._call(expunge, "expunging on"), "UID EXPUNGE")

    async def expunge(self) -> None:
        """EXPUNGE the selected mailbox (remove messages flagged \\\\Deleted)."""
        self._require_selected()
        response = await self._call(lambda p: p.expunge(), "expunging on")
        self._check(response, "EXPUNGE")

    async def noop(self) -> None:
        """NOOP: keeps the session alive and lets the server report changes."""
        response = await self._call(lambda p: p.simple_command("NOOP"), "NOOP on")
        self._check(response, "NOOP")

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
            idle_task = asyncio.ensure_future(protocol.idle())
            try:
                await self._guard(protocol.wait_for_idle_response(), "starting IDLE on")
                while (left := renew_at - anyio.current_time()) > 0:
                    lines = None
                    with anyio.move_on_after(left):
                        lines = await protocol.next_idle_lines()
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
                try:
                    if not protocol.lost and not idle_task.done():
                        protocol.idle_done()
                        try:
                            await self._guard(idle_task, "ending IDLE on")
                        except Exception as exc:  # the next command will reconnect
                            log.debug("ending IDLE on %s failed: %r", self.host, exc)
                finally:
                    idle_task.cancel()  # also when we are cancelled while ending IDLE
                    if idle_task.done() and not idle_task.cancelled():
                        idle_task.exception()  # seen: the connection's end is reported
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


def _capabilities_sent(lines: list[bytes | bytearray]) -> set[str] | None:
    """The capabilities in a command's response, if the server volunteered them."""
    for line in lines:
        raw = bytes(line)
        code = _CAPABILITY_CODE.match(raw)
        if code is not None:
            raw = b"CAPABILITY " + code.group(1)
        if raw[:11].upper() == b"CAPABILITY ":
            return set(raw[11:].decode("ascii", "replace").split())
    return None


def _parse(data: bytes) -> email.message.EmailMessage:
    message = _parser.parsebytes(data)
    assert isinstance(message, email.message.EmailMessage)
    return message


def _last_bytes(lines: list[bytes | bytearray]) -> bytes:
    return bytes(lines[-1]) if lines else b""


def _last(lines: list[bytes | bytearray]) -> str:
    return _last_bytes(lines).decode("utf-8", "replace")
