"""node-oidc-provider 9 (tests/oidc/server.mjs) on a free loopback port, and a browser.

:class:`OidcProvider` writes the server's JSON configuration (issuer, clients, token
lifetimes, the mail resource, who may introspect) into a temporary directory, runs
``node server.mjs CONFIG`` in its own process group, waits until the discovery
document answers and stops it by its pid. :class:`Browser` is the user: it follows an
authorization URL, a device verification URL or an interaction page, logs in and
consents by form POST, as a person in a browser would.

The fixtures (``oidc_server``, ``oidc_mail_servers``) are at the bottom; the
integration conftest imports them. Without node or ``tests/oidc/node_modules`` they
skip locally and fail in CI (``npm ci`` in tests/oidc, see .ci/run).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import html.parser
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mailoauth.testing import oauth_server
from mailoauth.testing._process import (
    DEFAULT_HOST,
    POLL_INTERVAL,
    ManagedServer,
    ServerStartError,
    free_ports,
    stop_process,
    tail,
)
from mailoauth.testing.certs import TestCA
from mailoauth.testing.dovecot import DovecotServer
from mailoauth.testing.postfix import PostfixServer
from mailoauth.tokens import AccessToken, TokenEndpoint, utcnow
from mailoauth.tokens.endpoint import ClientAuth
from mailoauth.tokens.jwt import CLIENT_ASSERTION_TYPE, make_client_assertion

OIDC_DIR = Path(__file__).resolve().parent.parent / "oidc"
SERVER_SCRIPT = OIDC_DIR / "server.mjs"
STARTUP_TIMEOUT = 20.0
"""Seconds for node to start and answer the discovery document."""
BROWSER_MAX_STEPS = 20
"""Requests a :class:`Browser` makes for one sign-in before it gives up (no loops)."""
MAIL_RESOURCE = "https://mail.example.test/"
MAIL_SCOPE = "mail"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SHORT_TTL = 2
DEVICE_POLL_INTERVAL = 1
"""Seconds between device-code polls that the server asks for (RFC 8628 §3.2)."""
"""Seconds an access token of the ``short`` client lives (expiry tests)."""


@dataclass(frozen=True)
class Client:
    """A registered OAuth client (RFC 7591 metadata, as the provider takes it)."""

    client_id: str
    client_secret: str | None
    auth_method: str
    grant_types: tuple[str, ...] = (
        "authorization_code",
        "refresh_token",
        DEVICE_CODE_GRANT,
        "client_credentials",
    )
    access_token_ttl: int | None = None
    refresh_token_ttl: int | None = None
    jwks: dict[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "client_id": self.client_id,
            "token_endpoint_auth_method": self.auth_method,
            "grant_types": list(self.grant_types),
        }
        if self.client_secret is not None:
            meta["client_secret"] = self.client_secret
        if self.jwks is not None:
            meta["jwks"] = self.jwks
        if "authorization_code" in self.grant_types:
            # Native: loopback redirects match whatever the port (RFC 8252 §7.3).
            meta |= {
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/"],
                "response_types": ["code"],
            }
        else:
            meta |= {"redirect_uris": [], "response_types": []}
        return meta


POST = Client("post-client", "post-secret-3f9a1c", "client_secret_post")
BASIC = Client("basic-client", "basic-secret-7e2b4d", "client_secret_basic")
PUBLIC = Client(
    "public-client",
    None,
    "none",
    grant_types=("authorization_code", "refresh_token", DEVICE_CODE_GRANT),
)
SHORT = Client(
    "short-client", "short-secret-5c8e0a", "client_secret_post", access_token_ttl=SHORT_TTL
)
SHORT_RT = Client(
    "short-rt-client", "short-rt-secret-2a7c9f", "client_secret_post", refresh_token_ttl=SHORT_TTL
)
"""Its refresh tokens expire after ``SHORT_TTL`` seconds: refused without reuse."""
DOVECOT = Client("dovecot", "dovecot-secret-1d6f2e", "client_secret_post", grant_types=())
"""The resource server: it only introspects (its credentials go in the POST body)."""
DEFAULT_CLIENTS = (POST, BASIC, PUBLIC, SHORT, SHORT_RT, DOVECOT)
JWT_CLIENT_ID = "jwt-client"


@functools.cache
def jwt_client_key() -> str:
    """The private key (PEM) of the ``private_key_jwt`` client, made once per run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def jwt_client() -> Client:
    """A client authenticating with signed assertions (RFC 7523 ``private_key_jwt``);
    the server knows its public key (``jwks``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = serialization.load_pem_private_key(jwt_client_key().encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    jwk = {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e), "alg": "RS256", "use": "sig"}
    return Client(JWT_CLIENT_ID, None, "private_key_jwt", jwks={"keys": [jwk]})


def jwt_assertion(audience: str, now: dt.datetime) -> str:
    """A fresh client assertion of the ``private_key_jwt`` client for ``audience``."""
    return make_client_assertion(
        client_id=JWT_CLIENT_ID,
        audience=audience,
        private_key=jwt_client_key(),
        certificate=None,
        now=now,
    )


class OidcProvider(ManagedServer):
    """node-oidc-provider on ``127.0.0.1`` and a free port, in a temporary directory.

    Attributes: ``issuer`` (also the base URL), ``port``, ``config_path``,
    ``log_path``, ``pid`` once started, and the endpoint URLs from discovery in
    ``metadata`` (``token_endpoint``, ``device_authorization_endpoint``, ...).
    """

    def __init__(
        self,
        clients: tuple[Client, ...] = DEFAULT_CLIENTS,
        *,
        directory: Path | None = None,
        ttl: dict[str, int] | None = None,
        rotate_refresh_tokens: bool = True,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.host = DEFAULT_HOST
        (self.port,) = free_ports(1)
        self.issuer = f"http://{self.host}:{self.port}"
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="mo-oidc-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "oidc.json"
        self.log_path = self.directory / "oidc.log"
        self.ttl = ttl or {}
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.startup_timeout = startup_timeout
        self.metadata: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what tests use --------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def token_url(self) -> str:
        return str(self.metadata["token_endpoint"])

    @property
    def authorization_url(self) -> str:
        return str(self.metadata["authorization_endpoint"])

    @property
    def device_authorization_url(self) -> str:
        return str(self.metadata["device_authorization_endpoint"])

    @property
    def revocation_url(self) -> str:
        return str(self.metadata["revocation_endpoint"])

    @property
    def introspection_url(self) -> str:
        return str(self.metadata["introspection_endpoint"])

    def introspect(self, token: str) -> dict[str, Any]:
        """What the resource server (Dovecot) learns about ``token``."""
        response = httpx.post(
            self.introspection_url,
            data={
                "token": token,
                "client_id": DOVECOT.client_id,
                "client_secret": DOVECOT.client_secret or "",
            },
            timeout=10,
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def introspect_as(self, client: Client, token: str, hint: str) -> dict[str, Any]:
        """What ``client`` (a secret or public one) learns about its own ``token`` by
        introspection, which neither uses nor rotates a refresh token."""
        data = {"token": token, "token_type_hint": hint, "client_id": client.client_id}
        if client.client_secret is not None:
            data["client_secret"] = client.client_secret
        if client.auth_method == "private_key_jwt":
            data["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            data["client_assertion"] = jwt_assertion(self.issuer, utcnow())
        response = httpx.post(self.introspection_url, data=data, timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def refresh_token_alive(self, client: Client, refresh_token: str) -> bool:
        """Whether ``refresh_token`` of ``client`` is still valid."""
        return self.introspect_as(client, refresh_token, "refresh_token")["active"] is True

    def presented_refresh_tokens(self) -> list[str]:
        """SHA-256 digests (hex) of the refresh tokens presented so far, in order."""
        digests: list[str] = httpx.get(f"{self.issuer}/_test/presented", timeout=10).json()
        return digests

    def register_issued_secrets(self) -> None:
        """Add every token and secret the server issued so far to the suite's log scan."""
        if self._proc is None:
            return
        secrets = httpx.get(f"{self.issuer}/_test/secrets", timeout=10).json()
        oauth_server._register(*secrets)

    # -- lifecycle -------------------------------------------------------------------

    def render_config(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "issuer": self.issuer,
            "resource": MAIL_RESOURCE,
            "resource_scope": MAIL_SCOPE,
            "introspectors": [DOVECOT.client_id],
            "ttl": self.ttl,
            "access_token_ttl_by_client": {
                c.client_id: c.access_token_ttl
                for c in self.clients.values()
                if c.access_token_ttl is not None
            },
            "refresh_token_ttl_by_client": {
                c.client_id: c.refresh_token_ttl
                for c in self.clients.values()
                if c.refresh_token_ttl is not None
            },
            "rotate_refresh_tokens": self.rotate_refresh_tokens,
            "device_poll_interval": DEVICE_POLL_INTERVAL,
            "clients": [c.metadata() for c in self.clients.values()],
        }

    def start(self) -> None:
        """Start node and wait for the discovery document.

        Raises ``FileNotFoundError`` without node or the npm packages, and
        ``ServerStartError`` (with the log tail) when it exits or is not ready in time.
        """
        if self._proc is not None:
            raise RuntimeError("already started")
        node = shutil.which("node")
        if node is None:
            raise FileNotFoundError("node")
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            raise FileNotFoundError(OIDC_DIR / "node_modules" / "oidc-provider")
        self.config_path.write_text(json.dumps(self.render_config(), indent=1))
        oauth_server._register(*(c.client_secret for c in self.clients.values()))
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [node, str(SERVER_SCRIPT), str(self.config_path)],
                cwd=OIDC_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        problem = "not ready in time"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                problem = f"exited with status {self._proc.returncode}"
                break
            try:
                response = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2)
            except httpx.TransportError:
                time.sleep(POLL_INTERVAL)
                continue
            if response.status_code == 200:
                self.metadata = response.json()
                return
            problem = f"discovery answered {response.status_code}"
            time.sleep(POLL_INTERVAL)
        self.stop(cleanup=False)
        raise ServerStartError(
            f"oidc-provider {problem} ({self.config_path})\n--- {self.log_path} ---\n"
            f"{tail(self.log_path)}"
        )

    def stop(self, *, cleanup: bool = True) -> None:
        """Stop node by its pid (SIGTERM, then SIGKILL) and remove our directory."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if cleanup and self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


# -- the user at the browser -----------------------------------------------------------


@dataclass
class _Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(html.parser.HTMLParser):
    """The forms of a page: their actions and named inputs (hidden values included)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(attributes.get("action", "")))
        elif tag == "input" and self.forms and "name" in attributes:
            self.forms[-1].fields[attributes["name"]] = attributes.get("value", "")


def forms_of(page: str) -> list[_Form]:
    parser = _FormParser()
    parser.feed(page)
    return parser.forms


class Browser:
    """Signs ``login`` in at the provider and consents, by form POST; cookies kept.

    ``sign_in(url)`` follows an authorization URL to its redirect (returned, not
    followed, when it leaves the provider: the loopback redirect of ``mailoauth
    login`` is for the caller to visit). ``enter_device_code(uri, code)`` is the user
    of a device code. ``deny=True`` cancels at the first interaction instead.
    """

    def __init__(self, provider: OidcProvider, login: str, *, deny: bool = False) -> None:
        self.provider = provider
        self.login = login
        self.deny = deny
        self.http = httpx.Client(timeout=10, follow_redirects=False)
        self.pages: list[str] = []

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sign_in(self, url: str) -> str:
        """The URL the provider finally redirects to (the client's redirect URI)."""
        response = self.http.get(url)
        for _ in range(BROWSER_MAX_STEPS):
            if response.is_redirect:
                target = urllib.parse.urljoin(str(response.url), response.headers["location"])
                if not target.startswith(self.provider.issuer + "/"):
                    return target
                response = self.http.get(target)
                continue
            response = self._answer(response)
        raise AssertionError(f"no redirect out of the provider after {BROWSER_MAX_STEPS} steps")

    def enter_device_code(self, verification_uri: str, user_code: str) -> str:
        """Enter ``user_code`` at ``verification_uri``, log in, consent, confirm; the
        text of the last page."""
        response = self.http.get(verification_uri)
        for _ in range(BROWSER_MAX_STEPS):
            if response.is_redirect:
                target = urllib.parse.urljoin(str(response.url), response.headers["location"])
                response = self.http.get(target)
                continue
            # Done: signed in, or the server's device page shows an error (after a
            # cancel it shows the code form again, with the error above it).
            if (
                "device-signed-in" in response.text
                or 'class="error"' in response.text
                or response.status_code >= 400
            ):
                return response.text
            page_forms = forms_of(response.text)
            if page_forms and "user_code" in page_forms[0].fields:
                form = page_forms[0]
                fields = dict(form.fields)
                fields.setdefault("user_code", user_code)
                if not fields["user_code"]:
                    fields["user_code"] = user_code
                response = self.http.post(
                    urllib.parse.urljoin(str(response.url), form.action), data=fields
                )
                continue
            response = self._answer(response)
        raise AssertionError(f"the device sign-in did not end after {BROWSER_MAX_STEPS} steps")

    def _answer(self, response: httpx.Response) -> httpx.Response:
        """Answer an interaction page (login or consent) with its form."""
        self.pages.append(response.text)
        if response.status_code != 200:
            raise AssertionError(f"{response.url} answered {response.status_code}: {response.text}")
        page_forms = forms_of(response.text)
        if not page_forms:
            raise AssertionError(f"no form at {response.url}: {response.text[:200]}")
        wanted = "/abort" if self.deny else ""
        form = next(f for f in page_forms if f.action.endswith(wanted) or not wanted)
        data = {"login": self.login} if form.action.endswith("/login") else {}
        return self.http.post(urllib.parse.urljoin(str(response.url), form.action), data=data)


# -- fixtures ----------------------------------------------------------------------------


def require_oidc_provider() -> None:
    """Skip (or, in CI, fail) unless node and tests/oidc/node_modules are here."""
    from tests.integration.conftest import skip_or_fail

    if shutil.which("node") is None:
        skip_or_fail("node is not installed (apt-get install nodejs npm, see .ci/run)")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        skip_or_fail(f"oidc-provider is not installed: run npm ci in {OIDC_DIR}")


@pytest.fixture(scope="session")
def oidc_server() -> Iterator[OidcProvider]:
    """node-oidc-provider with the default clients, for the whole session."""
    require_oidc_provider()
    with OidcProvider((*DEFAULT_CLIENTS, jwt_client())) as server:
        yield server


@pytest.fixture(autouse=True)
def _oidc_secrets_scanned(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the provider, its issued tokens join the log scan."""
    yield
    if "oidc_server" in request.fixturenames:
        server: OidcProvider = request.getfixturevalue("oidc_server")
        server.register_issued_secrets()


@dataclass(frozen=True)
class OidcMailServers:
    """Dovecot and Postfix checking tokens at the provider's introspection endpoint."""

    ca: TestCA
    oidc: OidcProvider
    dovecot: DovecotServer
    postfix: PostfixServer

    @property
    def host(self) -> str:
        return self.dovecot.host


@pytest.fixture(scope="session")
def oidc_mail_servers(
    servers_root: Path, test_ca: TestCA, oidc_server: OidcProvider
) -> Iterator[OidcMailServers]:
    """A Dovecot + Postfix pair of their own, introspecting at ``oidc_server``."""
    from tests.integration.conftest import require_real_servers

    require_real_servers()
    dovecot = DovecotServer(
        oidc_server.introspection_url,
        test_ca.files,
        directory=servers_root / "oidc-dc",
        introspection_client_id=DOVECOT.client_id,
        introspection_client_secret=DOVECOT.client_secret,
        no_starttls_host=None,
    )
    with dovecot:
        postfix = PostfixServer(
            test_ca.files,
            dovecot.auth_socket,
            dovecot.lmtp_socket,
            directory=servers_root / "oidc-pf",
        )
        with postfix:
            yield OidcMailServers(test_ca, oidc_server, dovecot, postfix)


# -- getting a first grant without the CLI -----------------------------------------------


def client_auth_of(client: Client) -> ClientAuth:
    """mailoauth's ``client_auth`` for a registered client."""
    return {
        "client_secret_post": "post",
        "client_secret_basic": "basic",
        "none": "none",
        "private_key_jwt": "private_key_jwt",
    }[client.auth_method]  # type: ignore[return-value]


def endpoint_for(server: OidcProvider, client: Client, **kwargs: Any) -> TokenEndpoint:
    """A TokenEndpoint authenticating as ``client`` the way it is registered."""
    return TokenEndpoint(
        server.token_url,
        client_id=client.client_id,
        client_secret=client.client_secret,
        client_assertion=jwt_assertion if client.auth_method == "private_key_jwt" else None,
        client_auth=client_auth_of(client),
        **kwargs,
    )


async def authorization_code(
    server: OidcProvider,
    client: Client,
    *,
    login: str,
    scope: str,
    params: dict[str, str] | None = None,
) -> AccessToken:
    """Sign ``login`` in with the authorization-code flow and PKCE; the token response."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    redirect_uri = "http://127.0.0.1:9/"  # never visited: the browser stops at it
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **(params or {}),
    }
    url = f"{server.authorization_url}?{urllib.parse.urlencode(query)}"
    with Browser(server, login) as browser:
        target = await anyio.to_thread.run_sync(browser.sign_in, url)
    answer = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))
    assert "code" in answer, answer
    endpoint = endpoint_for(server, client)
    try:
        return await endpoint.request_token(
            {
                "grant_type": "authorization_code",
                "code": answer["code"],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
            grant="authorization_code",
        )
    finally:
        await endpoint.aclose()
