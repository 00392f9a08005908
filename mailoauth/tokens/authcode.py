"""The authorization-code grant with PKCE on a loopback redirect (RFC 6749 §4.1,
RFC 7636, RFC 8252 §7.3): how a desktop or command-line program signs a user in.

1. :func:`make_pkce` makes a code verifier and its S256 challenge, and a random
   ``state`` is drawn;
2. :class:`LoopbackRedirect` listens on ``127.0.0.1`` on a free port (a one-shot HTTP
   server of the standard library, in a thread); its :attr:`~LoopbackRedirect.redirect_uri`
   goes into the authorization URL (:func:`build_authorization_url`);
3. ``on_open_url(url)`` shows the URL to the user or opens a browser (default:
   :func:`open_in_browser`), then ``on_waiting(redirect_uri)`` is told that the sign-in
   is awaited;
4. the browser comes back to the redirect URI with ``code`` and ``state`` (or
   ``error``); the state is checked, and the code is exchanged at the token endpoint
   with the verifier.

Use it as a grant, so that the first token comes from the browser and later ones from
the refresh token it brings (:class:`AuthorizationCodeGrant` in an
:class:`~mailoauth.tokens.oauth2.OAuth2TokenProvider`), or once with
:func:`authorization_code_flow`. Google accepts any port on a loopback redirect for
"Desktop app" clients
(https://developers.google.com/identity/protocols/oauth2/native-app#redirect-uri_loopback);
the Microsoft identity platform ignores the port of a ``http://localhost`` /
``http://127.0.0.1`` redirect of a "Mobile and desktop" registration
(https://learn.microsoft.com/en-us/entra/identity-platform/reply-url).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import secrets
import sys
import threading
import urllib.parse
import webbrowser
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio

from mailoauth.errors import ConfigurationError, MailTimeoutError, PermanentTokenError
from mailoauth.tokens.access_token import AccessToken
from mailoauth.tokens.grants import Grant

if TYPE_CHECKING:
    from mailoauth.tokens.endpoint import TokenEndpoint

__all__ = [
    "AUTHORIZATION_CODE_GRANT_TYPE",
    "DEFAULT_AUTHORIZATION_TIMEOUT",
    "LOOPBACK_HOST",
    "PKCE_VERIFIER_BYTES",
    "AuthorizationCodeGrant",
    "LoopbackRedirect",
    "OpenUrlCallback",
    "Pkce",
    "RedirectResult",
    "WaitingCallback",
    "authorization_code_flow",
    "build_authorization_url",
    "make_pkce",
    "open_in_browser",
]

AUTHORIZATION_CODE_GRANT_TYPE: Final = "authorization_code"
#: Seconds to wait for the browser to come back with the code.
DEFAULT_AUTHORIZATION_TIMEOUT: Final = 300.0
#: Where the redirect receiver listens: the IPv4 loopback literal, which RFC 8252 §8.3
#: prefers to ``localhost`` (a name can be resolved elsewhere or firewalled).
LOOPBACK_HOST: Final = "127.0.0.1"
#: Random bytes in a PKCE code verifier: 64 give 86 base64url characters, within
#: RFC 7636 §4.1's 43 to 128.
PKCE_VERIFIER_BYTES: Final = 64
#: How often the receiver's thread checks for shutdown (seconds).
_POLL_INTERVAL: Final = 0.05
_PAGE: Final = (
    b"<!doctype html><meta charset=utf-8><title>mailoauth</title>"
    b"<p>%s You can close this tab and return to the application.</p>"
)

#: Shows the authorization URL to the user (or opens a browser on it).
OpenUrlCallback = Callable[[str], Awaitable[None] | None]
#: Told the redirect URI once the URL is out and the sign-in is awaited.
WaitingCallback = Callable[[str], Awaitable[None] | None]


# -- PKCE and the authorization URL -------------------------------------------------------


@dataclass(frozen=True)
class Pkce:
    """A PKCE code verifier (secret: never in the repr) and its S256 challenge."""

    verifier: str = field(repr=False)
    challenge: str
    method: str = "S256"


def make_pkce() -> Pkce:
    """A fresh verifier of :data:`PKCE_VERIFIER_BYTES` random bytes and its S256
    challenge, ``BASE64URL(SHA256(verifier))`` without padding (RFC 7636 §4.2)."""
    verifier = secrets.token_urlsafe(PKCE_VERIFIER_BYTES)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return Pkce(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


def build_authorization_url(
    authorization_url: str,
    *,
    client_id: str,
    redirect_uri: str,
    scope: str | None,
    state: str,
    pkce: Pkce,
    extra_params: Mapping[str, str] | None = None,
) -> str:
    """The URL the user opens: ``authorization_url`` with the request's parameters.

    ``extra_params`` (``prompt``, ``login_hint``, ``access_type``, ...) are added last
    and win over the others. Parameters already in ``authorization_url`` are kept.
    Raises :class:`~mailoauth.errors.ConfigurationError` for an empty URL or client id.
    """
    if not authorization_url:
        raise ConfigurationError("the authorization-code flow needs an authorization_url")
    if not client_id:
        raise ConfigurationError("client_id must not be empty")
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri}
    if scope:
        params["scope"] = scope
    params.update(state=state, code_challenge=pkce.challenge, code_challenge_method=pkce.method)
    params.update(extra_params or {})
    sep = "&" if "?" in authorization_url else "?"
    return authorization_url + sep + urllib.parse.urlencode(params)


def open_in_browser(url: str) -> None:
    """The default ``on_open_url``: print the URL to stderr and try to open a browser
    on it (a machine without one still shows the URL). Never raises."""
    print(f"Open this URL in a browser and sign in:\n  {url}", file=sys.stderr, flush=True)
    try:
        webbrowser.open(url)
    except Exception as exc:  # a missing browser must not end the sign-in
        print(f"(could not open a browser: {type(exc).__name__})", file=sys.stderr, flush=True)


# -- the redirect receiver ----------------------------------------------------------------


@dataclass
class RedirectResult:
    """What came back to the redirect URI (the code is a secret: never in the repr)."""

    code: str | None = field(default=None, repr=False)
    state: str | None = None
    error: str | None = None
    error_description: str | None = None


class LoopbackRedirect:
    """A one-shot HTTP server on ``host`` (default :data:`LOOPBACK_HOST`) and a free
    port, receiving the authorization redirect.

    Use as a context manager, entered from a coroutine (its loop is woken when the
    redirect arrives); :attr:`redirect_uri` is ``http://127.0.0.1:PORT/``;
    :meth:`wait` returns the first request carrying ``code`` or ``error``. Other
    requests (a browser's favicon) get 404 and are otherwise ignored. Raises
    :class:`OSError` when it cannot listen.
    """

    def __init__(self, host: str = LOOPBACK_HOST) -> None:
        self.result: RedirectResult | None = None
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query string holds the authorization code

            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                if owner._done.is_set() or not ({"code", "error"} & query.keys()):
                    self.send_error(404)
                    return
                owner.result = RedirectResult(
                    code=query.get("code"),
                    state=query.get("state"),
                    error=query.get("error"),
                    error_description=query.get("error_description"),
                )
                message = b"Signed in." if owner.result.error is None else b"Sign-in failed."
                body = _PAGE % message
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
                owner._done.set()
                owner._wake()

        self._server = HTTPServer((host, 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name="mailoauth-login-redirect",
            daemon=True,
        )

    @property
    def redirect_uri(self) -> str:
        """``http://HOST:PORT/``, the URI to register and to send."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def __enter__(self) -> LoopbackRedirect:
        # Entered from a coroutine: the handler thread wakes it through its loop.
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _wake(self) -> None:
        loop, arrived = self._loop, self._arrived
        if loop is not None and arrived is not None:
            loop.call_soon_threadsafe(arrived.set)

    async def wait(self, timeout: float) -> RedirectResult:
        """The redirect's parameters.

        Raises :class:`~mailoauth.errors.MailTimeoutError` when nothing came back
        within ``timeout`` seconds, and ConfigurationError when not entered.
        """
        if self._arrived is None:
            raise ConfigurationError("enter the LoopbackRedirect (with ...) before wait()")
        try:
            with anyio.fail_after(timeout):
                await self._arrived.wait()
        except TimeoutError:
            raise MailTimeoutError(
                f"no sign-in came back to {self.redirect_uri} within {timeout:g} s: the "
                "user did not finish signing in; start again (with a longer timeout if "
                "they need more time)"
            ) from None
        assert self.result is not None
        return self.result


# -- the flow -----------------------------------------------------------------------------


async def _call(callback: Callable[[str], Awaitable[None] | None], value: str) -> None:
    shown = callback(value)
    if inspect.isawaitable(shown):
        await shown


async def authorization_code_flow(
    endpoint: TokenEndpoint,
    authorization_url: str,
    *,
    scope: str | None,
    extra_params: Mapping[str, str] | None = None,
    on_open_url: OpenUrlCallback | None = None,
    on_waiting: WaitingCallback | None = None,
    timeout: float = DEFAULT_AUTHORIZATION_TIMEOUT,
    redirect_host: str = LOOPBACK_HOST,
) -> AccessToken:
    """Sign a user in through a browser and return the token (with its refresh token,
    if the server gives one).

    ``endpoint`` is the token endpoint, with the client's id and authentication;
    ``on_open_url(url)`` (default :func:`open_in_browser`) and ``on_waiting(uri)``
    may be coroutines. Raises :class:`~mailoauth.errors.MailTimeoutError` when the
    browser does not come back within ``timeout`` seconds, and
    :class:`~mailoauth.errors.PermanentTokenError` when the server reports an error,
    the state does not match (a stale or forged redirect), or the code is refused;
    what :meth:`TokenEndpoint.request_token` raises otherwise.
    """
    pkce = make_pkce()
    state = secrets.token_urlsafe(16)
    with LoopbackRedirect(redirect_host) as redirect:
        url = build_authorization_url(
            authorization_url,
            client_id=endpoint.client_id,
            redirect_uri=redirect.redirect_uri,
            scope=scope,
            state=state,
            pkce=pkce,
            extra_params=extra_params,
        )
        await _call(on_open_url or open_in_browser, url)
        if on_waiting is not None:
            await _call(on_waiting, redirect.redirect_uri)
        result = await redirect.wait(timeout)
    # The state is checked before anything else is believed (RFC 6749 §10.12).
    if result.state != state:
        raise PermanentTokenError(
            "the redirect's state does not match this sign-in (a stale or forged "
            "redirect); start the sign-in again"
        )
    if result.error is not None or not result.code:
        raise PermanentTokenError(
            f"the authorization server refused the sign-in: {result.error or 'no code'}"
            + (f" ({result.error_description})" if result.error_description else ""),
            error=result.error,
            error_description=result.error_description,
        )
    return await endpoint.request_token(
        {
            "grant_type": AUTHORIZATION_CODE_GRANT_TYPE,
            "code": result.code,
            "redirect_uri": redirect.redirect_uri,
            "code_verifier": pkce.verifier,
        },
        grant=AUTHORIZATION_CODE_GRANT_TYPE,
    )


class AuthorizationCodeGrant(Grant):
    """The authorization-code grant with PKCE on a loopback redirect, as a grant.

    In an :class:`~mailoauth.tokens.oauth2.OAuth2TokenProvider`, the first token comes
    from the browser (:func:`authorization_code_flow`) and later ones from the refresh
    token it brings; the browser is asked again only when that refresh token dies.
    ``account`` names the signed-in user in the store key. ``authorization_url`` may be
    left out when the provider is built with ``OAuth2TokenProvider.from_issuer()``,
    which takes it from the server's metadata; without it :meth:`fetch` raises
    :class:`~mailoauth.errors.ConfigurationError`. Other arguments as for
    :func:`authorization_code_flow`; :meth:`fetch` raises what it raises.
    """

    grant_type = AUTHORIZATION_CODE_GRANT_TYPE
    renew_with_refresh_token = True

    def __init__(
        self,
        authorization_url: str | None = None,
        *,
        extra_params: Mapping[str, str] | None = None,
        on_open_url: OpenUrlCallback | None = None,
        on_waiting: WaitingCallback | None = None,
        timeout: float = DEFAULT_AUTHORIZATION_TIMEOUT,
        redirect_host: str = LOOPBACK_HOST,
        account: str | None = None,
    ) -> None:
        if authorization_url == "":
            raise ConfigurationError("authorization_url must not be empty (or None to discover it)")
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, not {timeout!r}")
        self.authorization_url = authorization_url
        self.extra_params = dict(extra_params or {})
        self._on_open_url = on_open_url
        self._on_waiting = on_waiting
        self.timeout = timeout
        self.redirect_host = redirect_host
        self.account = account

    def identity(self) -> str:
        return self.account or "authorization-code"

    async def fetch(self, endpoint: TokenEndpoint, *, scope: str | None) -> AccessToken:
        if self.authorization_url is None:
            raise ConfigurationError(
                "AuthorizationCodeGrant has no authorization_url: pass it, or build the "
                "provider with OAuth2TokenProvider.from_issuer() to discover it"
            )
        return await authorization_code_flow(
            endpoint,
            self.authorization_url,
            scope=scope,
            extra_params=self.extra_params,
            on_open_url=self._on_open_url,
            on_waiting=self._on_waiting,
            timeout=self.timeout,
            redirect_host=self.redirect_host,
        )

    def __repr__(self) -> str:
        return f"AuthorizationCodeGrant({self.authorization_url!r})"
