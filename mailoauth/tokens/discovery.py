"""Authorization server discovery: RFC 8414 and OpenID Connect Discovery 1.0.

:func:`discover` reads ``{issuer}/.well-known/openid-configuration`` and, when the
server has none, ``/.well-known/oauth-authorization-server`` (inserted before the
issuer's path, RFC 8414 §3.1), checks that the document names the same issuer (RFC 8414
§3.3: otherwise a document could send the client's secrets to another server), and
returns the endpoints as :class:`ServerMetadata`. The metadata carries no secret, but a
forged one would redirect them: it is fetched over https (or loopback) only, like
every other endpoint.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import httpx

from mailoauth._util.proxyurl import ProxyURL
from mailoauth.errors import ConfigurationError, TransientTokenError
from mailoauth.tokens.endpoint import DEFAULT_TIMEOUT, attempt_deadline, check_transport

__all__ = [
    "MAX_METADATA_BYTES",
    "OAUTH_WELL_KNOWN",
    "OIDC_WELL_KNOWN",
    "ServerMetadata",
    "discover",
    "metadata_urls",
]

log = logging.getLogger("mailoauth.tokens")

OIDC_WELL_KNOWN = "/.well-known/openid-configuration"
OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
MAX_METADATA_BYTES = 256 * 1024
"""Largest metadata document read; anything longer is refused."""

_ENDPOINTS = (
    "token_endpoint",
    "authorization_endpoint",
    "device_authorization_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "jwks_uri",
    "userinfo_endpoint",
)
_LISTS = (
    "scopes_supported",
    "grant_types_supported",
    "response_types_supported",
    "token_endpoint_auth_methods_supported",
    "revocation_endpoint_auth_methods_supported",
    "code_challenge_methods_supported",
)


@dataclass(frozen=True)
class ServerMetadata:
    """An authorization server's metadata (RFC 8414 §2); absent fields are None / ()."""

    issuer: str
    token_endpoint: str | None = None
    authorization_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    introspection_endpoint: str | None = None
    jwks_uri: str | None = None
    userinfo_endpoint: str | None = None
    scopes_supported: tuple[str, ...] = ()
    grant_types_supported: tuple[str, ...] = ()
    response_types_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    revocation_endpoint_auth_methods_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    url: str = ""
    """Where the document was read."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The whole document, for fields not listed here."""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, url: str = "") -> ServerMetadata:
        """Parse a metadata document; raises ConfigurationError without an issuer or
        with an endpoint that is not an http(s) URL."""
        issuer = doc.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ConfigurationError(f"the metadata at {url or 'the URL'} names no issuer")
        endpoints: dict[str, str | None] = {}
        for name in _ENDPOINTS:
            value = doc.get(name)
            if value is not None and not (
                isinstance(value, str) and value.lower().startswith(("https://", "http://"))
            ):
                raise ConfigurationError(f"the metadata at {url} has a bad {name}: {value!r}")
            endpoints[name] = value
        lists = {
            name: tuple(v for v in doc.get(name) or () if isinstance(v, str))
            if isinstance(doc.get(name), list)
            else ()
            for name in _LISTS
        }
        return cls(
            issuer=issuer, url=url, raw=dict(doc), **cast(Any, endpoints), **cast(Any, lists)
        )


def metadata_urls(issuer: str) -> list[str]:
    """Where to look for ``issuer``'s metadata, in order: OpenID Connect's
    ``{issuer}/.well-known/openid-configuration``, then RFC 8414's
    ``{scheme}://{host}/.well-known/oauth-authorization-server{path}``."""
    parts = urllib.parse.urlsplit(issuer.rstrip("/"))
    if parts.scheme.lower() not in ("https", "http") or not parts.netloc:
        raise ConfigurationError(f"the issuer must be an http(s) URL, not {issuer!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"an issuer URL has no query or fragment: {issuer!r}")
    base = f"{parts.scheme}://{parts.netloc}"
    return [base + parts.path + OIDC_WELL_KNOWN, base + OAUTH_WELL_KNOWN + parts.path]


async def discover(
    issuer: str,
    *,
    http_client: httpx.AsyncClient | None = None,
    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    allow_insecure_http: bool = False,
    proxy: str | ProxyURL | None = None,
    trust_env: bool = False,
) -> ServerMetadata:
    """The metadata of the authorization server ``issuer`` (see the module docstring).

    ``timeout`` bounds each document's fetch as a whole. Without ``http_client``, the
    documents are fetched through ``proxy`` (``http://`` or ``socks5://``) when given,
    and through the environment's proxy only with ``trust_env=True``. Raises
    :class:`~mailoauth.errors.InsecureTransportError` for ``http://`` off loopback
    (unless ``allow_insecure_http``), :class:`TransientTokenError` when the server
    cannot be reached or fails (5xx), and :class:`ConfigurationError` when it has no
    metadata document, sends something else, or names another issuer.
    """
    urls = metadata_urls(issuer)
    deadline = attempt_deadline(timeout)
    client = http_client or httpx.AsyncClient(
        follow_redirects=False,
        proxy=ProxyURL.parse(proxy).secret_url() if proxy is not None else None,
        trust_env=trust_env,
    )
    statuses: list[str] = []
    try:
        for url in urls:
            target = check_transport(url, allow_insecure_http=allow_insecure_http, what="issuer")
            status, body = await _get(client, url, target, deadline)
            if status in (404, 405, 400) or 300 <= status < 400:
                statuses.append(f"{url}: HTTP {status}")
                continue
            if status >= 500 or status in (408, 429):
                raise TransientTokenError(
                    f"{url} failed with HTTP {status}; this is usually temporary",
                    status_code=status,
                )
            if status != 200:
                statuses.append(f"{url}: HTTP {status}")
                continue
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError):
                doc = None
            if not isinstance(doc, dict):
                raise ConfigurationError(
                    f"{url} did not answer with a JSON object; check the issuer URL"
                )
            metadata = ServerMetadata.from_json(doc, url=url)
            if metadata.issuer.rstrip("/") != issuer.rstrip("/"):
                raise ConfigurationError(
                    f"the metadata at {url} is for the issuer {metadata.issuer!r}, not "
                    f"{issuer!r} (RFC 8414 §3.3): pass the issuer exactly as the server names it"
                )
            log.debug("discovered %s at %s", issuer, url)
            return metadata
    finally:
        if http_client is None:
            await client.aclose()
    raise ConfigurationError(
        f"no authorization server metadata for {issuer} ({'; '.join(statuses)}); check "
        "the issuer URL, or give the endpoints explicitly"
    )


async def _get(
    client: httpx.AsyncClient, url: str, target: str, deadline: float
) -> tuple[int, bytes]:
    try:
        with anyio.fail_after(deadline):
            async with client.stream(
                "GET", target, headers={"Accept": "application/json"}, timeout=deadline
            ) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_METADATA_BYTES:
                        raise ConfigurationError(
                            f"{url} sent over {MAX_METADATA_BYTES} bytes: not a metadata document"
                        )
                return response.status_code, bytes(body)
    except TimeoutError as exc:
        raise TransientTokenError(f"{url} did not answer within {deadline:g} s") from exc
    except httpx.TimeoutException as exc:
        raise TransientTokenError(f"{url} did not answer within {deadline:g} s") from exc
    except httpx.TransportError as exc:
        raise TransientTokenError(f"could not reach {url}: {type(exc).__name__}") from exc
