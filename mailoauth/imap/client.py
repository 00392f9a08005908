"""ImapClient: IMAP with an OAuth 2.0 bearer token, over aioimaplib's parser.

The socket is the connection core's; aioimaplib's protocol object parses over it. All
of aioimaplib's gaps (STARTTLS, error challenges, OAUTHBEARER, dropped connections)
are filled in :mod:`mailoauth.imap._aioimaplib`. This module holds the commands
(select, search, fetch, store, copy, move, append...); the session they run in
(connect, reconnect, re-authentication, IDLE) is :mod:`mailoauth.imap.session`.
"""

from __future__ import annotations

import datetime as dt
import email.message
import email.policy
from collections.abc import Iterable, Sequence
from email.parser import BytesParser
from typing import Any, Final

from mailoauth._util.text import refuse_controls
from mailoauth.errors import CommandError, ConfigurationError
from mailoauth.imap import parsing
from mailoauth.imap._aioimaplib import SELECTED, Command, ImapProtocol
from mailoauth.imap.parsing import Folder, MailboxInfo

# The lifecycle lives in mailoauth.imap.session; these names stay importable from here.
from mailoauth.imap.session import IDLE_RENEW_AFTER as IDLE_RENEW_AFTER
from mailoauth.imap.session import REAUTH_MARGIN as REAUTH_MARGIN
from mailoauth.imap.session import IdleEvent, ImapSession, _last

__all__ = ["IdleEvent", "ImapClient"]

_parser = BytesParser(policy=email.policy.default)


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


class ImapClient(ImapSession):
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

    async def _restore_selection(self, mailbox: str, readonly: bool) -> None:
        await self._select(mailbox, readonly)

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
            response = await p.execute(Command(command, p.new_tag(), name, loop=p.loop))
            if response.result == "OK":
                p.state = SELECTED
            return response

        response = await self._call(op, f"selecting {mailbox!r} on")
        info = parsing.parse_select(mailbox, self._check(response, command), readonly)
        self._selected = (mailbox, readonly)
        return info

    async def select_and_search(
        self, mailbox: str = "INBOX", *criteria: str, readonly: bool = False
    ) -> tuple[MailboxInfo, list[int]]:
        """SELECT (EXAMINE with ``readonly``) ``mailbox`` and UID SEARCH it with
        ``criteria`` (``ALL`` when none), both sent at once: one round trip where
        :meth:`select` then :meth:`uid_search` take two (a poll:
        ``select_and_search("INBOX", "UNSEEN")``). IMAP allows it (RFC 3501 §5.5): the
        server answers them in order, and if the SELECT fails no mailbox is selected,
        so the search fails too; then the SELECT's refusal is raised as
        :class:`CommandError`, as :meth:`select` raises it."""
        name = parsing.encode_mailbox(_check_arg(mailbox, "mailbox name"))
        keys = [_check_arg(c, "search criterion") for c in criteria] or ["ALL"]
        command = "EXAMINE" if readonly else "SELECT"

        async def op(p: ImapProtocol) -> Any:
            p.forget_unsolicited()
            selecting = Command(command, p.new_tag(), name, loop=p.loop)
            search = Command("SEARCH", p.new_tag(), *keys, prefix="UID", loop=p.loop)
            responses = await p.pipeline(selecting, search)
            if responses[0].result == "OK":
                p.state = SELECTED
            return responses

        selected, found = await self._call(op, f"selecting {mailbox!r} on")
        info = parsing.parse_select(mailbox, self._check(selected, command), readonly)
        self._selected = (mailbox, readonly)
        return info, parsing.parse_search(self._check(found, "UID SEARCH"))

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


def _parse(data: bytes) -> email.message.EmailMessage:
    message = _parser.parsebytes(data)
    assert isinstance(message, email.message.EmailMessage)
    return message
