"""A test IMAP4rev1 server with SASL XOAUTH2 / OAUTHBEARER, over a shared MailStore.

Enough of RFC 3501 and its extensions for clients' own tests: CAPABILITY, STARTTLS,
AUTHENTICATE (with SASL-IR), LOGOUT, NOOP, ID, NAMESPACE, LIST/LSUB, CREATE/DELETE,
STATUS, SELECT/EXAMINE, APPEND (UIDPLUS: APPENDUID), SEARCH, FETCH, STORE, COPY
(COPYUID), MOVE, EXPUNGE, UID EXPUNGE, CHECK, CLOSE, UNSELECT and IDLE (pushing
``* N EXISTS`` when mail arrives), each also as ``UID ...`` where that exists.
Unsupported syntax gets a tagged ``BAD``; nothing else is silently ignored.

What a rejected token gets, and whether a session dies when its token expires, is
the server's :class:`~mailoauth.testing.personality.Personality`.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio

from mailoauth.testing._imap_syntax import (
    SYSTEM_FLAGS,
    FetchItem,
    ImapSyntaxError,
    Literal,
    Token,
    compile_search,
    format_flags,
    format_uid_set,
    in_ranges,
    normalize_flag,
    parse_fetch_items,
    parse_internaldate,
    parse_sequence_set,
    quote,
    render_fetch_item,
    text_of,
    tokenize,
)
from mailoauth.testing._mail_server import BearerMailServer
from mailoauth.testing._serving import Channel, LineTooLongError
from mailoauth.testing.bearer_auth import (
    AuthOutcome,
    BearerCredentials,
    SaslParseError,
    decode_sasl_response,
)
from mailoauth.testing.mailstore import INBOX, StoredMessage, Subscription

if TYPE_CHECKING:
    pass

__all__ = ["MAX_LINE_LENGTH", "MAX_LITERAL_SIZE", "ImapState", "TestImapServer"]

#: Longest command line (or SASL response line) accepted; longer closes the session.
MAX_LINE_LENGTH: Final = 16384
#: Largest literal (an APPENDed message) accepted; larger closes the session.
MAX_LITERAL_SIZE: Final = 32 * 1024 * 1024
#: Most literals in one command.
MAX_LITERALS_PER_COMMAND: Final = 16

_LITERAL_RE = re.compile(rb"\{(\d+)(\+?)\}$")
_DELIMITER = "/"


class ImapState(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset({ImapState.NOT_AUTHENTICATED, ImapState.AUTHENTICATED, ImapState.SELECTED})
_NOT_AUTH = frozenset({ImapState.NOT_AUTHENTICATED})
_AUTHED = frozenset({ImapState.AUTHENTICATED, ImapState.SELECTED})
_SELECTED = frozenset({ImapState.SELECTED})

#: Every command and the states it is allowed in: the one transition table.
COMMAND_STATES: Final[dict[str, frozenset[ImapState]]] = {
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,
    "STARTTLS": _NOT_AUTH,
    "AUTHENTICATE": _NOT_AUTH,
    "LOGIN": _NOT_AUTH,
    "NAMESPACE": _AUTHED,
    "ENABLE": _AUTHED,
    "SELECT": _AUTHED,
    "EXAMINE": _AUTHED,
    "CREATE": _AUTHED,
    "DELETE": _AUTHED,
    "SUBSCRIBE": _AUTHED,
    "UNSUBSCRIBE": _AUTHED,
    "LIST": _AUTHED,
    "LSUB": _AUTHED,
    "STATUS": _AUTHED,
    "APPEND": _AUTHED,
    "IDLE": _AUTHED,
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,
    "UID": _SELECTED,
}
_UID_COMMANDS: Final = frozenset({"SEARCH", "FETCH", "STORE", "COPY", "MOVE", "EXPUNGE"})
#: Commands during which EXPUNGE responses are not allowed (RFC 3501 §7.4.1).
_NO_EXPUNGE_DURING: Final = frozenset({"FETCH", "STORE", "SEARCH"})


class _Close(Exception):
    """End the session (after LOGOUT, a BYE, or a limit)."""


class TestImapServer(BearerMailServer):
    """An IMAP server on loopback that takes bearer tokens.

    Arguments:
        store: the mail (a new :class:`MailStore` if omitted).
        oauth: the :class:`FakeOAuthServer` whose tokens are accepted; or
        validator: ``validate(username, token) -> bool`` instead of ``oauth``.
        personality: which provider to imitate (may be changed while running).
        delegations: which delegate's token opens which other (shared) mailbox
            (:class:`~mailoauth.testing.personality.Delegations`; in
            :attr:`delegations`, a new empty one if omitted).
        ssl_context: the server's TLS context. Without one there is only a plaintext
            port, where AUTHENTICATE is allowed (test use only).
        implicit_tls: listen on :attr:`tls_port` (993-style).
        starttls: listen on :attr:`starttls_port` (143-style, offering STARTTLS).
        require_tls: refuse AUTHENTICATE before STARTTLS on the plain port.
        timeout: seconds any read may wait (IDLE included) before the session closes.

    Attributes: :attr:`host`, :attr:`tls_port`, :attr:`starttls_port`, :attr:`port`,
    :attr:`store`, :attr:`checker` (see :meth:`fail_next`), :attr:`personality`.
    """

    __test__ = False
    MAX_LINE = MAX_LINE_LENGTH

    async def handle(self, channel: Channel) -> None:
        await _ImapSession(self, channel).run()


class _ImapSession:
    def __init__(self, server: TestImapServer, channel: Channel) -> None:
        self.server = server
        self.ch = channel
        self.state = ImapState.NOT_AUTHENTICATED
        self.creds: BearerCredentials | None = None
        self.mailbox = ""
        self.readonly = False
        self.view: list[int] = []
        """UIDs in sequence-number order, as this session last reported them."""
        self.recent: set[int] = set()
        self._changed = asyncio.Event()
        self._subscription: Subscription | None = None

    @property
    def user(self) -> str:
        assert self.creds is not None
        return self.creds.username

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        await self.ch.send_line(self.server.personality.replies.imap_greeting)
        try:
            while self.state is not ImapState.LOGOUT:
                try:
                    segments = await self._read_command()
                except LineTooLongError:
                    await self.ch.send_line("* BYE Command line too long.")
                    return
                if not await self._dispatch(segments):
                    return
        except _Close:
            return
        finally:
            if self._subscription is not None:
                self.server.store.unsubscribe(self._subscription)

    async def _read_command(self) -> list[bytes]:
        """Read a command with its literals (``{n}``: after ``+ Ready``; ``{n+}``: at once)."""
        segments: list[bytes] = []
        line = await self.ch.readline()
        while (m := _LITERAL_RE.search(line)) is not None:
            size = int(m[1])
            if size > MAX_LITERAL_SIZE or len(segments) >= 2 * MAX_LITERALS_PER_COMMAND:
                await self.ch.send_line("* BYE Literal too large.")
                raise _Close
            segments.append(line[: m.start()])
            if not m[2]:
                await self.ch.send_line("+ Ready for literal data")
            segments.append(Literal(await self.ch.read_exactly(size)))
            line = await self.ch.readline()
        segments.append(line)
        return segments

    async def _dispatch(self, segments: list[bytes]) -> bool:
        first = segments[0].split(b" ", 2)
        tag = first[0].decode("ascii", "replace")
        if not tag or len(first) < 2 or tag == "*" or tag == "+":
            await self.ch.send_line("* BAD Missing tag or command.")
            return True
        name = first[1].decode("ascii", "replace").upper()
        segments = [first[2] if len(first) > 2 else b"", *segments[1:]]
        allowed = COMMAND_STATES.get(name)
        if allowed is None:
            await self._tagged(tag, f"BAD Unknown command {name[:20]}.")
            return True
        if self.state not in allowed:
            await self._tagged(tag, f"BAD {name} is not allowed in the {self.state.value} state.")
            return True
        if not await self._token_still_valid():
            return False
        handler: Callable[[str, list[Token]], Awaitable[None]] = getattr(self, f"_cmd_{name}")
        try:
            args = tokenize(segments)
            await handler(tag, args)
        except ImapSyntaxError as exc:
            await self._tagged(tag, f"BAD {exc}")
        return self.state is not ImapState.LOGOUT

    async def _token_still_valid(self) -> bool:
        """Office 365 ends a session at the first command after its token expired."""
        replies = self.server.personality.replies
        if (
            self.creds is None
            or not replies.expires_sessions
            or self.server.checker.still_valid(self.creds)
        ):
            return True
        await self.ch.send_line(replies.imap_expired_bye)
        return False

    async def _tagged(self, tag: str, text: str) -> None:
        await self.ch.send_line(f"{tag} {text}")

    async def _ok(self, tag: str, text: str, *, command: str = "") -> None:
        if self.state is ImapState.SELECTED:
            await self._sync(expunge=command not in _NO_EXPUNGE_DURING)
        await self._tagged(tag, f"OK {text}")

    # -- mailbox view ------------------------------------------------------------------

    def _subscribe(self) -> None:
        if self._subscription is None:
            self._subscription = self.server.store.subscribe(
                self.user, lambda _user, _box: self._changed.set()
            )

    async def _sync(self, *, expunge: bool) -> None:
        """Tell the client about messages added (EXISTS) or removed (EXPUNGE) by others."""
        self._changed.clear()
        try:
            current = self.server.store.messages(self.user, self.mailbox)
        except KeyError:
            await self.ch.send_line("* BYE Mailbox was deleted.")
            raise _Close from None
        uids = {m.uid for m in current}
        if expunge:
            for index in range(len(self.view) - 1, -1, -1):
                if self.view[index] not in uids:
                    del self.view[index]
                    await self.ch.send_line(f"* {index + 1} EXPUNGE")
        highest = max(self.view, default=0)
        new = [m for m in current if m.uid > highest]
        if new:
            self.view.extend(m.uid for m in new)
            self._claim_recent(new)
            await self.ch.send_line(f"* {len(self.view)} EXISTS")

    def _claim_recent(self, messages: list[StoredMessage]) -> None:
        if self.readonly:
            return
        fresh = {m.uid for m in messages if m.recent}
        if fresh:
            self.recent |= fresh
            self.server.store.clear_recent(self.user, self.mailbox)

    def _resolve(self, set_text: str, *, uid: bool) -> list[tuple[int, StoredMessage]]:
        """``(sequence number, message)`` for a sequence set or UID set."""
        messages = {m.uid: m for m in self.server.store.messages(self.user, self.mailbox)}
        if uid:
            ranges = parse_sequence_set(set_text, max(self.view, default=0))
            picked = [(i + 1, u) for i, u in enumerate(self.view) if in_ranges(u, ranges)]
        else:
            ranges = parse_sequence_set(set_text, len(self.view))
            picked = [(i + 1, u) for i, u in enumerate(self.view) if in_ranges(i + 1, ranges)]
        return [(seq, messages[u]) for seq, u in picked if u in messages]

    def _flags_of(self, msg: StoredMessage) -> set[str]:
        flags = set(msg.flags)
        if msg.uid in self.recent:
            flags.add("\\Recent")
        return flags

    def _mailbox_arg(self, token: Token) -> str:
        name = text_of(token)
        return INBOX if name.upper() == INBOX else name

    # -- any state ---------------------------------------------------------------------

    def _capabilities(self) -> str:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE"]
        caps += ["UIDPLUS", "MOVE", "UNSELECT", "CHILDREN"]
        if self.state is ImapState.NOT_AUTHENTICATED:
            if not self.ch.tls and self.server.ssl_context is not None:
                caps.append("STARTTLS")
            if self.ch.tls or not self.server.require_tls:
                caps += [f"AUTH={m}" for m in self.server.personality.replies.mechanisms]
            caps.append("LOGINDISABLED")
        return " ".join(caps)

    async def _cmd_CAPABILITY(self, tag: str, args: list[Token]) -> None:
        await self.ch.send_line(f"* CAPABILITY {self._capabilities()}")
        await self._ok(tag, "CAPABILITY completed.")

    async def _cmd_NOOP(self, tag: str, args: list[Token]) -> None:
        await self._ok(tag, "NOOP completed.")

    async def _cmd_CHECK(self, tag: str, args: list[Token]) -> None:
        await self._ok(tag, "CHECK completed.")

    async def _cmd_LOGOUT(self, tag: str, args: list[Token]) -> None:
        await self.ch.send_line("* BYE Logging out.")
        await self._tagged(tag, "OK LOGOUT completed.")
        self.state = ImapState.LOGOUT

    async def _cmd_ID(self, tag: str, args: list[Token]) -> None:
        await self.ch.send_line('* ID ("name" "mailoauth-test")')
        await self._ok(tag, "ID completed.")

    # -- not authenticated -------------------------------------------------------------

    async def _cmd_STARTTLS(self, tag: str, args: list[Token]) -> None:
        context = self.server.ssl_context
        if self.ch.tls or context is None:
            await self._tagged(tag, "BAD STARTTLS is not available here.")
            return
        await self._tagged(tag, "OK Begin TLS negotiation now.")
        await self.ch.start_tls(context)

    async def _cmd_LOGIN(self, tag: str, args: list[Token]) -> None:
        await self._tagged(
            tag, "NO [CANNOT] LOGIN is disabled; use AUTHENTICATE XOAUTH2 or OAUTHBEARER."
        )

    async def _cmd_AUTHENTICATE(self, tag: str, args: list[Token]) -> None:
        if not args or len(args) > 2:
            raise ImapSyntaxError("AUTHENTICATE <mechanism> [initial response]")
        mechanism = text_of(args[0]).upper()
        if mechanism not in self.server.personality.replies.mechanisms:
            await self._tagged(tag, "NO [CANNOT] Unsupported authentication mechanism.")
            return
        if self.server.require_tls and not self.ch.tls:
            await self._tagged(
                tag, "NO [PRIVACYREQUIRED] Authentication is not allowed before STARTTLS."
            )
            return
        initial: bytes | None = None
        if len(args) == 2:
            try:
                initial = decode_sasl_response(text_of(args[1]).encode())
            except SaslParseError:
                await self._tagged(tag, "BAD Invalid base64 in the initial response.")
                return

        server = self.server
        replies = server.personality.replies
        result = await server.authenticate(self.ch, mechanism, initial, protocol="imap")
        if result.outcome is AuthOutcome.ABORTED:
            await self._tagged(tag, "BAD Authentication aborted by client.")
        elif result.outcome is AuthOutcome.OK:
            assert result.credentials is not None
            self.creds = result.credentials
            self.state = ImapState.AUTHENTICATED
            server.store.add_user(self.user)
            await self._tagged(tag, replies.imap_auth_ok.format(user=self.user))
        else:
            await self._tagged(tag, (result.reply or (replies.imap_auth_failed,))[0])

    # -- authenticated -----------------------------------------------------------------

    async def _cmd_NAMESPACE(self, tag: str, args: list[Token]) -> None:
        await self.ch.send_line(f'* NAMESPACE (("" "{_DELIMITER}")) NIL NIL')
        await self._ok(tag, "NAMESPACE completed.")

    async def _cmd_ENABLE(self, tag: str, args: list[Token]) -> None:
        await self.ch.send_line("* ENABLED")
        await self._ok(tag, "ENABLE completed.")

    async def _cmd_SELECT(self, tag: str, args: list[Token], *, readonly: bool = False) -> None:
        if len(args) != 1:
            raise ImapSyntaxError("SELECT <mailbox>")
        name = self._mailbox_arg(args[0])
        store = self.server.store
        self.state, self.mailbox, self.view, self.recent = ImapState.AUTHENTICATED, "", [], set()
        if not store.mailbox_exists(self.user, name):
            await self._tagged(tag, "NO [NONEXISTENT] Mailbox does not exist.")
            return
        self._subscribe()
        self.mailbox, self.readonly = name, readonly
        messages = store.messages(self.user, name)
        self.view = [m.uid for m in messages]
        self._claim_recent(messages)
        uidvalidity, uidnext = store.status(self.user, name)
        permanent = "()" if readonly else "(" + " ".join((*SYSTEM_FLAGS, "\\*")) + ")"
        lines = [
            f"* FLAGS {format_flags(SYSTEM_FLAGS)}",
            f"* OK [PERMANENTFLAGS {permanent}] Flags permitted.",
            f"* {len(messages)} EXISTS",
            f"* {len(self.recent)} RECENT",
        ]
        unseen = [i + 1 for i, m in enumerate(messages) if "\\Seen" not in m.flags]
        if unseen:
            lines.append(f"* OK [UNSEEN {unseen[0]}] First unseen.")
        lines += [
            f"* OK [UIDVALIDITY {uidvalidity}] UIDs valid.",
            f"* OK [UIDNEXT {uidnext}] Predicted next UID.",
        ]
        for line in lines:
            await self.ch.send_line(line)
        self.state = ImapState.SELECTED
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        command = "EXAMINE" if readonly else "SELECT"
        await self._tagged(tag, f"OK [{mode}] {command} completed.")

    async def _cmd_EXAMINE(self, tag: str, args: list[Token]) -> None:
        await self._cmd_SELECT(tag, args, readonly=True)

    async def _cmd_CREATE(self, tag: str, args: list[Token]) -> None:
        if len(args) != 1:
            raise ImapSyntaxError("CREATE <mailbox>")
        name = self._mailbox_arg(args[0]).rstrip(_DELIMITER)
        if not name or not self.server.store.create_mailbox(self.user, name):
            await self._tagged(tag, "NO [ALREADYEXISTS] Mailbox already exists.")
            return
        await self._ok(tag, "CREATE completed.")

    async def _cmd_DELETE(self, tag: str, args: list[Token]) -> None:
        if len(args) != 1:
            raise ImapSyntaxError("DELETE <mailbox>")
        name = self._mailbox_arg(args[0])
        if self.state is ImapState.SELECTED and name == self.mailbox:
            await self._tagged(tag, "NO Cannot delete the selected mailbox.")
        elif not self.server.store.delete_mailbox(self.user, name):
            await self._tagged(tag, "NO [NONEXISTENT] Mailbox does not exist (or is INBOX).")
        else:
            await self._ok(tag, "DELETE completed.")

    async def _cmd_SUBSCRIBE(self, tag: str, args: list[Token]) -> None:
        await self._ok(tag, "SUBSCRIBE completed.")

    async def _cmd_UNSUBSCRIBE(self, tag: str, args: list[Token]) -> None:
        await self._ok(tag, "UNSUBSCRIBE completed.")

    async def _cmd_LIST(self, tag: str, args: list[Token], *, command: str = "LIST") -> None:
        if len(args) != 2:
            raise ImapSyntaxError(f"{command} <reference> <pattern>")
        reference, pattern = text_of(args[0]), text_of(args[1])
        if pattern == "":
            await self.ch.send_line(f'* {command} (\\Noselect) "{_DELIMITER}" ""')
            await self._ok(tag, f"{command} completed.")
            return
        regex = re.compile(
            "^"
            + "".join(
                ".*" if c == "*" else f"[^{_DELIMITER}]*" if c == "%" else re.escape(c)
                for c in reference + pattern
            )
            + "$",
            re.IGNORECASE if (reference + pattern).upper().startswith(INBOX) else 0,
        )
        names = self.server.store.mailboxes(self.user)
        for name in names:
            if regex.match(name):
                children = any(n.startswith(name + _DELIMITER) for n in names)
                attr = "\\HasChildren" if children else "\\HasNoChildren"
                await self.ch.send_line(f'* {command} ({attr}) "{_DELIMITER}" {quote(name)}')
        await self._ok(tag, f"{command} completed.")

    async def _cmd_LSUB(self, tag: str, args: list[Token]) -> None:
        await self._cmd_LIST(tag, args, command="LSUB")

    async def _cmd_STATUS(self, tag: str, args: list[Token]) -> None:
        if len(args) != 2 or not isinstance(args[1], list):
            raise ImapSyntaxError("STATUS <mailbox> (<items>)")
        name = self._mailbox_arg(args[0])
        store = self.server.store
        if not store.mailbox_exists(self.user, name):
            await self._tagged(tag, "NO [NONEXISTENT] Mailbox does not exist.")
            return
        messages = store.messages(self.user, name)
        uidvalidity, uidnext = store.status(self.user, name)
        values = {
            "MESSAGES": len(messages),
            "RECENT": sum(m.recent for m in messages),
            "UIDNEXT": uidnext,
            "UIDVALIDITY": uidvalidity,
            "UNSEEN": sum("\\Seen" not in m.flags for m in messages),
        }
        parts = []
        for item in args[1]:
            key = text_of(item).upper()
            if key not in values:
                raise ImapSyntaxError(f"unsupported STATUS item {key[:20]}")
            parts.append(f"{key} {values[key]}")
        await self.ch.send_line(f"* STATUS {quote(name)} ({' '.join(parts)})")
        await self._ok(tag, "STATUS completed.")

    async def _cmd_APPEND(self, tag: str, args: list[Token]) -> None:
        if len(args) < 2 or not isinstance(args[-1], Literal):
            raise ImapSyntaxError("APPEND <mailbox> [(flags)] [date-time] <literal>")
        name = self._mailbox_arg(args[0])
        flags: list[str] = []
        internal_date: float | None = None
        for extra in args[1:-1]:
            if isinstance(extra, list):
                flags = [normalize_flag(text_of(f)) for f in extra]
            else:
                internal_date = parse_internaldate(text_of(extra))
        store = self.server.store
        if not store.mailbox_exists(self.user, name):
            await self._tagged(tag, "NO [TRYCREATE] Mailbox does not exist.")
            return
        uid = store.append(self.user, name, args[-1], flags=flags, internal_date=internal_date)
        uidvalidity, _ = store.status(self.user, name)
        await self._ok(tag, f"[APPENDUID {uidvalidity} {uid}] APPEND completed.")

    async def _cmd_IDLE(self, tag: str, args: list[Token]) -> None:
        self._subscribe()
        await self.ch.send_line("+ idling")
        line = b""
        async with anyio.create_task_group() as tg:

            async def push_changes() -> None:
                while True:
                    if self.state is ImapState.SELECTED:
                        # Shielded: a half-written response would corrupt the stream.
                        with anyio.CancelScope(shield=True):
                            await self._sync(expunge=True)
                    await self._changed.wait()

            tg.start_soon(push_changes)
            line = await self.ch.readline()
            tg.cancel_scope.cancel()
        if line.strip().upper() != b"DONE":
            await self._tagged(tag, "BAD Expected DONE.")
            return
        await self._ok(tag, "IDLE terminated.")

    # -- selected ----------------------------------------------------------------------

    async def _cmd_CLOSE(self, tag: str, args: list[Token]) -> None:
        if not self.readonly:
            deleted = [
                m.uid
                for m in self.server.store.messages(self.user, self.mailbox)
                if "\\Deleted" in m.flags
            ]
            self.server.store.remove(self.user, self.mailbox, deleted)
        self._deselect()
        await self._tagged(tag, "OK CLOSE completed.")

    async def _cmd_UNSELECT(self, tag: str, args: list[Token]) -> None:
        self._deselect()
        await self._tagged(tag, "OK UNSELECT completed.")

    def _deselect(self) -> None:
        self.state, self.mailbox, self.view, self.recent = ImapState.AUTHENTICATED, "", [], set()

    async def _cmd_UID(self, tag: str, args: list[Token]) -> None:
        if not args or text_of(args[0]).upper() not in _UID_COMMANDS:
            raise ImapSyntaxError("UID SEARCH/FETCH/STORE/COPY/MOVE/EXPUNGE ...")
        name = text_of(args[0]).upper()
        if name == "EXPUNGE":
            await self._cmd_EXPUNGE(tag, args[1:], uid=True)
            return
        handler: Callable[..., Awaitable[None]] = getattr(self, f"_cmd_{name}")
        await handler(tag, args[1:], uid=True)

    async def _expunge_uids(self, uids: set[int]) -> None:
        """Remove ``uids`` from the store and the view, sending EXPUNGE responses."""
        self.server.store.remove(self.user, self.mailbox, uids)
        for index in range(len(self.view) - 1, -1, -1):
            if self.view[index] in uids:
                del self.view[index]
                await self.ch.send_line(f"* {index + 1} EXPUNGE")

    async def _cmd_EXPUNGE(self, tag: str, args: list[Token], *, uid: bool = False) -> None:
        if self.readonly:
            await self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only.")
            return
        if uid:
            if len(args) != 1:
                raise ImapSyntaxError("UID EXPUNGE <uid set>")
            candidates = [m for _, m in self._resolve(text_of(args[0]), uid=True)]
        else:
            candidates = self.server.store.messages(self.user, self.mailbox)
        await self._expunge_uids({m.uid for m in candidates if "\\Deleted" in m.flags})
        await self._ok(tag, "EXPUNGE completed.")

    async def _cmd_SEARCH(self, tag: str, args: list[Token], *, uid: bool = False) -> None:
        predicate = compile_search(args, max_seq=len(self.view), max_uid=max(self.view, default=0))
        hits = [
            str(msg.uid if uid else seq)
            for seq, msg in self._resolve("1:*", uid=False)
            if predicate(seq, msg, msg.uid in self.recent)
        ]
        await self.ch.send_line("* SEARCH" + "".join(" " + h for h in hits))
        await self._ok(tag, "SEARCH completed.", command="" if uid else "SEARCH")

    async def _cmd_FETCH(self, tag: str, args: list[Token], *, uid: bool = False) -> None:
        if len(args) != 2:
            raise ImapSyntaxError("FETCH <set> <items>")
        items = parse_fetch_items(args[1])
        if uid and not any(i.name == "UID" for i in items):
            items.insert(0, FetchItem("UID"))
        store = self.server.store
        for seq, msg in self._resolve(text_of(args[0]), uid=uid):
            if any(i.sets_seen for i in items) and not self.readonly and "\\Seen" not in msg.flags:
                msg = (
                    store.set_flags(self.user, self.mailbox, msg.uid, {*msg.flags, "\\Seen"}) or msg
                )
                if not any(i.name == "FLAGS" for i in items):
                    items = [*items, FetchItem("FLAGS")]
            flags = self._flags_of(msg)
            body = b" ".join(render_fetch_item(item, msg, flags) for item in items)
            await self.ch.send(b"* %d FETCH (" % seq + body + b")\r\n")
        await self._ok(tag, "FETCH completed.", command="" if uid else "FETCH")

    async def _cmd_STORE(self, tag: str, args: list[Token], *, uid: bool = False) -> None:
        if len(args) < 3:
            raise ImapSyntaxError("STORE <set> [+|-]FLAGS[.SILENT] <flags>")
        if self.readonly:
            await self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only.")
            return
        item = text_of(args[1]).upper()
        mode, _, rest = item.partition("FLAGS")
        if mode not in ("", "+", "-") or rest not in ("", ".SILENT"):
            raise ImapSyntaxError(f"unsupported STORE item {item[:20]}")
        raw = args[2] if len(args) == 3 and isinstance(args[2], list) else args[2:]
        assert isinstance(raw, list)
        given = {normalize_flag(text_of(f)) for f in raw} - {"\\Recent"}
        store = self.server.store
        for seq, msg in self._resolve(text_of(args[0]), uid=uid):
            flags = given if mode == "" else msg.flags | given if mode == "+" else msg.flags - given
            msg = store.set_flags(self.user, self.mailbox, msg.uid, flags) or msg
            if rest != ".SILENT":
                uid_part = f"UID {msg.uid} " if uid else ""
                flag_text = format_flags(self._flags_of(msg))
                await self.ch.send_line(f"* {seq} FETCH ({uid_part}FLAGS {flag_text})")
        await self._ok(tag, "STORE completed.", command="" if uid else "STORE")

    async def _copy(
        self, tag: str, args: list[Token], *, uid: bool, move: bool
    ) -> tuple[list[int], str] | None:
        if len(args) != 2:
            raise ImapSyntaxError("COPY/MOVE <set> <mailbox>")
        target = self._mailbox_arg(args[1])
        store = self.server.store
        if not store.mailbox_exists(self.user, target):
            await self._tagged(tag, "NO [TRYCREATE] Mailbox does not exist.")
            return None
        if move and self.readonly:
            await self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only.")
            return None
        sources = [msg.uid for _, msg in self._resolve(text_of(args[0]), uid=uid)]
        new_uids = store.copy(self.user, self.mailbox, sources, target)
        uidvalidity, _ = store.status(self.user, target)
        code = f"COPYUID {uidvalidity} {format_uid_set(sources)} {format_uid_set(new_uids)}"
        return sources, code if sources else ""

    async def _cmd_COPY(self, tag: str, args: list[Token], *, uid: bool = False) -> None:
        done = await self._copy(tag, args, uid=uid, move=False)
        if done is not None:
            code = f"[{done[1]}] " if done[1] else ""
            await self._ok(tag, f"{code}COPY completed.")

    async def _cmd_MOVE(self, tag: str, args: list[Token], *, uid: bool = False) -> None:
        done = await self._copy(tag, args, uid=uid, move=True)
        if done is not None:
            sources, code = done
            if code:
                await self.ch.send_line(f"* OK [{code}] Moved.")
            await self._expunge_uids(set(sources))
            await self._ok(tag, "MOVE completed.")
