"""Mail connections and the token endpoint through corporate proxies (issue 11, part 4).

Real proxies on loopback: tinyproxy (HTTP CONNECT, Basic credentials) and microsocks
(SOCKS5, user name and password), started per module on free ports; a recording CONNECT
proxy shows what a proxy gets to see, and a stalling one that the connect deadline
bounds the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from mailoauth import (
    ConnectionSettings,
    ImapClient,
    OAuth2TokenProvider,
    Pop3Client,
    SecurityOptions,
    SmtpClient,
)
from mailoauth._core.dialer import RoutingDialer
from mailoauth._core.proxy import ProxyDialer, ProxyURL
from mailoauth._core.settings import ConnectionOptions
from mailoauth.cli import main
from mailoauth.errors import ConfigurationError, MailConnectionError, MailTimeoutError
from mailoauth.poll import Mailbox, MemoryPollStateStore, NewMessage, Poller
from mailoauth.testing.certs import TestCA
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.proxies import (
    MicroSocks,
    RecordingProxy,
    StallingProxy,
    TinyProxy,
    proxy_binary,
)
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens import RefreshTokenGrant
from tests.integration.cli_device import login_with_device_code
from tests.integration.conftest import MailServers, skip_or_fail

S = SecurityOptions
ProxyProcess = TinyProxy | MicroSocks


def new_user() -> str:
    return f"p{uuid.uuid4().hex[:10]}@example.test"


def _start(kind: type[TinyProxy] | type[MicroSocks]) -> Iterator[ProxyProcess]:
    if proxy_binary(kind.name) is None:
        skip_or_fail(f"not installed: {kind.name} (apt-get install {kind.name}, see .ci/run)")
    proxy = kind()
    with proxy:
        yield proxy


@pytest.fixture(scope="module")
def tinyproxy() -> Iterator[ProxyProcess]:
    yield from _start(TinyProxy)


@pytest.fixture(scope="module")
def microsocks() -> Iterator[ProxyProcess]:
    yield from _start(MicroSocks)


@pytest.fixture(params=["tinyproxy", "microsocks"])
def proxy(request: pytest.FixtureRequest) -> ProxyProcess:
    """Each real proxy in turn."""
    value: ProxyProcess = request.getfixturevalue(request.param)
    return value


@pytest_asyncio.fixture
async def sandbox() -> AsyncIterator[MailSandbox]:
    async with MailSandbox() as box:
        yield box


# -- the URL, its secrecy, the environment -------------------------------------------


def test_proxy_url_parses_and_hides_the_password() -> None:
    url = ProxyURL.parse("socks5://bob:p%40ss-word@proxy.corp:1081")
    assert (url.scheme, url.host, url.port, url.username, url.password) == (
        "socks5",
        "proxy.corp",
        1081,
        "bob",
        "p@ss-word",
    )
    assert "p@ss" not in repr(url) and "p@ss" not in str(url)
    assert str(url) == "socks5://bob:***@proxy.corp:1081"
    assert url.secret_url() == "socks5h://bob:p%40ss-word@proxy.corp:1081"
    assert ProxyURL.parse("http://proxy.corp").port == 8080
    settings = ConnectionSettings("imap.example.com", 993, proxy="http://u:hunter22@p:3128")
    assert isinstance(settings.proxy, ProxyURL)
    assert "hunter22" not in repr(settings)
    assert "hunter22" not in repr(settings.effective_dialer)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://u:secretpw@p:21", "scheme must be http:// .HTTP CONNECT. or socks5://"),
        ("http://u:secretpw@:3128", "names no host"),
        ("socks5://u:secretpw@p:99999", "port is not a number"),
        ("http://u:secretpw@p:3128/path", "give only scheme://"),
    ],
)
def test_bad_proxy_url_names_the_problem_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as info:
        ConnectionSettings("imap.example.com", 993, proxy=url)
    assert "secretpw" not in str(info.value)


def test_environment_is_read_only_with_trust_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://envuser:envpass@10.9.9.9:1080")
    assert ConnectionSettings("imap.example.com", 993).effective_dialer is None
    dialer = ConnectionSettings("imap.example.com", 993, trust_env=True).effective_dialer
    assert isinstance(dialer, ProxyDialer)
    assert str(dialer.proxy) == "socks5://envuser:***@10.9.9.9:1080"
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    assert ConnectionSettings("imap.example.com", 993, trust_env=True).effective_dialer is None
    # An explicit proxy wins over the environment.
    explicit = ConnectionSettings("imap.example.com", 993, proxy="http://p:3128", trust_env=True)
    assert isinstance(explicit.effective_dialer, ProxyDialer)
    assert explicit.effective_dialer.proxy.scheme == "http"


def test_mailbox_takes_a_proxy() -> None:
    box = Mailbox(
        "imap", "imap.example.com", 993, "a@example.com", "tok", proxy="socks5://u:pw9x@p:1080"
    )
    assert box.settings.proxy == ProxyURL.parse("socks5://u:pw9x@p:1080")
    assert "pw9x" not in repr(box)


# -- the three clients through each real proxy ---------------------------------------


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_clients_through_a_proxy_to_dovecot_and_postfix(
    mail_servers: MailServers, proxy: ProxyProcess
) -> None:
    user = new_user()
    host, ctx = mail_servers.host, mail_servers.client_context()
    token = mail_servers.token(user)
    async with ImapClient(
        host, mail_servers.dovecot.imaps_port, user, token, ssl_context=ctx, proxy=proxy.url
    ) as imap:
        assert (await imap.select("INBOX")).exists == 0
    async with ImapClient(  # STARTTLS through the tunnel
        host, mail_servers.dovecot.imap_port, user, token, ssl_context=ctx, proxy=proxy.url
    ) as imap:
        await imap.noop()
    async with Pop3Client(
        host, mail_servers.dovecot.pop3s_port, user, token, ssl_context=ctx, proxy=proxy.url
    ) as pop:
        assert (await pop.stat()).count == 0
    async with SmtpClient(
        host, mail_servers.postfix.submission_port, user, token, ssl_context=ctx, proxy=proxy.url
    ) as smtp:
        await smtp.noop()
    tunnels = proxy.tunnels()
    for port in (
        mail_servers.dovecot.imaps_port,
        mail_servers.dovecot.imap_port,
        mail_servers.dovecot.pop3s_port,
        mail_servers.postfix.submission_port,
    ):
        assert f"{host}:{port}" in tunnels


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_clients_through_a_proxy_to_the_sandbox(
    sandbox: MailSandbox, proxy: ProxyProcess
) -> None:
    """The providers' host names are routed to the sandbox first, and the proxy is
    asked for the routed address: RoutingDialer(..., fallback=ProxyDialer(...))."""
    dialer = RoutingDialer(sandbox.dialer.routes, fallback=ProxyDialer(proxy.url))
    alice = sandbox.user(new_user())
    token = alice.access_token()
    async with ImapClient("imap.gmail.com", 993, alice.username, token, dialer=dialer) as imap:
        await imap.select("INBOX")
    async with Pop3Client("pop.gmail.com", 995, alice.username, token, dialer=dialer) as pop:
        await pop.stat()
    async with SmtpClient("smtp.gmail.com", 587, alice.username, token, dialer=dialer) as smtp:
        await smtp.noop()
    tunnels = proxy.tunnels()
    for port in (sandbox.imap.tls_port, sandbox.pop3.tls_port, sandbox.smtp.starttls_port):
        assert f"{sandbox.host}:{port}" in tunnels


# -- proxies that refuse, want credentials, or stall ---------------------------------


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_wrong_proxy_credentials_name_the_proxy_not_the_password(
    sandbox: MailSandbox, proxy: ProxyProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = sandbox.user(new_user())
    bad = proxy.url_with(proxy.username, "Wr0ng-Secret")
    with pytest.raises(MailConnectionError) as info:
        async with ImapClient(
            sandbox.host,
            sandbox.imap.tls_port,
            alice.username,
            alice.access_token(),
            ssl_context=sandbox.ssl_context,
            proxy=bad,
        ):
            pass
    message = str(info.value)
    assert f"{proxy.host}:{proxy.port}" in message
    assert "refused the tunnel" in message and "check the user name" in message
    assert "Wr0ng-Secret" not in message and "Wr0ng-Secret" not in caplog.text


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_proxy_that_needs_credentials_and_gets_none(
    sandbox: MailSandbox, proxy: ProxyProcess
) -> None:
    alice = sandbox.user(new_user())
    with pytest.raises(MailConnectionError, match="wants credentials and none were given"):
        async with SmtpClient(
            sandbox.host,
            sandbox.smtp.tls_port,
            alice.username,
            alice.access_token(),
            ssl_context=sandbox.ssl_context,
            proxy=proxy.url_with(None, None),
        ):
            pass


@pytest.mark.asyncio
async def test_a_stalling_proxy_is_bounded_by_the_connect_deadline(
    sandbox: MailSandbox,
) -> None:
    alice = sandbox.user(new_user())
    for scheme in ("http", "socks5"):
        with StallingProxy() as stalling, pytest.raises(MailTimeoutError, match="connect"):
            async with ImapClient(
                sandbox.host,
                sandbox.imap.tls_port,
                alice.username,
                alice.access_token(),
                ssl_context=sandbox.ssl_context,
                connect_timeout=0.5,
                proxy=f"{scheme}://{stalling.host}:{stalling.port}",
            ):
                pass


@pytest.mark.asyncio
async def test_a_greeting_in_the_same_packet_as_the_connect_reply_is_kept() -> None:
    """Mail servers speak first: bytes after the proxy's blank line belong to the
    server and must reach the client (a whole-buffer read of the reply drops them)."""

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n220 mail.example ready\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dialled = await ProxyDialer(f"http://127.0.0.1:{port}").connect(
            "mail.example", 25, timeout=5
        )
        loop = asyncio.get_running_loop()
        greeting = b""
        while not greeting.endswith(b"\r\n"):
            chunk = await loop.sock_recv(dialled.sock, 100)
            assert chunk
            greeting += chunk
        dialled.sock.close()
    finally:
        server.close()
    assert greeting == b"220 mail.example ready\r\n"


# -- what the proxy sees ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_token_never_crosses_the_proxy_in_clear(sandbox: MailSandbox) -> None:
    alice = sandbox.user(new_user())
    token = alice.access_token()
    with RecordingProxy() as recorder:
        common = ConnectionOptions(ssl_context=sandbox.ssl_context, proxy=recorder.url)
        async with ImapClient(
            sandbox.host, sandbox.imap.tls_port, alice.username, token, **common
        ) as imap:
            await imap.select("INBOX")
        async with SmtpClient(  # STARTTLS: EHLO and STARTTLS in clear, then TLS
            sandbox.host, sandbox.smtp.starttls_port, alice.username, token, **common
        ) as smtp:
            await smtp.noop()
        async with Pop3Client(
            sandbox.host, sandbox.pop3.tls_port, alice.username, token, **common
        ) as pop:
            await pop.stat()
        assert recorder.tunnels() == [
            f"{sandbox.host}:{sandbox.imap.tls_port}",
            f"{sandbox.host}:{sandbox.smtp.starttls_port}",
            f"{sandbox.host}:{sandbox.pop3.tls_port}",
        ]
        sent = [bytes(b) for b in recorder.sent]
    imap_bytes, smtp_bytes, pop_bytes = sent
    assert imap_bytes[:2] == b"\x16\x03" and pop_bytes[:2] == b"\x16\x03"  # TLS handshake
    clear, _, after = smtp_bytes.partition(b"STARTTLS\r\n")
    assert clear.startswith(b"EHLO ") and after[:2] == b"\x16\x03"
    for data in sent:
        assert token.encode() not in data and alice.username.encode() not in data


# -- the token endpoint through each proxy ---------------------------------------------


class TlsFront:
    """TLS in front of the fake OAuth server (plain HTTP), so that the token endpoint
    is https:// as in production."""

    def __init__(self, ca: TestCA, backend_port: int) -> None:
        self.ca, self.backend_port = ca, backend_port
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.backend_port)

            async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
                w.close()

            await asyncio.gather(pump(reader, up_w), pump(up_r, writer), return_exceptions=True)

        self.server = await asyncio.start_server(
            relay, "127.0.0.1", 0, ssl=self.ca.server_context()
        )
        port = self.server.sockets[0].getsockname()[1]
        return f"https://localhost:{port}/token"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_token_endpoint_through_each_proxy(
    proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx's and httpcore's too
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    ca = TestCA()
    try:
        # trust_env=True only for SSL_CERT_FILE, to trust the test CA: the proxy is explicit.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.files.ca))
        with FakeOAuthServer() as oauth:
            user = new_user()
            oauth.add_client("cid")
            refresh = oauth.issue_refresh_token(user, client_id="cid")
            async with TlsFront(ca, oauth.port) as token_url:
                provider = OAuth2TokenProvider(
                    token_url,
                    RefreshTokenGrant(refresh),
                    client_id="cid",
                    proxy=proxy.url,
                    trust_env=True,
                )
                try:
                    token = await provider.get_access_token()
                finally:
                    await provider.aclose()
        assert token.value
        assert f"localhost:{token_url.split(':')[2].split('/')[0]}" in proxy.tunnels()
        assert caplog.records and proxy.password not in caplog.text
    finally:
        ca.cleanup()


@pytest.mark.asyncio
async def test_token_endpoint_env_proxy_only_with_trust_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = TestCA()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.files.ca))
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        with FakeOAuthServer() as oauth, RecordingProxy() as recorder:
            monkeypatch.setenv("HTTPS_PROXY", recorder.url)
            user = new_user()
            oauth.add_client("cid")
            async with TlsFront(ca, oauth.port) as token_url:
                for trust_env in (False, True):
                    provider = OAuth2TokenProvider(
                        token_url,
                        RefreshTokenGrant(oauth.issue_refresh_token(user, client_id="cid")),
                        client_id="cid",
                        client_secret=None,
                        trust_env=trust_env,
                        max_attempts=1,
                    )
                    try:
                        if trust_env:
                            token = await provider.get_access_token()
                        else:
                            # Without trust_env the test CA (SSL_CERT_FILE) is not
                            # trusted either: the proxy was not used, and TLS fails.
                            with pytest.raises(Exception, match=r"(?i)certificate"):
                                await provider.get_access_token()
                            assert recorder.tunnels() == []
                    finally:
                        await provider.aclose()
            assert len(recorder.tunnels()) == 1
            sent = bytes(recorder.sent[0])
        assert sent[:2] == b"\x16\x03" and token.value.encode() not in sent
    finally:
        ca.cleanup()


def test_proxy_and_http_client_are_exclusive() -> None:
    import httpx

    with pytest.raises(ConfigurationError, match="proxy= or http_client="):
        OAuth2TokenProvider(
            "https://login.example.com/token",
            RefreshTokenGrant("r"),
            client_id="c",
            http_client=httpx.AsyncClient(),
            proxy="http://p:3128",
        )


# -- the command line: --proxy on check, login and token refresh -----------------------


@pytest.fixture(scope="module")
def served_sandbox() -> Iterator[MailSandbox]:
    with MailSandbox() as box:
        yield box


@pytest.mark.realserver
@pytest.mark.parametrize(("protocol", "security"), [("imap", "ssl"), ("smtp", "starttls")])
def test_cli_check_through_each_proxy(
    served_sandbox: MailSandbox,
    proxy: ProxyProcess,
    capsys: pytest.CaptureFixture[str],
    protocol: str,
    security: str,
) -> None:
    box = served_sandbox
    user = box.user(new_user())
    server = box.imap if protocol == "imap" else box.smtp
    port = server.tls_port if security == "ssl" else server.starttls_port
    argv = [
        "check", protocol, "127.0.0.1", "--port", str(port), "--security", security,
        "--cafile", str(box.ca.files.ca), "--timeout", "5", "--user", user.username,
        "--token", user.access_token(), "--proxy", proxy.url,
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "all steps passed" in out and proxy.password not in out
    # The probe and the client each went through the proxy.
    assert proxy.tunnels().count(f"127.0.0.1:{port}") >= 2


@pytest.mark.realserver
def test_cli_check_with_wrong_proxy_credentials_names_the_proxy(
    served_sandbox: MailSandbox, tinyproxy: ProxyProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    user = served_sandbox.user(new_user())
    argv = [
        "check", "imap", "127.0.0.1", "--port", str(served_sandbox.imap.tls_port),
        "--security", "ssl", "--cafile", str(served_sandbox.ca.files.ca), "--timeout", "5",
        "--user", user.username, "--token", user.access_token(),
        "--proxy", tinyproxy.url_with(tinyproxy.username, "Not-The-Pass"),
    ]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert f"127.0.0.1:{tinyproxy.port}" in text and "refused the tunnel" in text
    assert "Not-The-Pass" not in text


@pytest.mark.realserver
def test_cli_login_and_token_refresh_through_a_socks5_proxy(
    microsocks: ProxyProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "tokens.json"
    with FakeOAuthServer() as oauth:
        argv = [
            "login", "microsoft", "--device", "--client-id", "public-client",
            "--authority", oauth.base_url, "--tenant", "contoso", "--store", str(store),
            "--timeout", "10", "--proxy", microsocks.url,
        ]  # fmt: skip
        login_with_device_code(oauth, argv, "me@contoso.test")
        through = microsocks.tunnels().count(f"127.0.0.1:{oauth.port}")
        assert through >= 1
        assert main(["token", "refresh", "--store", str(store), "--proxy", microsocks.url]) == 0
        assert microsocks.tunnels().count(f"127.0.0.1:{oauth.port}") > through
    assert microsocks.password not in capsys.readouterr().out


def guide_example() -> str:
    guide = (Path(__file__).resolve().parents[2] / "docs/guides/proxies.md").read_text()
    return guide.split("## Trying it", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_the_guide_s_sandbox_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/guides/proxies.md, "Trying it", run verbatim."""
    if proxy_binary("microsocks") is None:
        skip_or_fail("not installed: microsocks (apt-get install microsocks, see .ci/run)")
    block = guide_example()
    namespace: dict[str, object] = {}
    body = "".join(f"    {line}\n" for line in block.splitlines())
    exec(f"async def example():\n{body}", namespace)
    await namespace["example"]()  # type: ignore[operator]
    assert capsys.readouterr().out.startswith("['127.0.0.1:")


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_discovery_and_token_through_a_socks5_proxy(microsocks: ProxyProcess) -> None:
    """from_issuer fetches the metadata through the provider's proxy too."""
    with FakeOAuthServer() as oauth:
        oauth.add_client("cid")
        before = [t for t in microsocks.tunnels() if t.endswith(f":{oauth.port}")]
        provider = await OAuth2TokenProvider.from_issuer(
            oauth.issuer,
            RefreshTokenGrant(oauth.issue_refresh_token(new_user(), client_id="cid")),
            client_id="cid",
            proxy=microsocks.url,
        )
        async with provider:
            assert (await provider.get_access_token()).value
        after = [t for t in microsocks.tunnels() if t.endswith(f":{oauth.port}")]
    assert len(after) - len(before) >= 2  # the metadata, then the token


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_the_poller_watches_a_mailbox_through_each_proxy(
    mail_servers: MailServers, proxy: ProxyProcess
) -> None:
    user = new_user()
    box = Mailbox(
        "imap",
        mail_servers.host,
        mail_servers.dovecot.imaps_port,
        user,
        mail_servers.token(user),
        S.SSL_IMPLICIT,
        ssl_context=mail_servers.client_context(),
        proxy=proxy.url,
    )
    store = MemoryPollStateStore()
    # start="all": the message is there before the first poll, so no baseline to wait for.
    mail_servers.dovecot.deliver(
        user, "From: a@example.test\r\nSubject: via the proxy\r\n\r\nbody\r\n"
    )
    async with Poller([box], state_store=store, interval=0.3, start="all") as poller:
        async with asyncio.timeout(30):
            event = await anext(aiter(poller))
    assert isinstance(event, NewMessage), event
    assert event.message()["Subject"] == "via the proxy"
    assert f"{mail_servers.host}:{mail_servers.dovecot.imaps_port}" in proxy.tunnels()


def test_proxy_url_forms() -> None:
    assert ProxyURL.parse("socks5h://u:p@[::1]:1080").netloc == "[::1]:1080"
    assert ProxyURL.parse("SOCKS5://h").scheme == "socks5"
    assert str(ProxyURL.parse("http://only-user@h:3128")) == "http://only-user@h:3128"
    assert ProxyURL.parse("http://h:3128").secret_url() == "http://h:3128"


@pytest.mark.asyncio
async def test_an_unreachable_proxy_is_named(sandbox: MailSandbox) -> None:
    alice = sandbox.user(new_user())
    with StallingProxy() as gone:
        port = gone.port  # closed on leaving the block: nothing listens there now
    with pytest.raises(MailConnectionError) as info:
        async with ImapClient(
            sandbox.host,
            sandbox.imap.tls_port,
            alice.username,
            alice.access_token(),
            ssl_context=sandbox.ssl_context,
            proxy=f"socks5://u:Hidden-Pw@127.0.0.1:{port}",
        ):
            pass
    message = str(info.value)
    assert f"could not reach the SOCKS5 proxy socks5://u:***@127.0.0.1:{port}" in message
    assert "Hidden-Pw" not in message


def test_socks5_without_python_socks_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "python_socks", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'mailoauth\[proxy\]'"):
        ConnectionSettings("imap.example.com", 993, proxy="socks5://p:1080")
    # HTTP CONNECT needs no extra (h11 comes with httpx).
    ConnectionSettings("imap.example.com", 993, proxy="http://p:3128")
