"""Token endpoint responses: parsed defensively and mapped onto the error tree. No I/O.

Whatever the endpoint sends (JSON of any shape, an HTML error page, nothing), the
parsers here return a value or raise a :class:`~mailoauth.errors.TokenError` subclass:

- 2xx with a JSON object holding ``access_token`` → :class:`AccessToken`;
- 5xx, 408, 429, or ``temporarily_unavailable`` / ``server_error`` → transient;
- any other 4xx (JSON error or not), 3xx, or a 2xx that is not a token → permanent,
  with a hint for the usual causes of each OAuth error code: generic ones
  (:data:`ERROR_HINTS`) for any server, Google's or Microsoft's own causes
  (:data:`VENDOR_HINTS`) only when the server is theirs.

Messages quote the server's ``error_description`` (shortened, with every secret that
was sent replaced by ``<redacted>``), never the request.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

# Google's and Microsoft's own hints and hosts live with the rest of what mailoauth knows
# about them; re-exported here, where they were first public.
from mailoauth._providers import VENDOR_HINTS, Vendor, token_error_hint, vendor_of
from mailoauth.errors import PermanentTokenError, TransientTokenError
from mailoauth.tokens.access_token import AccessToken

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "ERROR_HINTS",
    "MAX_DESCRIPTION_CHARS",
    "MAX_DEVICE_INTERVAL",
    "MAX_EXPIRES_IN",
    "MIN_EXPIRES_IN",
    "VENDOR_HINTS",
    "WRONG_URL_STATUS",
    "DeviceAuthorization",
    "Vendor",
    "decode_json_response",
    "hints_for",
    "parse_device_authorization",
    "parse_expires_in",
    "parse_revocation_response",
    "parse_token_response",
    "redact",
    "vendor_of",
]

DEFAULT_EXPIRES_IN = 3600.0
"""Lifetime assumed when ``expires_in`` is missing or unusable (seconds)."""
MIN_EXPIRES_IN = 0.001
"""Shortest lifetime believed (seconds); anything shorter, zero or negative is unusable."""
MAX_EXPIRES_IN = 10 * 365 * 86400.0
"""Longest lifetime believed (seconds); larger values are capped."""
MAX_DESCRIPTION_CHARS = 300
"""Longest server ``error_description`` quoted in an exception message."""
DEFAULT_DEVICE_INTERVAL = 5.0
"""Polling interval when the device authorization response names none (RFC 8628)."""
DEFAULT_DEVICE_EXPIRES_IN = 900.0
MAX_DEVICE_INTERVAL = 60.0
"""Longest polling interval believed from a device authorization response (seconds)."""

_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_TRANSIENT_STATUS = frozenset({408, 425, 429})

ERROR_HINTS: Mapping[str, str] = {
    "invalid_grant": (
        "the refresh token (or password, code or assertion) was refused: it was revoked, "
        "has expired, or was already used (a server that rotates refresh tokens accepts "
        "each one once; keep the newest, e.g. in a token store). Usual causes: the user "
        "revoked access, changed their password or signed out everywhere; for the password "
        "grant, a wrong username or password. Sign in again to get a new refresh token"
    ),
    "invalid_client": (
        "the client was not accepted: check client_id, that the client secret (or key) is "
        "right and has not expired, that client_auth matches the method the server has "
        "registered for this client (post, basic, private_key_jwt), and whether the app "
        "is a public client (which sends no secret) or a confidential one"
    ),
    "unauthorized_client": (
        "this client may not use this grant: enable the grant type for the client on the "
        "authorization server"
    ),
    "invalid_scope": (
        "the scope was refused: ask only for scopes the server offers and the client may "
        "have (see the server's scopes_supported); on refresh, no more than was granted"
    ),
    "access_denied": "the user or an administrator denied the request",
    "expired_token": "the device code expired before the user signed in; start again",
    "interaction_required": ("an interactive sign-in is needed (MFA, consent or an access policy)"),
    "consent_required": "the user or an administrator must consent to the app first",
    "unsupported_grant_type": "the endpoint does not support this grant; check token_url",
    "unsupported_token_type": "the server does not revoke this kind of token",
    "invalid_request": "the endpoint did not accept the request; check token_url and options",
}
"""Hints for OAuth error codes that hold for any authorization server."""


def hints_for(vendor: Vendor | None) -> Mapping[str, str]:
    """The hints for errors from ``vendor``'s server (the generic ones for None)."""
    if vendor is None:
        return ERROR_HINTS
    return {**ERROR_HINTS, **VENDOR_HINTS[vendor]}


def redact(text: str, secrets: Collection[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``<redacted>``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "<redacted>")
    return text


def _clean(text: str, secrets: Collection[str], limit: int = MAX_DESCRIPTION_CHARS) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    text = redact(text, secrets)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_body(body: bytes, content_type: str | None) -> str:
    kind = (content_type or "").split(";")[0].strip() or "no content type"
    if not body:
        return "an empty body"
    return f"a {len(body)}-byte {kind} body that is not a JSON object"


def _error_fields(doc: object, secrets: Collection[str]) -> tuple[str | None, str | None]:
    if not isinstance(doc, dict):
        return None, None
    error = doc.get("error")
    description = doc.get("error_description")
    if isinstance(error, dict):  # {"error": {"code": ..., "message": ...}} (Graph style)
        description = description or error.get("message")
        error = error.get("code")
    code = _clean(error, secrets, 80) if isinstance(error, str) and error.strip() else None
    text = _clean(description, secrets) if isinstance(description, str) else None
    return code, (text or None)


#: HTTP statuses that mean the URL is not an OAuth endpoint (a base URL, a typo, a web
#: page that takes no POST), whatever the body says.
WRONG_URL_STATUS: Final[Mapping[int, str]] = {
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
}


def _base_url_note(url: str | None) -> str:
    if url is None:
        return ""
    path = urllib.parse.urlsplit(url).path
    if path.strip("/") == "":
        return " (it is a server's base URL, with no path: the endpoint has one)"
    return " (a base URL or a typo instead of the endpoint's own URL?)"


def decode_json_response(
    status_code: int,
    body: bytes,
    *,
    content_type: str | None = None,
    endpoint: str = "the token endpoint",
    secrets: Collection[str] = (),
    hints: Mapping[str, str] = ERROR_HINTS,
    url: str | None = None,
) -> dict[str, Any]:
    """The JSON object of a 2xx response; raises the mapped error for anything else.

    A 404, 405 or 410 means the URL (``url``) is not the endpoint at all, whatever the
    body says: PermanentTokenError saying so, never "refused the grant".

    Raises :class:`TransientTokenError` for 5xx, 408, 429 and transient OAuth errors,
    :class:`PermanentTokenError` otherwise (with ``error`` and ``error_description``
    when the body had them, and a hint: the meaning and fix of a known code in the
    description (:data:`mailoauth._providers.DIAGNOSES`), else ``hints`` for the error).
    """
    try:
        doc: object = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if 200 <= status_code < 300:
        if isinstance(doc, dict):
            return doc
        raise PermanentTokenError(
            f"{endpoint} answered HTTP {status_code} with {_describe_body(body, content_type)}; "
            "check that the URL is the OAuth token endpoint",
            status_code=status_code,
        )
    error, description = _error_fields(doc, secrets)
    detail = f": {error}" if error else ""
    detail += f" ({description})" if description else ""
    if status_code in WRONG_URL_STATUS:
        shape = detail or (
            "" if isinstance(doc, dict) else f" with {_describe_body(body, content_type)}"
        )
        raise PermanentTokenError(
            f"{endpoint} answered HTTP {status_code} {WRONG_URL_STATUS[status_code]}"
            f"{shape}: the URL looks wrong{_base_url_note(url)}. Give the endpoint's own "
            "URL, as the server's metadata (/.well-known/openid-configuration) lists it",
            error_description=description,
            status_code=status_code,
        )
    if status_code >= 500 or status_code in _TRANSIENT_STATUS or error in _TRANSIENT_ERRORS:
        if not detail and not isinstance(doc, dict):
            detail = f" with {_describe_body(body, content_type)}"
        raise TransientTokenError(
            f"{endpoint} failed with HTTP {status_code}{detail}; this is usually temporary",
            status_code=status_code,
        )
    if error is None:
        what = "redirected" if 300 <= status_code < 400 else "refused the request"
        shape = "no error code" if isinstance(doc, dict) else _describe_body(body, content_type)
        raise PermanentTokenError(
            f"{endpoint} {what} (HTTP {status_code}) with {shape}"
            f"{f' ({description})' if description else ''}; check the token URL",
            error_description=description,
            status_code=status_code,
        )
    # A known AADSTS code names the cause more precisely than the error code does.
    hint = token_error_hint(description) or hints.get(error)
    raise PermanentTokenError(
        f"{endpoint} refused the grant (HTTP {status_code}){detail}"
        + (f". Hint: {hint}" if hint else ""),
        error=error,
        error_description=description,
        status_code=status_code,
    )


def parse_expires_in(value: object, default: float = DEFAULT_EXPIRES_IN) -> float:
    """Seconds from an ``expires_in`` of any shape: int, float, numeric string.

    Anything missing, non-numeric, non-finite or under :data:`MIN_EXPIRES_IN` gives
    ``default``; values over :data:`MAX_EXPIRES_IN` are capped. Never raises.
    """
    if isinstance(value, bool):
        return default
    seconds: float
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = float(value.strip())
        else:
            return default
    except (ValueError, OverflowError):
        return default
    if not math.isfinite(seconds) or seconds < MIN_EXPIRES_IN:
        return default
    return min(seconds, MAX_EXPIRES_IN)


def _scope(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value) or None
    return None


def parse_token_response(
    status_code: int,
    body: bytes,
    *,
    now: dt.datetime,
    content_type: str | None = None,
    endpoint: str = "the token endpoint",
    secrets: Collection[str] = (),
    hints: Mapping[str, str] = ERROR_HINTS,
    url: str | None = None,
) -> AccessToken:
    """The :class:`AccessToken` in a token endpoint response received at ``now``.

    Raises :class:`TransientTokenError` or :class:`PermanentTokenError` as described
    in the module docstring, and :class:`PermanentTokenError` for a 2xx without an
    ``access_token`` string.
    """
    doc = decode_json_response(
        status_code,
        body,
        content_type=content_type,
        endpoint=endpoint,
        secrets=secrets,
        hints=hints,
        url=url,
    )
    value = doc.get("access_token")
    if not isinstance(value, str) or not value.strip():
        fields = ", ".join(sorted(_clean(str(k), secrets, 40) for k in doc)[:10]) or "none"
        raise PermanentTokenError(
            f"{endpoint} answered HTTP {status_code} without an access_token (fields: "
            f"{fields}); check that the URL is the OAuth token endpoint",
            status_code=status_code,
        )
    seconds = parse_expires_in(doc.get("expires_in"))
    refresh = doc.get("refresh_token")
    return AccessToken(
        value.strip(),
        expires_at=now + dt.timedelta(seconds=seconds),
        scope=_scope(doc.get("scope")),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        issued_at=now,
    )


@dataclass(frozen=True)
class DeviceAuthorization:
    """A device authorization response (RFC 8628 §3.2); what to show the user.

    ``device_code`` is kept out of the repr.
    """

    user_code: str
    verification_uri: str
    message: str
    expires_in: float
    interval: float
    verification_uri_complete: str | None = None
    device_code: str = field(default="", repr=False)


def parse_device_authorization(
    status_code: int,
    body: bytes,
    *,
    content_type: str | None = None,
    endpoint: str = "the device authorization endpoint",
    secrets: Collection[str] = (),
    hints: Mapping[str, str] = ERROR_HINTS,
    url: str | None = None,
) -> DeviceAuthorization:
    """Parse a device authorization response; raises like :func:`decode_json_response`
    and :class:`PermanentTokenError` when ``device_code`` or ``user_code`` is missing."""
    doc = decode_json_response(
        status_code,
        body,
        content_type=content_type,
        endpoint=endpoint,
        secrets=secrets,
        hints=hints,
        url=url,
    )
    device_code, user_code = doc.get("device_code"), doc.get("user_code")
    # Google names it verification_url; RFC 8628 verification_uri.
    uri = doc.get("verification_uri") or doc.get("verification_url")
    if not (isinstance(device_code, str) and device_code and isinstance(user_code, str)):
        raise PermanentTokenError(
            f"{endpoint} answered without device_code and user_code; check the URL",
            status_code=status_code,
        )
    uri = uri if isinstance(uri, str) else ""
    message = doc.get("message")
    if not isinstance(message, str) or not message:
        message = f"To sign in, open {uri} and enter the code {user_code}"
    complete = doc.get("verification_uri_complete")
    return DeviceAuthorization(
        user_code=user_code,
        verification_uri=uri,
        message=message,
        expires_in=parse_expires_in(doc.get("expires_in"), DEFAULT_DEVICE_EXPIRES_IN),
        interval=min(
            parse_expires_in(doc.get("interval"), DEFAULT_DEVICE_INTERVAL), MAX_DEVICE_INTERVAL
        ),
        verification_uri_complete=complete if isinstance(complete, str) else None,
        device_code=device_code,
    )


def parse_revocation_response(
    status_code: int,
    body: bytes,
    *,
    content_type: str | None = None,
    endpoint: str = "the revocation endpoint",
    secrets: Collection[str] = (),
    hints: Mapping[str, str] = ERROR_HINTS,
    url: str | None = None,
) -> None:
    """Check a revocation response (RFC 7009 §2.2): any 2xx is success, whatever the
    body (servers answer 200 for unknown tokens too); anything else raises like
    :func:`decode_json_response` (503 is transient, §2.2.1)."""
    if 200 <= status_code < 300:
        return
    decode_json_response(
        status_code,
        body,
        content_type=content_type,
        endpoint=endpoint,
        secrets=secrets,
        hints=hints,
        url=url,
    )
    raise PermanentTokenError(  # pragma: no cover - decode_json_response raised
        f"{endpoint} answered HTTP {status_code}", status_code=status_code
    )
