"""pytest plugin: a mail-with-OAuth sandbox for your own pytest-asyncio tests.

Installed with ``pip install 'mailoauth[testing]'`` and registered through the
``pytest11`` entry point. It only adds fixtures (all named ``mailoauth_*``) and the
``mailoauth`` marker; nothing runs unless a test asks for a fixture.

Fixtures:

- ``mailoauth_sandbox``: a started :class:`~mailoauth.testing.sandbox.MailSandbox`.
- ``mailoauth_dialer``: its dialer: give it as ``dialer=`` to clients (or
  ``ConnectionSettings``, ``Mailbox``) so that the hosts users type
  (``smtp.gmail.com:587``, ``outlook.office365.com:993``, ...) reach the sandbox, and
  code with production host names runs unchanged.
- ``mailoauth_http_client``: an httpx client sending token requests for Google's and
  Microsoft's endpoints to the sandbox: give it to providers as ``http_client=``.
- ``mailoauth_routes`` (deprecated: use the two above): the sandbox, with those hosts
  and endpoints routed to it process-wide for clients and providers given no dialer or
  HTTP client of their own.
- ``mailoauth_user``: a :class:`~mailoauth.testing.sandbox.SandboxUser`
  ``alice@example.test`` with a refresh token.
- ``mailoauth_provider``: an :class:`~mailoauth.OAuth2TokenProvider` for that user.
- ``mailoauth_smtp`` / ``mailoauth_imap`` / ``mailoauth_pop3``: connected clients.

pytest-asyncio's ``asyncio_default_fixture_loop_scope`` is set to ``function`` (what
these fixtures need) unless your configuration sets it, so a new project gets no
warning about it; to choose yourself, put it in your ``pytest.ini``
(``asyncio_default_fixture_loop_scope = function``).

Choose the provider the servers imitate with a marker::

    @pytest.mark.mailoauth(personality="office365")
    async def test_something(mailoauth_imap): ...
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import httpx
import pytest
import pytest_asyncio

from mailoauth._core.dialer import Dialer
from mailoauth._core.settings import ConnectionSettings
from mailoauth._util.routing import override_routes
from mailoauth.imap.client import ImapClient
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.imap_server import TestImapServer
from mailoauth.testing.personality import Personality
from mailoauth.testing.pop3_server import TestPop3Server
from mailoauth.testing.sandbox import MailSandbox, SandboxUser
from mailoauth.testing.smtp_server import TestSmtpServer
from mailoauth.tokens.grants import RefreshTokenGrant
from mailoauth.tokens.oauth2 import OAuth2TokenProvider

__all__ = [
    "mailoauth_dialer",
    "mailoauth_http_client",
    "mailoauth_imap",
    "mailoauth_pop3",
    "mailoauth_provider",
    "mailoauth_routes",
    "mailoauth_sandbox",
    "mailoauth_smtp",
    "mailoauth_user",
]

DEFAULT_USER = "alice@example.test"

_Client = TypeVar("_Client", SmtpClient, ImapClient, Pop3Client)


#: The pytest-asyncio setting the plugin's fixtures need (each runs in its test's loop),
#: and the value it takes unless the project's own configuration sets one.
LOOP_SCOPE_OPTION: Final = "asyncio_default_fixture_loop_scope"
LOOP_SCOPE_DEFAULT: Final = "function"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before pytest-asyncio reads it: unset, it warns (PytestDeprecationWarning) in every
    # new project that installs the plugin. A value the project sets is kept. pytest has
    # no public setter for an ini value; its cache of read values (pytest 8 and 9) is
    # where one goes, and without it the warning is all that is lost.
    try:
        unset = not config.getini(LOOP_SCOPE_OPTION)
    except ValueError:  # pytest-asyncio disabled (-p no:asyncio): nothing to set
        unset = False
    inicache = getattr(config, "_inicache", None)
    if unset and isinstance(inicache, dict):
        inicache[LOOP_SCOPE_OPTION] = LOOP_SCOPE_DEFAULT
    config.addinivalue_line(
        "markers",
        "mailoauth(personality='gmail'|'office365'|'rfc', access_token_lifetime=3600, "
        "rotate_refresh_tokens=False): how the mailoauth sandbox behaves",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, object]:
    marker = request.node.get_closest_marker("mailoauth")
    options: dict[str, object] = dict(marker.kwargs) if marker else {}
    personality = options.pop("personality", Personality.RFC)
    if isinstance(personality, str):
        try:
            personality = Personality(personality.lower())
        except ValueError:
            names = ", ".join(p.value for p in Personality)
            raise pytest.UsageError(
                f"@pytest.mark.mailoauth(personality={personality!r}): use one of {names}"
            ) from None
    options["personality"] = personality
    return options


@pytest_asyncio.fixture
async def mailoauth_sandbox(request: pytest.FixtureRequest) -> AsyncIterator[MailSandbox]:
    """A fake OAuth server, a test CA and SMTP/IMAP/POP3 servers on loopback."""
    async with MailSandbox(**_options(request)) as sandbox:  # type: ignore[arg-type]
        yield sandbox


@pytest.fixture
def mailoauth_dialer(mailoauth_sandbox: MailSandbox) -> Dialer:
    """The sandbox's dialer: ``dialer=`` by which the providers' real host names reach
    it (see :attr:`~mailoauth.testing.sandbox.MailSandbox.dialer`)."""
    return mailoauth_sandbox.dialer


@pytest_asyncio.fixture
async def mailoauth_http_client(
    mailoauth_sandbox: MailSandbox,
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client by which Google's and Microsoft's token endpoints reach the
    sandbox: ``http_client=`` for a provider. Closed after the test."""
    async with mailoauth_sandbox.http_client() as client:
        yield client


@pytest.fixture
def mailoauth_routes(mailoauth_sandbox: MailSandbox) -> Iterator[MailSandbox]:
    """Deprecated: use ``mailoauth_dialer`` and ``mailoauth_http_client``. The sandbox,
    reachable under the providers' real host names for this test, through a
    process-wide route table."""
    warnings.warn(
        "the mailoauth_routes fixture routes through a process-wide table; pass "
        "dialer=mailoauth_dialer to clients and http_client=mailoauth_http_client to "
        "providers instead",
        DeprecationWarning,
        stacklevel=2,
    )
    addresses, urls = mailoauth_sandbox.provider_routes()
    with override_routes(addresses, urls):
        yield mailoauth_sandbox


@pytest.fixture
def mailoauth_user(mailoauth_sandbox: MailSandbox) -> SandboxUser:
    """``alice@example.test``, known to the OAuth server, with an empty INBOX."""
    return mailoauth_sandbox.user(DEFAULT_USER)


@pytest_asyncio.fixture
async def mailoauth_provider(
    mailoauth_user: SandboxUser,
) -> AsyncIterator[OAuth2TokenProvider]:
    """A refresh-token provider for :func:`mailoauth_user` against the fake server."""
    provider = OAuth2TokenProvider(
        mailoauth_user.token_url,
        RefreshTokenGrant(mailoauth_user.refresh_token),
        client_id="mailoauth-tests",
    )
    async with provider:
        yield provider


@asynccontextmanager
async def _logged_in(
    cls: type[_Client],
    server: TestSmtpServer | TestImapServer | TestPop3Server,
    box: MailSandbox,
    user: SandboxUser,
    provider: OAuth2TokenProvider,
    *,
    implicit_tls: bool,
) -> AsyncIterator[_Client]:
    port = server.tls_port if implicit_tls else server.starttls_port
    security = SecurityOptions.SSL_IMPLICIT if implicit_tls else SecurityOptions.SSL_EXPLICIT
    settings = ConnectionSettings(server.host, port, security, ssl_context=box.ssl_context)
    async with cls.from_settings(settings, user.username, provider) as client:
        yield client


@pytest_asyncio.fixture
async def mailoauth_smtp(
    mailoauth_sandbox: MailSandbox,
    mailoauth_user: SandboxUser,
    mailoauth_provider: OAuth2TokenProvider,
) -> AsyncIterator[SmtpClient]:
    """An :class:`~mailoauth.SmtpClient` logged in as the user over STARTTLS."""
    box = mailoauth_sandbox
    args = (box, mailoauth_user, mailoauth_provider)
    async with _logged_in(SmtpClient, box.smtp, *args, implicit_tls=False) as client:
        yield client


@pytest_asyncio.fixture
async def mailoauth_imap(
    mailoauth_sandbox: MailSandbox,
    mailoauth_user: SandboxUser,
    mailoauth_provider: OAuth2TokenProvider,
) -> AsyncIterator[ImapClient]:
    """An :class:`~mailoauth.ImapClient` logged in as the user over implicit TLS."""
    box = mailoauth_sandbox
    args = (box, mailoauth_user, mailoauth_provider)
    async with _logged_in(ImapClient, box.imap, *args, implicit_tls=True) as client:
        yield client


@pytest_asyncio.fixture
async def mailoauth_pop3(
    mailoauth_sandbox: MailSandbox,
    mailoauth_user: SandboxUser,
    mailoauth_provider: OAuth2TokenProvider,
) -> AsyncIterator[Pop3Client]:
    """A :class:`~mailoauth.Pop3Client` logged in as the user over implicit TLS."""
    box = mailoauth_sandbox
    args = (box, mailoauth_user, mailoauth_provider)
    async with _logged_in(Pop3Client, box.pop3, *args, implicit_tls=True) as client:
        yield client
