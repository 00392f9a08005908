"""A dialer decides how every connection is opened: the clients, their reconnects and
AUTO's second dial all go through it, the sandbox is reached through one, and two
sandboxes can be used at once from one process (nothing global)."""

from __future__ import annotations

import asyncio
import email.message
import socket
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from mailoauth import (
    AccessToken,
    ConnectionSettings,
    Dialer,
    DialResult,
    GoogleTokenProvider,
    ImapClient,
    InsecureTransportError,
    Mailbox,
    MailConnectionError,
    MemoryPollStateStore,
    NewMessage,
    OAuth2TokenProvider,
    Poller,
    Pop3Client,
    SecurityOptions,
    SmtpClient,
)
from mailoauth._core.dialer import DirectDialer, RoutingDialer
from mailoauth._util import routing
from mailoauth._util.routing import Route
from mailoauth.testing.clock import FakeClock
from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens import RefreshTokenGrant
from mailoauth.tokens.transport import RoutingClient, RoutingTransport

S = SecurityOptions


class CountingDialer:
    """Passes every connect on to ``inner``, noting the address asked for."""

    def __init__(self, inner: Dialer) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
        self.calls.append((host, port))
        return await self.inner.connect(host, port, timeout=timeout)


@pytest_asyncio.fixture
async def gmail() -> AsyncIterator[MailSandbox]:
    async with MailSandbox(personality=Personality.GMAIL) as box:
        yield box


def _message(sender: str, to: str, subject: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content("hello")
    return msg


@pytest.mark.asyncio
async def test_one_dialer_sees_every_connect_of_the_three_clients(gmail: MailSandbox) -> None:
    user = gmail.user("me@gmail.com")
    dialer = CountingDialer(gmail.dialer)
    token = user.access_token()
    async with SmtpClient("smtp.gmail.com", 587, user.username, token, dialer=dialer) as smtp:
        await smtp.send_message(_message(user.username, user.username, "via the dialer"))
    imap_settings = ConnectionSettings("imap.gmail.com", 993, dialer=dialer)
    async with ImapClient.from_settings(imap_settings, user.username, token) as imap:
        await imap.select()
        assert len(await imap.uid_search("ALL")) == 1
    async with Pop3Client("pop.gmail.com", 995, user.username, token, dialer=dialer) as pop:
        assert (await pop.stat()).count == 1
    assert dialer.calls == [
        ("smtp.gmail.com", 587),
        ("imap.gmail.com", 993),
        ("pop.gmail.com", 995),
    ]
    assert routing.current_addresses() == {}  # nothing global was set


@pytest.mark.asyncio
async def test_a_reconnect_dials_again_through_the_same_dialer() -> None:
    async with MailSandbox(personality=Personality.OFFICE365) as box:
        user = box.user("dave@contoso.com")
        clock = FakeClock()
        box.oauth.clock = clock.time

        class Fresh:
            async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
                return AccessToken(box.oauth.issue_access_token(user.username, lifetime=3600))

        dialer = CountingDialer(box.dialer)
        async with ImapClient(
            "outlook.office365.com",
            993,
            user.username,
            Fresh(),
            dialer=dialer,
        ) as imap:
            await imap.select()
            clock.advance(3601)  # the server ends the session: AccessTokenExpired
            await imap.uid_search("ALL")
            assert imap.reconnects == 1
        assert dialer.calls == [("outlook.office365.com", 993)] * 2


@pytest.mark.asyncio
async def test_auto_dials_again_for_starttls_through_the_dialer(gmail: MailSandbox) -> None:
    # AUTO on 993 starts TLS at once; this server greets in plaintext instead (a
    # STARTTLS port behind that name), so the client dials again for STARTTLS.
    user = gmail.user("auto@example.test")
    route = Route(gmail.host, gmail.imap.starttls_port, gmail.ssl_context)
    dialer = CountingDialer(RoutingDialer({("mail.example.test", 993): route}))
    async with ImapClient(
        "mail.example.test", 993, user.username, user.access_token(), S.AUTO, dialer=dialer
    ) as imap:
        await imap.select()
        assert imap.plan.starttls and not imap.plan.implicit_tls
    assert dialer.calls == [("mail.example.test", 993)] * 2


@pytest.mark.asyncio
async def test_two_sandboxes_at_once_each_client_reaches_its_own() -> None:
    async with (
        MailSandbox(personality=Personality.GMAIL) as first,
        MailSandbox(personality=Personality.GMAIL) as second,
    ):
        name = "same@gmail.com"
        users = {box: box.user(name) for box in (first, second)}
        for index, box in enumerate((first, second)):
            async with SmtpClient(
                "smtp.gmail.com", 587, name, users[box].access_token(), dialer=box.dialer
            ) as smtp:
                for n in range(index + 1):
                    await smtp.send_message(_message(name, name, f"message {n}"))

        async def count(box: MailSandbox) -> int:
            settings = ConnectionSettings("imap.gmail.com", 993, dialer=box.dialer)
            async with ImapClient.from_settings(settings, name, users[box].access_token()) as c:
                return (await c.select()).exists

        # Concurrently, in one process: each client reaches the sandbox it was given.
        assert list(await asyncio.gather(count(first), count(second))) == [1, 2]


@pytest.mark.asyncio
async def test_the_token_side_through_the_sandbox_transport(gmail: MailSandbox) -> None:
    user = gmail.user("tokens@gmail.com")
    async with (
        gmail.http_client() as http,
        GoogleTokenProvider("id", "secret", user.refresh_token, http_client=http) as provider,
    ):
        token = await provider.get_access_token()
        async with ImapClient(
            "imap.gmail.com", 993, user.username, provider, dialer=gmail.dialer
        ) as imap:
            await imap.select()
    # The real endpoint's URL (the provider's default), answered by the sandbox.
    assert token.value and gmail.oauth.stats.token_requests == 1


@pytest.mark.asyncio
async def test_routing_transport_keeps_unrouted_urls_and_sets_the_host(gmail: MailSandbox) -> None:
    transport = RoutingTransport({"https://idp.example.test/": gmail.oauth.base_url + "/"})
    assert transport.route_url("https://idp.example.test/token") == gmail.oauth.token_url
    assert transport.route_url("https://other.example.test/x") == "https://other.example.test/x"
    async with httpx.AsyncClient(transport=transport) as http:
        reply = await http.get("https://idp.example.test/.well-known/openid-configuration")
    assert reply.status_code == 200


@pytest.mark.asyncio
async def test_the_poller_watches_through_the_mailbox_dialer(gmail: MailSandbox) -> None:
    user = gmail.user("poll@gmail.com")
    dialer = CountingDialer(gmail.dialer)
    settings = ConnectionSettings("imap.gmail.com", 993, dialer=dialer)
    box = Mailbox.from_settings("imap", settings, user.username, user.access_token())
    store = MemoryPollStateStore()
    async with Poller([box], state_store=store, interval=0.2) as poller:
        for _ in range(100):  # bounded: the baseline is saved once the watcher is in
            if await store.load(box.key) is not None:
                break
            await asyncio.sleep(0.05)
        gmail.store.deliver(user.username, b"Subject: polled\r\n\r\nhi\r\n")
        event = await asyncio.wait_for(anext(aiter(poller)), 30)
    assert isinstance(event, NewMessage) and event.message()["Subject"] == "polled"
    assert dialer.calls and set(dialer.calls) == {("imap.gmail.com", 993)}


@pytest.mark.asyncio
async def test_direct_dialer_names_the_addresses_it_tried() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match=f"127.0.0.1 port {port}"):
        await DirectDialer().connect("127.0.0.1", port, timeout=5)
    with pytest.raises(MailConnectionError, match=f"127.0.0.1:{port}"):
        await ImapClient("127.0.0.1", port, "u", "t", S.SSL_IMPLICIT).connect()


@pytest.mark.asyncio
async def test_deprecated_routes_still_reach_the_sandbox(gmail: MailSandbox) -> None:
    user = gmail.user("legacy@gmail.com")
    with pytest.warns(DeprecationWarning, match=r"dialer=sandbox\.dialer"), gmail.routes():
        async with ImapClient("imap.gmail.com", 993, user.username, user.access_token()) as imap:
            await imap.select()
    assert routing.current_addresses() == {}


PLUGIN_CONFIG = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def test_plugin_dialer_fixtures_and_the_deprecated_routes(pytester: pytest.Pytester) -> None:
    pytester.makeini(PLUGIN_CONFIG)
    pytester.makepyfile(
        test_fixtures="""
import pytest
from mailoauth import ConnectionSettings, GoogleTokenProvider, Pop3Client
from mailoauth._util import routing

@pytest.mark.asyncio
@pytest.mark.mailoauth(personality="gmail")
@pytest.mark.asyncio
async def test_dialer(mailoauth_dialer, mailoauth_http_client, mailoauth_user):
    provider = GoogleTokenProvider("id", "s", mailoauth_user.refresh_token,
                                   http_client=mailoauth_http_client)
    settings = ConnectionSettings("pop.gmail.com", 995, dialer=mailoauth_dialer)
    async with provider, Pop3Client.from_settings(settings, mailoauth_user.username,
                                                  provider) as pop:
        assert (await pop.stat()).count == 0
    assert routing.current_addresses() == {}

@pytest.mark.asyncio
@pytest.mark.asyncio
async def test_routes(mailoauth_routes, mailoauth_user):
    token = mailoauth_user.access_token()
    async with Pop3Client("pop.gmail.com", 995, mailoauth_user.username, token) as pop:
        assert (await pop.stat()).count == 0
"""
    )
    result = pytester.runpytest_subprocess("-q", "-W", "error::DeprecationWarning")
    # Warnings as errors: the dialer fixtures warn of nothing; mailoauth_routes warns,
    # naming its replacement.
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*DeprecationWarning*mailoauth_dialer*"])
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=2)


@pytest.mark.asyncio
async def test_the_http_check_is_decided_on_the_address_the_client_reaches(
    gmail: MailSandbox,
) -> None:
    oauth = gmail.oauth
    user = gmail.user("http@example.test")
    # A routing client from a fake host to loopback is not plain text on a network...
    async with (
        RoutingClient({"http://idp.example.test/": oauth.base_url + "/"}) as http,
        OAuth2TokenProvider(
            "http://idp.example.test/token",
            RefreshTokenGrant(user.refresh_token),
            client_id="cid",
            http_client=http,
        ) as provider,
    ):
        assert oauth.is_active((await provider.get_access_token()).value)
    # ... without it, the same URL is refused (secrets in clear to a network host) ...
    with pytest.raises(InsecureTransportError):
        OAuth2TokenProvider(
            "http://idp.example.test/token", RefreshTokenGrant("rt"), client_id="cid"
        )
    # ... and a route from a loopback name to a host off loopback is refused too.
    async with RoutingClient({"http://127.0.0.1:9/": "http://192.0.2.1:9/"}) as off:
        with pytest.raises(InsecureTransportError):
            OAuth2TokenProvider(
                "http://127.0.0.1:9/token",
                RefreshTokenGrant("rt"),
                client_id="cid",
                http_client=off,
            )


@pytest.mark.asyncio
async def test_direct_dialer_resolves_only_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # An address literal is connected without the thread-pool lookup (a name is not).
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lookups: list[str] = []
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def counted(host: str, *args: object, **kwargs: object) -> object:
        lookups.append(host)
        return await real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", counted)
    try:
        for host in ("127.0.0.1", "localhost"):
            result = await DirectDialer().connect(host, port, timeout=5)
            result.sock.close()
    finally:
        server.close()
        await server.wait_closed()
    assert lookups == ["localhost"]


class RecordingDialer:
    """Hands out one end of a socket pair per connect, noting the address asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
        self.calls.append((host, port))
        mine, theirs = socket.socketpair()
        theirs.close()
        return DialResult(mine)


@pytest.mark.asyncio
async def test_routing_dialer_routes_by_name_and_port_and_passes_the_rest_on() -> None:
    ctx = ssl.create_default_context()
    fallback = RecordingDialer()
    dialer = RoutingDialer(
        {("IMAP.Example.TEST", 993): Route("127.0.0.1", 4993, ctx)}, fallback=fallback
    )
    routed = await dialer.connect("imap.example.test", 993, timeout=1)
    other_port = await dialer.connect("imap.example.test", 143, timeout=1)
    for result in (routed, other_port):
        result.sock.close()
    assert fallback.calls == [("127.0.0.1", 4993), ("imap.example.test", 143)]
    # A routed connection checks the route's certificate name with the route's CA.
    assert routed.ssl_context is ctx and routed.server_hostname == "127.0.0.1"
    assert other_port.ssl_context is None and other_port.server_hostname is None
