"""A test SMTP submission server: aiosmtpd with SASL XOAUTH2 and OAUTHBEARER.

The server runs aiosmtpd's protocol on the event loop that starts it (or on a
background loop with ``with``; see :mod:`mailoauth.testing._serving`). AUTH is required
before MAIL; accepted messages are recorded in :attr:`TestSmtpServer.messages` and
delivered to the INBOX of every local recipient in the shared
:class:`~mailoauth.testing.mailstore.MailStore`.

Example::

    with FakeOAuthServer() as oauth, TestSmtpServer(
        oauth=oauth, ssl_context=TestCA().server_context()
    ) as smtp:
        ...  # smtplib.SMTP("127.0.0.1", smtp.starttls_port).starttls(...)
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from mailoauth.testing._serving import LoopService
from mailoauth.testing.bearer_auth import (
    SUPPORTED_MECHANISMS,
    AuthOutcome,
    BearerCredentials,
    SaslParseError,
    TokenChecker,
    Validator,
    decode_sasl_response,
    oauth_validator,
    run_exchange,
)
from mailoauth.testing.mailstore import MailStore
from mailoauth.testing.personality import Delegations, Personality, TenantStates

if TYPE_CHECKING:
    from mailoauth.testing.oauth_server import FakeOAuthServer

__all__ = ["MAX_LINE_LENGTH", "SmtpMessage", "TestSmtpServer"]

#: Longest line accepted, DATA included. Above RFC 5321's 1,000 so that a long
#: (Microsoft-sized) token fits the response to a ``334`` challenge, as with Postfix
#: (12,288). ``AUTH <mech> <initial response>`` itself stays capped at 512 octets.
MAX_LINE_LENGTH: Final = 16384
#: Largest message accepted (SIZE).
MAX_MESSAGE_SIZE: Final = 32 * 1024 * 1024


@dataclass(frozen=True)
class SmtpMessage:
    """One accepted message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    username: str
    """The authenticated user who sent it."""
    delivered_to: tuple[str, ...] = field(default=())
    """The recipients whose INBOX got it (the local ones)."""


class _QuietSession(Session):
    """aiosmtpd logs a deprecation warning each time AUTH sets ``login_data``."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _OAuthSMTP(SMTP):
    line_length_limit = MAX_LINE_LENGTH

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)


class _Handler:
    """aiosmtpd hooks: ``auth_*`` mechanisms and ``handle_*`` commands."""

    def __init__(self, server: TestSmtpServer) -> None:
        self._server = server

    async def auth_XOAUTH2(self, smtp: SMTP, args: list[str]) -> AuthResult:
        return await self._auth(smtp, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, smtp: SMTP, args: list[str]) -> AuthResult:
        return await self._auth(smtp, "OAUTHBEARER", args)

    async def _auth(self, smtp: SMTP, mechanism: str, args: list[str]) -> AuthResult:
        initial: bytes | None = None
        if len(args) > 1:
            try:
                initial = decode_sasl_response(args[1].encode("ascii", "replace"))
            except SaslParseError:
                await smtp.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)

        async def ask(challenge: bytes) -> bytes | None:
            # challenge_auth writes "334 <base64>", reads the answer and itself replies
            # 501 to a "*" or to bad base64 (returning MISSING).
            answer = await smtp.challenge_auth(challenge)
            return None if answer is MISSING else bytes(answer)

        server = self._server
        replies = server.personality.replies
        result = await run_exchange(
            mechanism,
            initial,
            ask,
            server.checker,
            server.personality,
            tenant=server.tenant,
            protocol="smtp",
        )
        if result.outcome is AuthOutcome.OK:
            return AuthResult(
                success=True, auth_data=result.credentials, message=replies.smtp_auth_ok
            )
        if result.outcome is not AuthOutcome.ABORTED:
            for line in result.reply or replies.smtp_auth_failed:
                await smtp.push(line)
        return AuthResult(success=False, handled=True)

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        creds = session.auth_data
        username = creds.username if isinstance(creds, BearerCredentials) else ""
        sender = envelope.mail_from or ""
        denied = self._server.personality.replies.smtp_send_as_denied
        if denied is not None and not self._server.delegations.may_send_as(username, sender):
            # Exchange Online checks Send As when it submits the message, after DATA.
            return denied.format(user=username, address=sender)
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        delivered = []
        for rcpt in envelope.rcpt_tos:
            if self._server.is_local(rcpt):
                self._server.store.deliver(rcpt, data)
                delivered.append(rcpt)
        self._server.messages.append(
            SmtpMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=data,
                username=username,
                delivered_to=tuple(delivered),
            )
        )
        return "250 2.0.0 OK queued"


class TestSmtpServer(LoopService):
    """An SMTP submission server on loopback that takes bearer tokens.

    Arguments:
        store: where local recipients' mail lands (a new store if omitted).
        oauth: the :class:`FakeOAuthServer` whose tokens are accepted; or
        validator: ``validate(username, token) -> bool`` instead of ``oauth``.
        personality: which provider's replies to imitate (:class:`Personality`).
        delegations: who may open (FullAccess) and send as (SendAs) whose mailbox
            (:class:`~mailoauth.testing.personality.Delegations`; in
            :attr:`delegations`, a new empty one if omitted). Under the Office 365
            personality a MAIL FROM other than the user's own address needs SendAs.
        ssl_context: the server's TLS context (e.g. ``TestCA.server_context()``). Without
            one there is only a plaintext port, where AUTH is allowed (test use only).
        implicit_tls: listen on :attr:`tls_port` (SMTPS, 465-style).
        starttls: listen on :attr:`starttls_port` (submission, 587-style, STARTTLS).
        require_starttls: on the STARTTLS port, refuse everything but EHLO, STARTTLS
            and QUIT before TLS (so AUTH is never offered in plaintext).
        local_domains: recipient domains delivered into the store; None means all.
        hostname: the name in the greeting and EHLO reply.

    Attributes: :attr:`host`, :attr:`tls_port`, :attr:`starttls_port`, :attr:`port`,
    :attr:`store`, :attr:`messages` (every accepted :class:`SmtpMessage`),
    :attr:`checker` (its :meth:`~TokenChecker.fail_next` is :meth:`fail_next`),
    :attr:`personality` (may be changed while running).
    """

    __test__ = False

    def __init__(
        self,
        store: MailStore | None = None,
        *,
        oauth: FakeOAuthServer | None = None,
        validator: Validator | None = None,
        personality: Personality = Personality.RFC,
        delegations: Delegations | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        implicit_tls: bool = True,
        starttls: bool = True,
        require_starttls: bool = True,
        tls_port: int = 0,
        starttls_port: int = 0,
        local_domains: Collection[str] | None = None,
        hostname: str = "localhost",
        timeout: float = 300.0,
    ) -> None:
        if (oauth is None) == (validator is None):
            raise ValueError("pass exactly one of oauth= or validator=")
        self.store = store if store is not None else MailStore()
        self.delegations = delegations if delegations is not None else Delegations()
        #: Tenant states that refuse valid tokens as Exchange does (shared by a sandbox).
        self.tenant = TenantStates()
        if validator is None:
            assert oauth is not None
            validator = oauth_validator(oauth, self.delegations)
        self.checker = TokenChecker(validator)
        self.personality = personality
        self.ssl_context = ssl_context
        self.host = host
        self.implicit_tls = implicit_tls and ssl_context is not None
        self.starttls = starttls or not self.implicit_tls
        self.require_starttls = require_starttls and ssl_context is not None
        self.local_domains = None if local_domains is None else {d.lower() for d in local_domains}
        self.hostname = hostname
        self.timeout = timeout
        self.messages: list[SmtpMessage] = []
        self._wanted_ports = (tls_port, starttls_port)
        self._servers: list[asyncio.Server] = []
        self._protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._tls_port: int | None = None
        self._starttls_port: int | None = None

    def fail_next(self, count: int = 1) -> None:
        """Reject the next ``count`` authentications whatever their token."""
        self.checker.fail_next(count)

    def is_local(self, address: str) -> bool:
        if self.local_domains is None:
            return True
        return address.rpartition("@")[2].lower() in self.local_domains

    @property
    def tls_port(self) -> int:
        """The implicit-TLS (SMTPS) port."""
        if self._tls_port is None:
            raise RuntimeError("TestSmtpServer has no implicit-TLS port running")
        return self._tls_port

    @property
    def starttls_port(self) -> int:
        """The submission port: plain, offering STARTTLS when there is a context."""
        if self._starttls_port is None:
            raise RuntimeError("TestSmtpServer has no plain/STARTTLS port running")
        return self._starttls_port

    @property
    def port(self) -> int:
        return self._tls_port if self._tls_port is not None else self.starttls_port

    def _factory(self, *, implicit: bool) -> SMTP:
        smtp = _OAuthSMTP(
            _Handler(self),
            data_size_limit=MAX_MESSAGE_SIZE,
            hostname=self.hostname,
            ident=self.personality.replies.smtp_ident,
            tls_context=None if implicit else self.ssl_context,
            require_starttls=self.require_starttls and not implicit,
            timeout=self.timeout,
            auth_required=True,
            auth_require_tls=True,
            auth_exclude_mechanism=["PLAIN", "LOGIN"]
            + [m for m in SUPPORTED_MECHANISMS if m not in self.personality.replies.mechanisms],
            loop=asyncio.get_running_loop(),
        )
        if implicit or not self.require_starttls:
            # aiosmtpd only counts STARTTLS as TLS; on the SMTPS port every connection
            # is TLS already. Set after __init__ to skip its "AUTH without TLS" warning.
            smtp._auth_require_tls = False
        self._protocols.add(smtp)
        return smtp

    async def start(self) -> None:
        if self._servers:
            raise RuntimeError("TestSmtpServer is already running")
        loop = asyncio.get_running_loop()
        if self.implicit_tls:
            server = await loop.create_server(
                lambda: self._factory(implicit=True),
                self.host,
                self._wanted_ports[0],
                ssl=self.ssl_context,
            )
            self._servers.append(server)
            self._tls_port = _port_of(server)
        if self.starttls:
            server = await loop.create_server(
                lambda: self._factory(implicit=False), self.host, self._wanted_ports[1]
            )
            self._servers.append(server)
            self._starttls_port = _port_of(server)

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        handlers: list[asyncio.Task[None]] = []
        for proto in list(self._protocols):
            transport: Any = proto.transport
            if transport is not None:
                transport.close()
            task = proto._handler_coroutine
            if task is not None and not task.done():
                task.cancel()
                handlers.append(task)
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)


def _port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
