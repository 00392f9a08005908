"""A fake OAuth 2.0 authorization server on loopback, for tests.

Built on the standard library's :mod:`http.server` in a thread of its own, so that it
answers while the test's event loop is busy, and so that real mail servers (Dovecot's
oauth2 passdb) can introspect tokens against it. This module is the HTTP glue (request
parsing, routing, responses, scripted failures); what the server decides -- grants,
tokens, rotation, revocation, introspection -- is
:class:`~mailoauth.testing._oauth_logic.OAuthAuthority`, which FakeOAuthServer extends
and which is tested without HTTP.

Endpoints (all under :attr:`FakeOAuthServer.base_url`):

- ``POST /token``: grants ``refresh_token``, ``password``, ``client_credentials`` (secret
  or ``client_assertion``), ``urn:ietf:params:oauth:grant-type:jwt-bearer``,
  ``urn:ietf:params:oauth:grant-type:device_code`` and ``authorization_code`` (PKCE).
  Also served at ``/{tenant}/oauth2/v2.0/token``, Microsoft's path, so a provider given
  ``authority=server.base_url`` reaches it.
- ``POST /devicecode``: device authorization (RFC 8628); also at
  ``/{tenant}/oauth2/v2.0/devicecode``.
- ``GET /authorize``: authorization endpoint; redirects at once with a code (PKCE).
- ``POST /introspect``: RFC 7662; a bad token is HTTP 200 ``{"active": false}``.
- ``POST /revoke``: RFC 7009, with client authentication; revoking a refresh token
  revokes its whole grant.
- ``GET /.well-known/openid-configuration`` and ``/.well-known/oauth-authorization-server``:
  server metadata (RFC 8414) naming every endpoint above, issuer :attr:`base_url`.

The client authenticates the same way on /token, /devicecode and /revoke (form, HTTP
Basic or a client assertion). Like real servers, it can be made strict: with
``reuse_detection`` a refresh token presented after it was rotated away revokes its
whole grant (RFC 9700 §4.14); with ``grantable_scopes`` it grants only those of the
requested scopes (and says so in the response's ``scope``); with
``strict_refresh_scope`` a refresh asking for more than was granted is ``invalid_scope``
(RFC 6749 §6).

Tokens are opaque random strings; their lifetime is :attr:`access_token_lifetime`
(per server, or per token via :meth:`issue_access_token`). Failures can be scripted
(:meth:`script`) and every request is counted (:attr:`stats`); the forms posted to the
token endpoint are kept in :attr:`token_forms`. JWT assertions (jwt-bearer grant and
client assertions) are decoded leniently, unless a key is registered for their issuer
with :meth:`add_jwt_key`: then the RS256 signature, ``aud`` and ``exp`` are checked.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from mailoauth.testing._oauth_logic import (
    DEVICE_CODE_GRANT,
    JWT_BEARER_GRANT,
    OAuthAuthority,
    ServerStats,
    TokenRecord,
    issued_secrets,
)

# tests/integration/oidc.py registers the secrets of another server through it.
from mailoauth.testing._oauth_logic import _register as _register

__all__ = [
    "DEVICE_CODE_GRANT",
    "JWT_BEARER_GRANT",
    "FakeOAuthServer",
    "OAuthAuthority",
    "ScriptedResponse",
    "ServerStats",
    "TokenRecord",
    "issued_secrets",
]

_WELL_KNOWN = frozenset(
    {"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"}
)
#: The POST endpoints: path -> the OAuthAuthority method deciding the request, called
#: with the form and the Authorization header (Microsoft's tenant paths map onto them).
_POST_ROUTES: Final[Mapping[str, str]] = {
    "/token": "handle_token",
    "/introspect": "handle_introspect",
    "/devicecode": "handle_device_authorization",
    "/revoke": "handle_revoke",
}
_MICROSOFT_PATH = re.compile(r"/[^/]+/oauth2/v2\.0/(token|devicecode)")


@dataclass(frozen=True)
class ScriptedResponse:
    """A response the token endpoint gives instead of the real one.

    ``status`` and ``body`` (a dict is sent as JSON, a str as text/html) are what the
    client receives after ``delay`` seconds, dripped a byte every ``drip`` seconds if
    set. A ``status`` of 0 means: answer normally, only late. ``headers`` are sent
    too (``{"Retry-After": "30"}`` with a 429).
    """

    status: int = 500
    body: dict[str, Any] | str = field(default_factory=lambda: {"error": "server_error"})
    delay: float = 0.0
    drip: float = 0.0
    """Seconds between the body's bytes: the body is sent one byte at a time."""
    headers: Mapping[str, str] = field(default_factory=dict)


class _QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout ran out) is expected here, not an error.
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class FakeOAuthServer(OAuthAuthority):
    """An OAuth 2.0 server for tests, on ``127.0.0.1`` and a free port.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Users, clients and
    tokens are set up with the ``add_*`` / ``issue_*`` methods of
    :class:`~mailoauth.testing._oauth_logic.OAuthAuthority`; all are thread-safe.
    ``clock`` (seconds since the epoch) is what token lifetimes are measured with.
    """

    poll_interval: float = 0.05
    """How often the serving thread checks for :meth:`stop` (seconds)."""

    def __init__(
        self,
        *,
        access_token_lifetime: float = 3600.0,
        rotate_refresh_tokens: bool = False,
        default_scope: str = "mail",
        host: str = "127.0.0.1",
        port: int = 0,
        reuse_detection: bool = False,
        grantable_scopes: str | None = None,
        strict_refresh_scope: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            access_token_lifetime=access_token_lifetime,
            rotate_refresh_tokens=rotate_refresh_tokens,
            default_scope=default_scope,
            reuse_detection=reuse_detection,
            grantable_scopes=grantable_scopes,
            strict_refresh_scope=strict_refresh_scope,
            clock=clock,
        )
        self.well_known_paths: frozenset[str] = _WELL_KNOWN
        """The metadata paths served (tests remove one to check the fallback)."""
        self._host = host
        self._port = port
        self._script: deque[ScriptedResponse] = deque()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeOAuthServer:
        """Start serving in a daemon thread; returns ``self``."""
        handler = _make_handler(self)
        self._httpd = _QuietHTTPServer((self._host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            name="fake-oauth",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOAuthServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeOAuthServer is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def script(self, *responses: ScriptedResponse) -> None:
        """Queue responses the token endpoint gives, in order, before normal ones."""
        with self._lock:
            self._script.extend(responses)

    def _next_scripted(self) -> ScriptedResponse | None:
        with self._lock:
            return self._script.popleft() if self._script else None


def _make_handler(server: FakeOAuthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tokens travel in request bodies and URLs: never log them

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            return dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))

        def _send(
            self,
            status: int,
            body: dict[str, Any] | str,
            drip: float = 0.0,
            headers: Mapping[str, str] | None = None,
        ) -> None:
            if isinstance(body, str):
                data, ctype = body.encode(), "text/html; charset=utf-8"
            else:
                data, ctype = json.dumps(body).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not drip:
                self.wfile.write(data)
                return
            self.wfile.flush()
            for i in range(len(data)):
                time.sleep(drip)
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()

        def _answer_scripted(self, form: dict[str, str]) -> bool:
            """Record a token request's form; answer it from the script, if one is queued
            (a status of 0 only delays the real answer). Whether it was answered."""
            with server._lock:
                server.token_forms.append(form)
            scripted = server._next_scripted()
            if scripted is None:
                return False
            # Counted while it is delayed, as a real request in flight would be.
            with server._lock:
                server.stats.token_requests += 1
                server.stats.grants[form.get("grant_type", "")] += 1
            time.sleep(scripted.delay)
            if scripted.status == 0:
                with server._lock:  # handle_token counts it again
                    server.stats.token_requests -= 1
                    server.stats.grants[form.get("grant_type", "")] -= 1
                return False
            self._send(scripted.status, scripted.body, drip=scripted.drip, headers=scripted.headers)
            return True

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            form = self._form()
            ms_path = _MICROSOFT_PATH.fullmatch(path)
            if ms_path:
                path = "/" + ms_path.group(1)
            handler = _POST_ROUTES.get(path)
            if handler is None:
                self._send(404, {"error": "not_found"})
                return
            if path == "/token" and self._answer_scripted(form):
                return
            status, body = getattr(server, handler)(form, self.headers.get("Authorization"))
            self._send(status, body)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.path in server.well_known_paths:
                with server._lock:
                    server.stats.discovery_requests += 1
                self._send(200, server.metadata())
                return
            if parts.path == "/authorize":
                query = dict(urllib.parse.parse_qsl(parts.query))
                status, location = server.handle_authorize(query)
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(404, {"error": "not_found"})

    return Handler
