"""A complete mail-with-OAuth sandbox on loopback: a fake OAuth server, a test CA and
SMTP, IMAP and POP3 servers sharing one mail store.

::

    async with MailSandbox(personality=Personality.GMAIL) as sandbox:
        alice = sandbox.user("alice@example.test")
        token = alice.access_token()
        # SMTP: sandbox.smtp.starttls_port (587-style) or sandbox.smtp.tls_port (465)
        # IMAP: sandbox.imap.tls_port (993) / starttls_port (143); POP3 likewise
        # TLS:  ssl_context=sandbox.ssl_context trusts the sandbox's CA
        # OAuth: sandbox.oauth.token_url with alice.refresh_token

Code under test that keeps the providers' real host names reaches the sandbox through
:attr:`MailSandbox.dialer` (``dialer=`` on a client, ``ConnectionSettings`` or
``Mailbox``) and :meth:`MailSandbox.http_client` (``http_client=`` on a provider)::

    async with ImapClient("imap.gmail.com", 993, alice.username, token,
                          dialer=sandbox.dialer) as imap: ...

Nothing is global: two sandboxes in one process each serve the clients given their
dialer.
``async with`` runs the servers on the running loop (drive blocking clients through
``asyncio.to_thread``); ``with`` runs them on a background loop, for synchronous code.
This is what ``mailoauth demo`` and the pytest plugin build on.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from mailoauth._core.dialer import RoutingDialer
from mailoauth._providers import GOOGLE_TOKEN_URL, MAIL_HOSTS, MS_AUTHORITY
from mailoauth._util.routing import Route, override_routes
from mailoauth.testing._serving import LoopService
from mailoauth.testing.certs import TestCA
from mailoauth.testing.imap_server import TestImapServer
from mailoauth.testing.mailstore import MailStore
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.personality import Delegations, Personality, TenantState, TenantStates
from mailoauth.testing.pop3_server import TestPop3Server
from mailoauth.testing.smtp_server import TestSmtpServer
from mailoauth.tokens.transport import RoutingClient, RoutingTransport

__all__ = ["PROVIDER_HOSTS", "MailSandbox", "SandboxUser"]

#: The host names users type, by protocol: :meth:`MailSandbox.routes` serves them all.
PROVIDER_HOSTS: Mapping[str, tuple[str, ...]] = MAIL_HOSTS
#: (STARTTLS port, implicit-TLS port) by protocol.
WELL_KNOWN_PORTS: dict[str, tuple[int, int]] = {
    "smtp": (587, 465),
    "imap": (143, 993),
    "pop3": (110, 995),
}


@dataclass(frozen=True)
class SandboxUser:
    """A mailbox owner known to the sandbox's OAuth server and mail store."""

    username: str
    refresh_token: str = field(repr=False)
    oauth: FakeOAuthServer = field(repr=False)

    def access_token(self, *, lifetime: float | None = None, scope: str | None = None) -> str:
        """Mint a fresh access token for this user (``lifetime`` in seconds)."""
        return self.oauth.issue_access_token(self.username, lifetime=lifetime, scope=scope)

    @property
    def token_url(self) -> str:
        """Where a token provider exchanges :attr:`refresh_token` for access tokens."""
        return self.oauth.token_url


class MailSandbox(LoopService):
    """OAuth server + CA + SMTP/IMAP/POP3 servers over one :class:`MailStore`.

    Arguments:
        personality: which provider every server imitates (settable later too).
        oauth: an OAuth server to use (started and stopped by the caller); by default
            the sandbox starts its own with ``access_token_lifetime`` and
            ``rotate_refresh_tokens``.
        ca: a :class:`TestCA` to use; by default a fresh one, removed on exit.
        require_tls: on the plain ports, refuse authentication before STARTTLS.
        host: the loopback address to listen on.

    Attributes (after start): :attr:`oauth`, :attr:`ca`, :attr:`ssl_context` (a client
    context trusting the CA), :attr:`server_ssl_context`, :attr:`store`, :attr:`smtp`,
    :attr:`imap`, :attr:`pop3` (each with ``host``, ``tls_port``, ``starttls_port``),
    :attr:`delegations` (who may open and send as whose mailbox: see
    :meth:`shared_mailbox`).
    """

    def __init__(
        self,
        personality: Personality = Personality.RFC,
        *,
        oauth: FakeOAuthServer | None = None,
        ca: TestCA | None = None,
        access_token_lifetime: float = 3600.0,
        rotate_refresh_tokens: bool = False,
        require_tls: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self._own_oauth = oauth is None
        self.oauth = oauth or FakeOAuthServer(
            access_token_lifetime=access_token_lifetime,
            rotate_refresh_tokens=rotate_refresh_tokens,
        )
        self._own_ca = ca is None
        self.ca = ca or TestCA()
        self.ssl_context: ssl.SSLContext = self.ca.client_context()
        self.server_ssl_context: ssl.SSLContext = self.ca.server_context()
        self.store = MailStore()
        self.host = host
        tls = self.server_ssl_context
        #: Who may open and send as whose mailbox, shared by the three servers.
        self.delegations = Delegations()
        self.smtp = TestSmtpServer(
            self.store,
            oauth=self.oauth,
            personality=personality,
            delegations=self.delegations,
            ssl_context=tls,
            host=host,
            require_starttls=require_tls,
        )
        self.imap = TestImapServer(
            self.store,
            oauth=self.oauth,
            personality=personality,
            delegations=self.delegations,
            ssl_context=tls,
            host=host,
            require_tls=require_tls,
        )
        self.pop3 = TestPop3Server(
            self.store,
            oauth=self.oauth,
            personality=personality,
            delegations=self.delegations,
            ssl_context=tls,
            host=host,
            require_tls=require_tls,
        )
        self._personality = personality
        #: Each mailbox's Exchange tenant state (see :meth:`tenant_state`), shared by
        #: the three servers.
        self.tenant = TenantStates()
        for server in (self.smtp, self.imap, self.pop3):
            server.tenant = self.tenant
        self._started: list[LoopService] = []

    @property
    def personality(self) -> Personality:
        return self._personality

    @personality.setter
    def personality(self, value: Personality) -> None:
        self._personality = value
        for server in (self.smtp, self.imap, self.pop3):
            server.personality = value

    def user(
        self, username: str, *, password: str | None = None, mailboxes: Iterable[str] = ()
    ) -> SandboxUser:
        """Create ``username`` (INBOX plus ``mailboxes``) with a refresh token; with
        ``password`` the OAuth server also accepts it for the password (ROPC) grant."""
        self.store.add_user(username, mailboxes)
        if password is not None:
            self.oauth.add_user(username, password)
        refresh = self.oauth.issue_refresh_token(username)
        return SandboxUser(username, refresh, self.oauth)

    def shared_mailbox(
        self,
        address: str,
        *,
        full_access: Iterable[str] = (),
        send_as: Iterable[str] = (),
        mailboxes: Iterable[str] = (),
    ) -> None:
        """Create the shared mailbox ``address`` (INBOX plus ``mailboxes``; it has no
        sign-in of its own), opened by the delegates in ``full_access`` with their own
        tokens and sent as by those in ``send_as`` (see :attr:`delegations` to change
        the rights later)."""
        self.store.add_user(address, mailboxes)
        for delegate in full_access:
            self.delegations.grant_full_access(address, delegate)
        for delegate in send_as:
            self.delegations.grant_send_as(address, delegate)

    def tenant_state(self, mailbox: str, state: TenantState | str | None) -> None:
        """Put ``mailbox`` into an Exchange Online tenant ``state``
        (:class:`~mailoauth.testing.personality.TenantState` or its value, e.g.
        ``"imap_disabled"``; None to heal it): the servers then refuse its valid
        tokens as Exchange does in that state (``535 5.7.139 ...``, ``NO
        AUTHENTICATE failed.``, ...)."""
        self.tenant.set(mailbox, state)

    async def start(self) -> None:
        if self._own_oauth:
            self.oauth.start()
        try:
            for server in (self.smtp, self.imap, self.pop3):
                await server.start()
                self._started.append(server)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        started, self._started = self._started, []
        for server in reversed(started):
            await server.stop()
        if self._own_oauth:
            self.oauth.stop()
        if self._own_ca:
            self.ca.cleanup()

    def provider_routes(self) -> tuple[dict[tuple[str, int], Route], dict[str, str]]:
        """The address routes of :attr:`dialer` and URL routes of
        :meth:`http_transport`."""
        ctx = self.ssl_context
        by_kind = {
            "smtp": (self.smtp.starttls_port, self.smtp.tls_port),
            "imap": (self.imap.starttls_port, self.imap.tls_port),
            "pop3": (self.pop3.starttls_port, self.pop3.tls_port),
        }
        addresses: dict[tuple[str, int], Route] = {}
        for kind, names in PROVIDER_HOSTS.items():
            starttls_port, tls_port = by_kind[kind]
            for name in names:
                for port, target in zip(
                    WELL_KNOWN_PORTS[kind], (starttls_port, tls_port), strict=True
                ):
                    addresses[(name, port)] = Route(self.host, target, ctx)
        base = self.oauth.base_url
        urls = {
            GOOGLE_TOKEN_URL: self.oauth.token_url,
            MS_AUTHORITY: base,
        }
        return addresses, urls

    @property
    def dialer(self) -> RoutingDialer:
        """A dialer (``dialer=`` on a client, :class:`~mailoauth.ConnectionSettings` or
        :class:`~mailoauth.poll.Mailbox`) by which the hosts users type reach this
        sandbox: ``smtp.gmail.com:587/465``, ``imap.gmail.com:993/143``,
        ``pop.gmail.com:995/110``, ``smtp.office365.com:587``,
        ``outlook.office365.com:993/995`` (and their STARTTLS ports) connect to its
        servers with its CA trusted; any other address is dialled directly. Valid once
        started."""
        addresses, _urls = self.provider_routes()
        return RoutingDialer(addresses)

    def http_transport(self) -> RoutingTransport:
        """An httpx transport sending token requests for Google's and Microsoft's
        endpoints to :attr:`oauth` (other URLs unchanged). Valid once started."""
        _addresses, urls = self.provider_routes()
        return RoutingTransport(urls)

    def http_client(self) -> RoutingClient:
        """An httpx client sending as :meth:`http_transport` does, for a provider's
        ``http_client=`` (the caller closes it). Valid once started."""
        _addresses, urls = self.provider_routes()
        return RoutingClient(urls)

    @contextmanager
    def routes(self) -> Iterator[MailSandbox]:
        """Deprecated: pass :attr:`dialer` and :meth:`http_client` instead.

        Within the block, the hosts users type reach this sandbox from any client and
        provider given no dialer or HTTP client of its own, through a process-wide
        table (so two sandboxes cannot be routed to at once). Warns with
        :class:`DeprecationWarning`.
        """
        warnings.warn(
            "MailSandbox.routes() (and the mailoauth_routes fixture) route through a "
            "process-wide table; pass dialer=sandbox.dialer to clients, ConnectionSettings "
            "or Mailbox, and http_client=sandbox.http_client() to providers instead",
            DeprecationWarning,
            stacklevel=3,
        )
        addresses, urls = self.provider_routes()
        with override_routes(addresses, urls):
            yield self

    def describe(self) -> str:
        """The endpoints, one per line, for a human (the ``mailoauth demo`` banner)."""
        return "\n".join(
            [
                f"OAuth token endpoint  {self.oauth.token_url}",
                f"CA certificate        {self.ca.files.ca}",
                f"SMTP  {self.host}:{self.smtp.starttls_port} (STARTTLS)  "
                f"{self.host}:{self.smtp.tls_port} (TLS)",
                f"IMAP  {self.host}:{self.imap.starttls_port} (STARTTLS)  "
                f"{self.host}:{self.imap.tls_port} (TLS)",
                f"POP3  {self.host}:{self.pop3.starttls_port} (STLS)      "
                f"{self.host}:{self.pop3.tls_port} (TLS)",
                f"personality           {self.personality.value}",
            ]
        )
