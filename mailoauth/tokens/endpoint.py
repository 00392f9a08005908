"""TokenEndpoint: POSTs grant forms over httpx with client auth, timeouts and retries.

Transient failures (5xx, 408, 429, timeouts, network errors) are retried with
exponential backoff and jitter, at most ``max_attempts`` times in all, then raised as
:class:`~mailoauth.errors.TransientTokenError`; permanent ones are raised at once. A
``Retry-After`` is honoured: up to :data:`MAX_BACKOFF` it lengthens the wait before the
next attempt; beyond it, the error is raised at once with the wait in its
``retry_after``, for the caller to honour (the poller holds the credential back).
Each attempt (connect, send and the whole response) is bounded by one deadline, so a
server dripping its answer byte by byte cannot hold a caller longer than ``timeout``.

The client authenticates the same way on every endpoint it calls (token, device
authorization, revocation): ``client_secret`` in the form, HTTP Basic, a signed client
assertion (``private_key_jwt``) or nothing (a public client sends its ``client_id``).
Secrets travel only over https, or over plain http to a loopback address, unless the
caller opts in with ``allow_insecure_http=True``.

Secrets never reach a message or a log line: log lines name the URL, the grant and the
outcome; server texts are quoted with the secrets that were sent redacted.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import logging
import math
import random
import urllib.parse
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Literal, TypeVar

import anyio
import httpx

from mailoauth._util.proxyurl import ProxyURL
from mailoauth._util.routing import route_url
from mailoauth.errors import (
    ConfigurationError,
    InsecureTransportError,
    PermanentTokenError,
    TransientTokenError,
)
from mailoauth.tokens.access_token import AccessToken, utcnow
from mailoauth.tokens.responses import (
    DeviceAuthorization,
    Vendor,
    hints_for,
    parse_device_authorization,
    parse_revocation_response,
    parse_token_response,
    redact,
    vendor_of,
)

__all__ = [
    "CLIENT_AUTH_METHODS",
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT",
    "MAX_BACKOFF",
    "MAX_RESPONSE_BYTES",
    "MAX_RETRY_AFTER",
    "SECRET_FIELDS",
    "AssertionFactory",
    "ClientAuth",
    "SleepFunc",
    "TokenEndpoint",
    "attempt_deadline",
    "check_transport",
    "is_loopback_host",
    "parse_retry_after",
]

log = logging.getLogger("mailoauth.tokens")

DEFAULT_TIMEOUT = 10.0
"""Seconds one attempt at a request may take in all: connect, send and the whole
response (not per read: a response dripped byte by byte is cut off at this deadline)."""
DEFAULT_MAX_ATTEMPTS = 3
"""Attempts per token request when failures are transient."""
DEFAULT_BACKOFF = 0.5
"""Seconds before the first retry; doubled for each further one, with jitter."""
MAX_BACKOFF = 10.0
"""Longest wait between attempts, ``Retry-After`` included (seconds)."""
MAX_RESPONSE_BYTES = 1024 * 1024
"""Largest token endpoint response read; anything longer is refused."""
SECRET_FIELDS = frozenset(
    {
        "client_secret",
        "client_assertion",
        "refresh_token",
        "password",
        "assertion",
        "device_code",
        "code",
        "code_verifier",
    }
)
"""Form fields whose values are secrets and are redacted from every message."""

SleepFunc = Callable[[float], Awaitable[None]]
AssertionFactory = Callable[[str, dt.datetime], str]
"""Makes a client assertion JWT for (audience, now)."""
ClientAuth = Literal["post", "basic", "none", "private_key_jwt"]
CLIENT_AUTH_METHODS: tuple[ClientAuth, ...] = ("post", "basic", "none", "private_key_jwt")
"""``client_auth`` values: RFC 6749 §2.3.1 ``client_secret_post`` / ``client_secret_basic``,
a public client (``none``), and RFC 7523 ``private_key_jwt`` (with ``client_assertion``)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Raw:
    status: int
    body: bytes
    content_type: str | None
    retry_after: str | None


class TokenEndpoint:
    """One OAuth token endpoint and the client that authenticates to it.

    Client authentication, the same on the token, device authorization and revocation
    endpoints: ``client_secret`` in the form (``client_auth="post"``, the default, which
    Google and Microsoft accept) or HTTP Basic (``"basic"``), or a client assertion made
    per request by ``client_assertion`` (``"private_key_jwt"``, certificate credentials;
    chosen whenever ``client_assertion`` is given), or none at all (``"none"``: a public
    client, or the grant itself authenticates, as jwt-bearer does). An ``http_client``
    passed in is shared and not closed; otherwise one is created on first use and closed
    by :meth:`aclose`. ``timeout`` bounds each attempt as a whole; ``sleep`` is awaited
    between attempts (tests pass a fast one). ``revocation_url`` is where :meth:`revoke`
    posts. ``vendor`` (``"google"``, ``"microsoft"`` or None; default: guessed from the
    token URL's host) picks the hints in error messages. ``proxy`` (``http://`` for
    HTTP CONNECT, ``socks5://``; SOCKS needs ``pip install 'mailoauth[proxy]'``) is
    the proxy the endpoint is reached through; the environment (``HTTPS_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``, and httpx's other variables) is read only with
    ``trust_env=True``.

    Raises :class:`~mailoauth.errors.ConfigurationError` for a bad argument, and
    :class:`~mailoauth.errors.InsecureTransportError` for a plain ``http://`` URL that
    is not on a loopback address, unless ``allow_insecure_http=True``.
    """

    def __init__(
        self,
        token_url: str,
        *,
        client_id: str,
        client_secret: str | None = None,
        client_assertion: AssertionFactory | None = None,
        client_auth: ClientAuth = "post",
        http_client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        sleep: SleepFunc = anyio.sleep,
        clock: Callable[[], dt.datetime] = utcnow,
        revocation_url: str | None = None,
        allow_insecure_http: bool = False,
        vendor: Vendor | None = None,
        proxy: str | ProxyURL | None = None,
        trust_env: bool = False,
    ) -> None:
        if not client_id:
            raise ConfigurationError("client_id must not be empty")
        if client_secret is not None and client_assertion is not None:
            raise ConfigurationError("pass client_secret or a certificate, not both")
        if client_auth not in CLIENT_AUTH_METHODS:
            raise ConfigurationError(
                f"client_auth must be one of {', '.join(map(repr, CLIENT_AUTH_METHODS))}, "
                f"not {client_auth!r}"
            )
        if client_auth == "private_key_jwt" and client_assertion is None:
            raise ConfigurationError(
                "client_auth='private_key_jwt' needs client_assertion= (a function making "
                "the signed JWT for (audience, now))"
            )
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        self.allow_insecure_http = allow_insecure_http
        #: Where the HTTP client really sends a URL, if it routes (a test client such
        #: as ``MailSandbox.http_client()``): the http-loopback check is decided there.
        self._route: Callable[[str], str] | None = getattr(http_client, "route_url", None)
        for what, url in (("token_url", token_url), ("revocation_url", revocation_url)):
            if url is not None:
                check_transport(
                    url, allow_insecure_http=allow_insecure_http, what=what, route=self._route
                )
        self.token_url = token_url
        self.revocation_url = revocation_url
        self.vendor: Vendor | None = vendor if vendor is not None else vendor_of(token_url)
        self._hints = hints_for(self.vendor)
        self.client_id = client_id
        self._client_secret = client_secret
        self._client_assertion = client_assertion
        self._client_auth = client_auth
        self._http = http_client
        self._owns_http = http_client is None
        if proxy is not None and http_client is not None:
            raise ConfigurationError(
                "pass proxy= or http_client=, not both: set the proxy on the http_client"
            )
        self.proxy: ProxyURL | None = ProxyURL.parse(proxy) if proxy is not None else None
        self.trust_env = trust_env
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.attempt_timeout = attempt_deadline(timeout)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.sleep = sleep
        self.clock = clock

    # -- public ----------------------------------------------------------------------

    async def request_token(self, form: dict[str, str], *, grant: str) -> AccessToken:
        """POST ``form`` (plus client authentication) to the token URL; the token.

        Raises :class:`TransientTokenError` after ``max_attempts`` transient failures,
        :class:`PermanentTokenError` at once for a refusal.
        """
        form = self._authenticated(form)
        secrets = _secrets_of(form)
        started = self.clock()

        def parse(raw: _Raw) -> AccessToken:
            return parse_token_response(
                raw.status,
                raw.body,
                now=started,
                content_type=raw.content_type,
                endpoint=f"the token endpoint {self.token_url} ({grant} grant)",
                secrets=secrets,
                hints=self._hints,
                url=self.token_url,
            )

        return await self._with_retries(self.token_url, form, parse, grant=grant)

    async def refresh(self, refresh_token: str, *, scope: str | None = None) -> AccessToken:
        """The refresh_token grant (RFC 6749 §6)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope:
            form["scope"] = scope
        return await self.request_token(form, grant="refresh_token")

    async def authorize_device(
        self, device_authorization_url: str, *, scope: str | None = None
    ) -> DeviceAuthorization:
        """Start a device authorization (RFC 8628 §3.1); what to show the user.

        The client authenticates as on the token endpoint (RFC 8628 §3.1 requires it of
        confidential clients). Raises like :meth:`request_token`.
        """
        check_transport(
            device_authorization_url,
            allow_insecure_http=self.allow_insecure_http,
            what="device_authorization_url",
            route=self._route,
        )
        form = self._authenticated({"scope": scope} if scope else {})
        secrets = _secrets_of(form)

        def parse(raw: _Raw) -> DeviceAuthorization:
            return parse_device_authorization(
                raw.status,
                raw.body,
                content_type=raw.content_type,
                endpoint=f"the device authorization endpoint {device_authorization_url}",
                secrets=secrets,
                hints=self._hints,
                url=device_authorization_url,
            )

        return await self._with_retries(device_authorization_url, form, parse, grant="device")

    async def revoke(self, token: str, *, token_type_hint: str | None = None) -> None:
        """Revoke ``token`` at :attr:`revocation_url` (RFC 7009).

        ``token_type_hint`` is ``"refresh_token"`` or ``"access_token"`` (a hint; the
        server looks further if it is wrong). The server answers 200 for an unknown or
        already invalid token too. Raises :class:`ConfigurationError` without a
        revocation URL, :class:`TransientTokenError` after ``max_attempts`` transient
        failures (503 included) and :class:`PermanentTokenError` when the server refuses
        (``unsupported_token_type``, ``invalid_client``, ...).
        """
        url = self.revocation_url
        if url is None:
            raise ConfigurationError(
                "no revocation endpoint: pass revocation_url= (or build the provider "
                "with from_issuer(), which reads it from the server's metadata)"
            )
        if not token:
            raise ConfigurationError("there is no token to revoke")
        fields = {"token": token}
        if token_type_hint:
            fields["token_type_hint"] = token_type_hint
        form = self._authenticated(fields)
        secrets = [*_secrets_of(form), token]

        def parse(raw: _Raw) -> None:
            parse_revocation_response(
                raw.status,
                raw.body,
                content_type=raw.content_type,
                endpoint=f"the revocation endpoint {url}",
                secrets=secrets,
                hints=self._hints,
                url=url,
            )

        await self._with_retries(url, form, parse, grant="revocation")

    async def aclose(self) -> None:
        """Close the HTTP client if this endpoint created it."""
        if self._owns_http and self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def __repr__(self) -> str:
        return f"TokenEndpoint({self.token_url!r}, client_id={self.client_id!r})"

    # -- internals -------------------------------------------------------------------

    def _authenticated(self, form: dict[str, str]) -> dict[str, str]:
        form = dict(form)
        if self._client_auth == "none":
            if "grant_type" not in form or "assertion" not in form:
                # A public client names itself (RFC 6749 §3.2.1, RFC 8628 §3.1, RFC 7009
                # §2.1); only a jwt-bearer grant authenticates by its assertion alone.
                form["client_id"] = self.client_id
            return form
        if self._client_assertion is not None:
            form["client_id"] = self.client_id
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = self._client_assertion(self.token_url, self.clock())
        elif self._client_auth == "post" or self._client_secret is None:
            form["client_id"] = self.client_id
            if self._client_secret is not None:
                form["client_secret"] = self._client_secret
        return form

    def _basic_auth(self) -> httpx.BasicAuth | None:
        if self._client_auth != "basic" or self._client_secret is None:
            return None
        if self._client_assertion is not None:
            return None
        # RFC 6749 §2.3.1: form-urlencode both parts before Basic encoding.
        return httpx.BasicAuth(
            urllib.parse.quote_plus(self.client_id), urllib.parse.quote_plus(self._client_secret)
        )

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                proxy=self.proxy.secret_url() if self.proxy is not None else None,
                trust_env=self.trust_env,
            )
            self._owns_http = True
        return self._http

    async def _send(self, url: str, form: dict[str, str]) -> _Raw:
        auth = self._basic_auth()
        # Decided on the address really dialled: a sandbox route to loopback is fine.
        target = check_transport(
            url, allow_insecure_http=self.allow_insecure_http, route=self._route
        )
        try:
            with anyio.fail_after(self.attempt_timeout):
                return await self._post(url, target, form, auth)
        except TimeoutError as exc:
            raise TransientTokenError(
                f"{url} did not answer in time: no whole response within "
                f"{self.attempt_timeout:g} s (the timeout bounds connect, send and the whole "
                "response)"
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigurationError(f"cannot POST to {url!r}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise TransientTokenError(
                f"{url} did not answer in time ({type(exc).__name__}, timeout "
                f"{self.attempt_timeout:g} s)"
            ) from exc
        except httpx.TransportError as exc:
            detail = redact(str(exc), _secrets_of(form))
            raise TransientTokenError(
                f"could not reach {url}: {type(exc).__name__}: {detail}"
            ) from exc

    async def _post(
        self, url: str, target: str, form: dict[str, str], auth: httpx.BasicAuth | None
    ) -> _Raw:
        async with self._client().stream(
            "POST",
            target,
            data=form,
            headers={"Accept": "application/json"},
            timeout=self._timeout,
            auth=auth,
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise PermanentTokenError(
                        f"{url} sent a response over {MAX_RESPONSE_BYTES} bytes; "
                        "check that the URL is the OAuth token endpoint",
                        status_code=response.status_code,
                    )
            return _Raw(
                response.status_code,
                bytes(body),
                response.headers.get("content-type"),
                response.headers.get("retry-after"),
            )

    async def _with_retries(
        self, url: str, form: dict[str, str], parse: Callable[[_Raw], _T], *, grant: str
    ) -> _T:
        attempt = 0
        while True:
            attempt += 1
            log.debug("POST %s (%s), attempt %d/%d", url, grant, attempt, self.max_attempts)
            retry_after: str | None = None
            try:
                raw = await self._send(url, form)
                retry_after = raw.retry_after
                result = parse(raw)
            except TransientTokenError as exc:
                wait = parse_retry_after(retry_after, self.clock())
                if wait is not None and wait > MAX_BACKOFF:
                    # Retrying sooner than asked would only be refused again (and may
                    # prolong the throttling): the caller waits, holding others back.
                    log.debug("POST %s (%s) throttled for %.0f s: %s", url, grant, wait, exc)
                    raise TransientTokenError(
                        f"{exc}; it asked to retry after {wait:g} s",
                        status_code=exc.status_code,
                        retry_after=wait,
                    ) from exc
                if attempt >= self.max_attempts:
                    log.debug("POST %s (%s) failed for good: %s", url, grant, exc)
                    raise TransientTokenError(
                        f"{exc} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})",
                        status_code=exc.status_code,
                        retry_after=wait,
                    ) from exc
                delay = self._delay(attempt, retry_after)
                log.debug("POST %s (%s) failed (%s); retrying in %.2fs", url, grant, exc, delay)
                await self.sleep(delay)
                continue
            except PermanentTokenError as exc:
                log.debug("POST %s (%s) refused: %s", url, grant, exc.error or exc.status_code)
                raise
            log.debug("POST %s (%s) succeeded", url, grant)
            return result

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(MAX_BACKOFF, self.backoff * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            seconds = parse_retry_after(retry_after, self.clock())
            if seconds is not None:
                delay = max(delay, min(seconds, MAX_BACKOFF))
        return delay


#: The longest ``Retry-After`` believed (seconds): a day. Larger values are capped.
MAX_RETRY_AFTER = 86400.0


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3): a number of
    seconds or an HTTP-date (counted from ``now``, aware UTC). None when missing or
    unreadable; negative values give 0, values over :data:`MAX_RETRY_AFTER` are capped.
    Never raises."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def attempt_deadline(timeout: float | httpx.Timeout) -> float:
    """Seconds one attempt may take in all, from a ``timeout`` number or httpx.Timeout
    (the longest of its phases; :data:`DEFAULT_TIMEOUT` when none is set)."""
    if not isinstance(timeout, httpx.Timeout):
        seconds = float(timeout)
    else:
        phases = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t]
        seconds = max(phases) if phases else DEFAULT_TIMEOUT
    if not seconds > 0:
        raise ConfigurationError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    return seconds


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_transport(
    url: str,
    *,
    allow_insecure_http: bool = False,
    what: str = "",
    route: Callable[[str], str] | None = None,
) -> str:
    """The URL to POST to (after the deprecated process-wide test routes); refuses to
    send secrets in clear.

    Raises :class:`ConfigurationError` for a URL that is not http(s), and
    :class:`InsecureTransportError` for ``http://`` to a host that is not loopback
    unless ``allow_insecure_http``. That is decided on the address really reached: after
    the test routes and ``route`` (the HTTP client's own routing, e.g.
    ``MailSandbox.http_client().route_url``), so a test route to 127.0.0.1 is loopback.
    """
    name = what or "the URL"
    if not url.lower().startswith(("https://", "http://")):
        raise ConfigurationError(f"{name} must be an http(s) URL, not {url!r}")
    target = route_url(url)  # unchanged unless the deprecated MailSandbox.routes() is on
    reached = route(target) if route is not None else target
    parts = urllib.parse.urlsplit(reached)
    if parts.scheme.lower() == "https" or allow_insecure_http:
        return target
    if is_loopback_host(parts.hostname or ""):
        return target
    raise InsecureTransportError(
        f"refusing to send OAuth secrets (refresh tokens, client secrets, passwords) in "
        f"clear to {url}: use https://, or a loopback address for a server on this "
        "machine, or pass allow_insecure_http=True if the network is trusted"
    )


def _secrets_of(form: dict[str, str]) -> Collection[str]:
    return [value for key, value in form.items() if key in SECRET_FIELDS and value]
