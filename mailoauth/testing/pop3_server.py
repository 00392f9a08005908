"""A test POP3 server (RFC 1939, 2449, 5034) with SASL XOAUTH2 / OAUTHBEARER.

It serves the INBOX of the shared :class:`~mailoauth.testing.mailstore.MailStore`:
CAPA, STLS, AUTH (initial response or two steps, ``*`` cancels), STAT, LIST, UIDL,
RETR (dot-stuffed), TOP, DELE, RSET, NOOP and QUIT. USER/PASS is refused. Deletions
happen only when the client QUITs from the TRANSACTION state (the UPDATE state); a
dropped connection deletes nothing. Commands are read from a buffer one line at a
time and answered in order, so PIPELINING is safe.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Final

from mailoauth.testing._mail_server import BearerMailServer
from mailoauth.testing._serving import Channel, LineTooLongError
from mailoauth.testing.bearer_auth import (
    AuthOutcome,
    SaslParseError,
    decode_sasl_response,
)
from mailoauth.testing.mailstore import INBOX, StoredMessage

if TYPE_CHECKING:
    pass

__all__ = ["MAX_LINE_LENGTH", "Pop3State", "TestPop3Server", "dot_stuff"]

#: Longest command or SASL response line accepted; longer closes the session. RFC 5034
#: allows 255 octets for ``AUTH`` with an initial response, but a two-step response
#: carries a whole token.
MAX_LINE_LENGTH: Final = 16384


class Pop3State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


_AUTHZ = frozenset({Pop3State.AUTHORIZATION})
_TRANS = frozenset({Pop3State.TRANSACTION})
_BOTH = _AUTHZ | _TRANS

#: Every command and the states it is allowed in: the one transition table.
COMMAND_STATES: Final[dict[str, frozenset[Pop3State]]] = {
    "CAPA": _BOTH,
    "NOOP": _BOTH,
    "QUIT": _BOTH,
    "STLS": _AUTHZ,
    "AUTH": _AUTHZ,
    "USER": _AUTHZ,
    "PASS": _AUTHZ,
    "APOP": _AUTHZ,
    "STAT": _TRANS,
    "LIST": _TRANS,
    "UIDL": _TRANS,
    "RETR": _TRANS,
    "TOP": _TRANS,
    "DELE": _TRANS,
    "RSET": _TRANS,
}


def dot_stuff(data: bytes) -> bytes:
    """A message as a POP3 multi-line body: CRLF line ends, leading dots doubled,
    ending with the ``.`` line."""
    data = re.sub(rb"\r?\n", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data + b".\r\n"


class TestPop3Server(BearerMailServer):
    """A POP3 server on loopback that takes bearer tokens.

    Arguments:
        store: the mail; POP3 sees each user's INBOX (a new store if omitted).
        oauth: the :class:`FakeOAuthServer` whose tokens are accepted; or
        validator: ``validate(username, token) -> bool`` instead of ``oauth``.
        personality: which provider to imitate (may be changed while running).
        delegations: which delegate's token opens which other (shared) mailbox
            (:class:`~mailoauth.testing.personality.Delegations`; in
            :attr:`delegations`, a new empty one if omitted).
        ssl_context: the server's TLS context; without one only a plaintext port where
            AUTH is allowed (test use only).
        implicit_tls: listen on :attr:`tls_port` (995-style).
        starttls: listen on :attr:`starttls_port` (110-style, offering STLS).
        require_tls: refuse AUTH before STLS on the plain port.

    Attributes: :attr:`host`, :attr:`tls_port`, :attr:`starttls_port`, :attr:`port`,
    :attr:`store`, :attr:`checker` (see :meth:`fail_next`), :attr:`personality`.
    """

    __test__ = False
    MAX_LINE = MAX_LINE_LENGTH

    async def handle(self, channel: Channel) -> None:
        await _Pop3Session(self, channel).run()


class _Pop3Session:
    def __init__(self, server: TestPop3Server, channel: Channel) -> None:
        self.server = server
        self.ch = channel
        self.state = Pop3State.AUTHORIZATION
        self.username = ""
        self.messages: list[StoredMessage] = []
        self.deleted: set[int] = set()
        """Message numbers marked by DELE."""

    async def run(self) -> None:
        await self.ch.send_line(self.server.personality.replies.pop3_greeting)
        while self.state is not Pop3State.UPDATE:
            try:
                line = await self.ch.readline()
            except LineTooLongError:
                await self.ch.send_line("-ERR Line too long.")
                return
            name, _, arg = line.decode("utf-8", "replace").strip().partition(" ")
            name = name.upper()
            allowed = COMMAND_STATES.get(name)
            if allowed is None:
                await self.ch.send_line(f"-ERR Unknown command {name[:20]}.")
            elif self.state not in allowed:
                await self.ch.send_line(f"-ERR {name} is not allowed in this state.")
            else:
                await getattr(self, f"_cmd_{name}")(arg.strip())

    async def _multiline(self, first: str, lines: list[str]) -> None:
        body = "".join(f"{line}\r\n" for line in lines)
        await self.ch.send(f"{first}\r\n{body}.\r\n".encode())

    def _message(self, arg: str) -> tuple[int, StoredMessage] | None:
        try:
            number = int(arg)
        except ValueError:
            return None
        if not 1 <= number <= len(self.messages) or number in self.deleted:
            return None
        return number, self.messages[number - 1]

    def _live(self) -> list[tuple[int, StoredMessage]]:
        return [(i + 1, m) for i, m in enumerate(self.messages) if i + 1 not in self.deleted]

    # -- AUTHORIZATION -------------------------------------------------------------------

    async def _cmd_CAPA(self, arg: str) -> None:
        caps = ["TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"]
        if self.state is Pop3State.AUTHORIZATION:
            if not self.ch.tls and self.server.ssl_context is not None:
                caps.append("STLS")
            if self.ch.tls or not self.server.require_tls:
                caps.append("SASL " + " ".join(self.server.personality.replies.mechanisms))
        caps.append("IMPLEMENTATION mailoauth-test")
        await self._multiline("+OK Capability list follows", caps)

    async def _cmd_STLS(self, arg: str) -> None:
        context = self.server.ssl_context
        if self.ch.tls or context is None:
            await self.ch.send_line("-ERR STLS is not available here.")
            return
        await self.ch.send_line("+OK Begin TLS negotiation.")
        await self.ch.start_tls(context)

    async def _cmd_USER(self, arg: str) -> None:
        await self.ch.send_line("-ERR [AUTH] USER/PASS is disabled; use AUTH XOAUTH2.")

    _cmd_PASS = _cmd_APOP = _cmd_USER

    async def _cmd_AUTH(self, arg: str) -> None:
        if not arg:
            await self._multiline("+OK", list(self.server.personality.replies.mechanisms))
            return
        mechanism, _, rest = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in self.server.personality.replies.mechanisms:
            await self.ch.send_line("-ERR Unsupported authentication mechanism.")
            return
        if self.server.require_tls and not self.ch.tls:
            await self.ch.send_line("-ERR [AUTH] Authentication is not allowed before STLS.")
            return
        initial: bytes | None = None
        if rest.strip():
            try:
                initial = decode_sasl_response(rest.encode())
            except SaslParseError:
                await self.ch.send_line("-ERR Invalid base64 in the initial response.")
                return

        server = self.server
        replies = server.personality.replies
        result = await server.authenticate(self.ch, mechanism, initial, protocol="pop3")
        if result.outcome is AuthOutcome.ABORTED:
            await self.ch.send_line("-ERR Authentication aborted.")
        elif result.outcome is AuthOutcome.OK:
            assert result.credentials is not None
            self.username = result.credentials.username
            server.store.add_user(self.username)
            self.messages = server.store.messages(self.username, INBOX)
            self.state = Pop3State.TRANSACTION
            await self.ch.send_line(replies.pop3_auth_ok)
        else:
            await self.ch.send_line((result.reply or (replies.pop3_auth_failed,))[0])

    # -- both ----------------------------------------------------------------------------

    async def _cmd_NOOP(self, arg: str) -> None:
        await self.ch.send_line("+OK")

    async def _cmd_QUIT(self, arg: str) -> None:
        if self.state is Pop3State.TRANSACTION:
            self.state = Pop3State.UPDATE
            uids = [self.messages[n - 1].uid for n in sorted(self.deleted)]
            self.server.store.remove(self.username, INBOX, uids)
            await self.ch.send_line(f"+OK Logging out, {len(uids)} messages deleted.")
        else:
            self.state = Pop3State.UPDATE
            await self.ch.send_line("+OK Logging out.")

    # -- TRANSACTION ---------------------------------------------------------------------

    async def _cmd_STAT(self, arg: str) -> None:
        live = self._live()
        await self.ch.send_line(f"+OK {len(live)} {sum(m.size for _, m in live)}")

    async def _cmd_LIST(self, arg: str) -> None:
        if arg:
            found = self._message(arg)
            if found is None:
                await self.ch.send_line("-ERR No such message.")
            else:
                await self.ch.send_line(f"+OK {found[0]} {found[1].size}")
            return
        live = self._live()
        await self._multiline(f"+OK {len(live)} messages", [f"{n} {m.size}" for n, m in live])

    async def _cmd_UIDL(self, arg: str) -> None:
        if arg:
            found = self._message(arg)
            if found is None:
                await self.ch.send_line("-ERR No such message.")
            else:
                await self.ch.send_line(f"+OK {found[0]} {found[1].uid}")
            return
        await self._multiline("+OK", [f"{n} {m.uid}" for n, m in self._live()])

    async def _cmd_RETR(self, arg: str) -> None:
        found = self._message(arg)
        if found is None:
            await self.ch.send_line("-ERR No such message.")
            return
        msg = found[1]
        await self.ch.send(f"+OK {msg.size} octets\r\n".encode() + dot_stuff(msg.data))

    async def _cmd_TOP(self, arg: str) -> None:
        number, _, count_text = arg.partition(" ")
        found = self._message(number)
        try:
            count = int(count_text)
        except ValueError:
            count = -1
        if found is None or count < 0:
            await self.ch.send_line("-ERR Usage: TOP <message> <lines>.")
            return
        data = re.sub(rb"\r?\n", b"\r\n", found[1].data)
        header, sep, body = data.partition(b"\r\n\r\n")
        body_lines = body.removesuffix(b"\r\n").split(b"\r\n") if body else []
        top = header + sep + b"".join(line + b"\r\n" for line in body_lines[:count])
        await self.ch.send(b"+OK\r\n" + dot_stuff(top))

    async def _cmd_DELE(self, arg: str) -> None:
        found = self._message(arg)
        if found is None:
            await self.ch.send_line("-ERR No such message.")
            return
        self.deleted.add(found[0])
        await self.ch.send_line(f"+OK Message {found[0]} marked to be deleted.")

    async def _cmd_RSET(self, arg: str) -> None:
        self.deleted.clear()
        await self.ch.send_line(f"+OK {len(self.messages)} messages.")
