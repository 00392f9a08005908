"""The decisions of :class:`~mailoauth.testing.oauth_server.FakeOAuthServer`, without
HTTP: grants, tokens, rotation and reuse detection, revocation, introspection, device
and authorization codes, client authentication.

:class:`OAuthAuthority` takes what a request carries (the form, the ``Authorization``
header, the query) and returns ``(status, body)``; the HTTP server around it only parses
requests, routes them here and writes the answers (and adds what is about HTTP itself:
scripted slow or failing responses, which metadata paths are served). So the OAuth
behaviour is tested by calling these methods, no socket needed, and the same logic
could sit behind another transport.

Everything is thread-safe (one lock; the HTTP server calls in from its threads). Time
comes from ``clock`` (seconds since the epoch, default :func:`time.time`), so a test can
expire tokens by moving a fake clock instead of sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEVICE_CODE_GRANT",
    "JWT_BEARER_GRANT",
    "OAuthAuthority",
    "ServerStats",
    "TokenRecord",
    "issued_secrets",
]

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The base URL an authority names when no server gives it one (never resolvable).
DEFAULT_ISSUER: Final = "http://oauth.invalid"

_registry_lock = threading.Lock()
_issued: set[str] = set()


def _register(*secrets_: str | None) -> None:
    with _registry_lock:
        _issued.update(s for s in secrets_ if s)


def issued_secrets() -> frozenset[str]:
    """Every access token, refresh token, client secret and password that any
    FakeOAuthServer (or OAuthAuthority) in this process issued or was given: what a test
    run scans its logs and error messages for (none may ever appear there)."""
    with _registry_lock:
        return frozenset(_issued)


@dataclass
class TokenRecord:
    """What the server knows about an access token it issued."""

    username: str
    scope: str
    client_id: str
    expires_at: float
    revoked: bool = False


@dataclass
class _RefreshRecord:
    username: str
    scope: str
    client_id: str
    revoked: bool = False
    family: str = field(default_factory=lambda: secrets.token_hex(8))
    rotated: bool = False


@dataclass
class _DeviceRecord:
    user_code: str
    client_id: str
    scope: str
    username: str | None = None
    denied: bool = False
    last_poll: float = 0.0


@dataclass
class ServerStats:
    """Counters for assertions. ``token_requests`` counts every POST to /token."""

    token_requests: int = 0
    grants: Counter[str] = field(default_factory=Counter)
    introspections: int = 0
    device_polls: int = 0
    device_authorizations: int = 0
    revocations: int = 0
    reuse_detected: int = 0
    discovery_requests: int = 0


Response = tuple[int, Any]
"""An HTTP status and its body (a dict is JSON; for /authorize, the redirect target)."""


class OAuthAuthority:
    """An OAuth 2.0 authorization server's state and decisions, with no HTTP.

    Users, clients and tokens are set up with the ``add_*`` / ``issue_*`` methods;
    requests are decided by the ``handle_*`` methods. The options are those of
    :class:`~mailoauth.testing.oauth_server.FakeOAuthServer`. :attr:`base_url` is
    ``issuer`` (the HTTP server overrides it with its own address).
    """

    def __init__(
        self,
        *,
        access_token_lifetime: float = 3600.0,
        rotate_refresh_tokens: bool = False,
        default_scope: str = "mail",
        reuse_detection: bool = False,
        grantable_scopes: str | None = None,
        strict_refresh_scope: bool = False,
        clock: Callable[[], float] = time.time,
        issuer: str = DEFAULT_ISSUER,
    ) -> None:
        self.access_token_lifetime = access_token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.reuse_detection = reuse_detection
        self.grantable_scopes = frozenset(grantable_scopes.split()) if grantable_scopes else None
        self.strict_refresh_scope = strict_refresh_scope
        self.default_scope = default_scope
        self.clock = clock
        """Seconds since the epoch; token lifetimes and assertion expiry are read from it."""
        self.revoked_requests: list[dict[str, str]] = []
        self.device_forms: list[dict[str, str]] = []
        self.token_forms: list[dict[str, str]] = []
        self.stats = ServerStats()
        self.device_interval = 1
        self.authorize_username = "user@example.test"
        self._issuer = issuer
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenRecord] = {}
        self._refresh: dict[str, _RefreshRecord] = {}
        self._passwords: dict[str, str] = {}
        self._clients: dict[str, str | None] = {}
        self._devices: dict[str, _DeviceRecord] = {}
        self._codes: dict[str, tuple[str, str, str, str | None]] = {}
        self._slow_down_next = 0
        self._jwt_keys: dict[str, Any] = {}
        self._families: dict[str, str] = {}

    # -- where it is -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._issuer

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    @property
    def device_authorization_url(self) -> str:
        return f"{self.base_url}/devicecode"

    def microsoft_token_url(self, tenant: str = "organizations") -> str:
        """The token URL under Microsoft's path layout (``authority=base_url``)."""
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    @property
    def authorization_url(self) -> str:
        return f"{self.base_url}/authorize"

    @property
    def revocation_url(self) -> str:
        return f"{self.base_url}/revoke"

    @property
    def issuer(self) -> str:
        """The issuer named in the metadata documents (the base URL)."""
        return self.base_url

    def metadata(self) -> dict[str, Any]:
        """The server metadata document (RFC 8414 §2)."""
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_url,
            "authorization_endpoint": self.authorization_url,
            "device_authorization_endpoint": self.device_authorization_url,
            "revocation_endpoint": self.revocation_url,
            "introspection_endpoint": self.introspection_url,
            "scopes_supported": sorted({*self.default_scope.split(), "offline_access"}),
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "password",
                "client_credentials",
                JWT_BEARER_GRANT,
                DEVICE_CODE_GRANT,
            ],
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "client_secret_basic",
                "private_key_jwt",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
        }

    def _granted(self, requested: str) -> str:
        """What the server grants of ``requested`` (all unless ``grantable_scopes``)."""
        if self.grantable_scopes is None:
            return requested
        return " ".join(s for s in requested.split() if s in self.grantable_scopes)

    # -- set-up ----------------------------------------------------------------------

    def add_client(self, client_id: str, client_secret: str | None = None) -> None:
        """Register a client. Unregistered client ids are accepted too (lenient mode)
        until the first client is registered; from then on, only registered ones."""
        _register(client_secret)
        with self._lock:
            self._clients[client_id] = client_secret

    def add_jwt_key(self, issuer: str, public_key_pem: bytes | str) -> None:
        """Check the RS256 signature (and ``aud``, ``exp``) of JWT assertions from
        ``issuer`` (a service account's email, or a client id for client assertions)
        with this PEM public key. Needs the ``cryptography`` package."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        key = load_pem_public_key(pem)
        with self._lock:
            self._jwt_keys[issuer] = key

    def _verify_jwt(self, assertion: str, claims: dict[str, Any]) -> bool:
        """True unless a key is registered for the issuer and the JWT does not check out."""
        with self._lock:
            key = self._jwt_keys.get(str(claims.get("iss", "")))
        if key is None:
            return True
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        head, body, sig = assertion.split(".")
        try:
            signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
            key.verify(signature, f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        aud = claims.get("aud")
        exp = claims.get("exp")
        return (
            isinstance(aud, str)
            and aud.endswith("/token")
            and isinstance(exp, int)
            and exp > self.clock()
        )

    def add_user(self, username: str, password: str) -> None:
        """Register a user for the password (ROPC) grant."""
        _register(password)
        with self._lock:
            self._passwords[username] = password

    def issue_access_token(
        self,
        username: str,
        *,
        lifetime: float | None = None,
        scope: str | None = None,
        client_id: str = "test-client",
    ) -> str:
        """Mint an access token for ``username`` valid for ``lifetime`` seconds."""
        token = "at-" + secrets.token_urlsafe(24)
        _register(token)
        life = self.access_token_lifetime if lifetime is None else lifetime
        with self._lock:
            self._tokens[token] = TokenRecord(
                username, scope or self.default_scope, client_id, self.clock() + life
            )
        return token

    def issue_refresh_token(
        self, username: str, *, scope: str | None = None, client_id: str = "test-client"
    ) -> str:
        """Mint a refresh token for ``username``."""
        token = "rt-" + secrets.token_urlsafe(24)
        _register(token)
        with self._lock:
            self._refresh[token] = _RefreshRecord(username, scope or self.default_scope, client_id)
        return token

    def revoke(self, token: str) -> None:
        """Revoke an access or refresh token; introspection reports it inactive."""
        with self._lock:
            if token in self._tokens:
                self._tokens[token].revoked = True
            if token in self._refresh:
                self._refresh[token].revoked = True

    def revoke_grant(self, refresh_token: str) -> None:
        """Revoke the whole grant of ``refresh_token``: every refresh token rotated
        from the same start and every access token issued with them."""
        with self._lock:
            rec = self._refresh.get(refresh_token)
            if rec is not None:
                self._revoke_family(rec.family)

    def _revoke_family(self, family: str) -> None:
        # Called with self._lock held.
        for rrec in self._refresh.values():
            if rrec.family == family:
                rrec.revoked = True
        for access, fam in self._families.items():
            if fam == family and access in self._tokens:
                self._tokens[access].revoked = True

    def is_refresh_token_active(self, refresh_token: str) -> bool:
        """Whether ``refresh_token`` would be accepted now."""
        with self._lock:
            rec = self._refresh.get(refresh_token)
            return rec is not None and not rec.revoked

    def revoke_user(self, username: str) -> None:
        """Revoke every access and refresh token of ``username`` (a dead grant)."""
        with self._lock:
            for rec in self._tokens.values():
                if rec.username == username:
                    rec.revoked = True
            for rrec in self._refresh.values():
                if rrec.username == username:
                    rrec.revoked = True

    def expire(self, token: str) -> None:
        """Make an access token expired now."""
        with self._lock:
            self._tokens[token].expires_at = self.clock() - 1

    def token_info(self, token: str) -> TokenRecord | None:
        """The record of an issued access token, or None."""
        with self._lock:
            return self._tokens.get(token)

    def is_active(self, token: str) -> bool:
        """Whether introspection would call ``token`` active now."""
        with self._lock:
            rec = self._tokens.get(token)
            return rec is not None and not rec.revoked and rec.expires_at > self.clock()

    def slow_down_next(self, count: int = 1) -> None:
        """Answer the next ``count`` device-code polls with ``slow_down``."""
        with self._lock:
            self._slow_down_next += count

    def approve_device(self, user_code: str, username: str) -> None:
        """Approve a pending device authorization as ``username``."""
        with self._lock:
            for rec in self._devices.values():
                if rec.user_code == user_code:
                    rec.username = username
                    return
        raise KeyError(f"no pending device authorization with user code {user_code!r}")

    def pending_user_codes(self) -> list[str]:
        """User codes of device authorizations not yet approved or denied, oldest
        first (a test approves them as the user would)."""
        with self._lock:
            return [
                rec.user_code
                for rec in self._devices.values()
                if rec.username is None and not rec.denied
            ]

    def deny_device(self, user_code: str) -> None:
        """Deny a pending device authorization (the poller then gets access_denied)."""
        with self._lock:
            for rec in self._devices.values():
                if rec.user_code == user_code:
                    rec.denied = True
                    return
        raise KeyError(f"no pending device authorization with user code {user_code!r}")

    # -- requests ------------------------------------------------------------------

    @staticmethod
    def _client_of(form: dict[str, str], auth_header: str | None) -> tuple[str | None, str | None]:
        """The client id and secret a request presents (form or HTTP Basic)."""
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        if auth_header and auth_header.lower().startswith("basic "):
            decoded = base64.b64decode(auth_header[6:]).decode()
            cid, _, csec = decoded.partition(":")
            client_id, secret = urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(csec)
        return client_id, secret

    def _check_client(self, form: dict[str, str], auth_header: str | None) -> str | None:
        """Return an error code, or None when the client is acceptable."""
        client_id, secret = self._client_of(form, auth_header)
        assertion = form.get("client_assertion")
        if assertion:
            claims = _jwt_claims(assertion)
            if claims is None or not self._verify_jwt(assertion, claims):
                return "invalid_client"
        with self._lock:
            if not self._clients:
                return None
            if client_id not in self._clients:
                return "invalid_client"
            expected = self._clients[client_id]
        if assertion or expected is None:
            return None
        return None if secret == expected else "invalid_client"

    def _mint(
        self,
        username: str,
        scope: str,
        client_id: str,
        *,
        refresh: str | None,
        family: str | None = None,
    ) -> Any:
        if refresh is not None and family is None:
            with self._lock:
                family = self._refresh[refresh].family
        access = self.issue_access_token(username, scope=scope, client_id=client_id)
        if family is not None:
            with self._lock:
                self._families[access] = family
        with self._lock:
            lifetime = self.access_token_lifetime
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(lifetime) if lifetime >= 1 else lifetime,
            "scope": scope,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return body

    def handle_token(self, form: dict[str, str], auth_header: str | None) -> Response:
        """The token endpoint (RFC 6749 §3.2): authenticate the client, then run the
        grant named by ``grant_type`` (see :attr:`GRANTS`)."""
        with self._lock:
            self.stats.token_requests += 1
            self.stats.grants[form.get("grant_type", "")] += 1
        client_error = self._check_client(form, auth_header)
        if client_error:
            return 401, {"error": client_error, "error_description": "client authentication failed"}
        grant = form.get("grant_type", "")
        handler = self.GRANTS.get(grant)
        if handler is None:
            return 400, {"error": "unsupported_grant_type", "error_description": grant}
        client_id = self._client_of(form, auth_header)[0] or "test-client"
        return handler(self, form, client_id)

    def _grant_refresh_token(self, form: dict[str, str], client_id: str) -> Response:
        old = form.get("refresh_token", "")
        with self._lock:
            rec = self._refresh.get(old)
            if rec is not None and rec.rotated and self.reuse_detection:
                # RFC 9700 §4.14.2: a rotated-away token again means theft.
                self.stats.reuse_detected += 1
                self._revoke_family(rec.family)
            if rec is None or rec.revoked:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                }
            requested = form.get("scope")
            if (
                requested
                and self.strict_refresh_scope
                and not set(requested.split()) <= set(rec.scope.split())
            ):
                return 400, {
                    "error": "invalid_scope",
                    "error_description": "refresh asks for scopes that were not granted",
                }
            new_refresh: str | None = None
            if self.rotate_refresh_tokens:
                rec.revoked = True
                rec.rotated = True
                new_refresh = "rt-" + secrets.token_urlsafe(24)
                _register(new_refresh)
                self._refresh[new_refresh] = _RefreshRecord(
                    rec.username, rec.scope, rec.client_id, family=rec.family
                )
        scope = requested or rec.scope
        return 200, self._mint(
            rec.username, scope, client_id, refresh=new_refresh, family=rec.family
        )

    def _grant_password(self, form: dict[str, str], client_id: str) -> Response:
        username, password = form.get("username", ""), form.get("password", "")
        with self._lock:
            ok = self._passwords.get(username) == password and username in self._passwords
        if not ok:
            return 400, {
                "error": "invalid_grant",
                "error_description": "AADSTS50126: Error validating credentials.",
            }
        scope = self._granted(form.get("scope") or self.default_scope)
        refresh = (
            self.issue_refresh_token(username, scope=scope, client_id=client_id)
            if "offline_access" in scope.split()
            else None
        )
        return 200, self._mint(username, scope, client_id, refresh=refresh)

    def _grant_client_credentials(self, form: dict[str, str], client_id: str) -> Response:
        scope = form.get("scope") or self.default_scope
        return 200, self._mint(client_id, scope, client_id, refresh=None)

    def _grant_jwt_bearer(self, form: dict[str, str], client_id: str) -> Response:
        claims = _jwt_claims(form.get("assertion", ""))
        if claims is None or not self._verify_jwt(form.get("assertion", ""), claims):
            return 400, {"error": "invalid_grant", "error_description": "bad assertion"}
        subject = str(claims.get("sub") or claims.get("iss") or "")
        scope = str(claims.get("scope") or self.default_scope)
        return 200, self._mint(subject, scope, str(claims.get("iss", client_id)), refresh=None)

    def _grant_device_code(self, form: dict[str, str], client_id: str) -> Response:
        return self._poll_device(form.get("device_code", ""))

    def _grant_authorization_code(self, form: dict[str, str], client_id: str) -> Response:
        return self._redeem_code(form)

    GRANTS: Final[Mapping[str, Callable[[OAuthAuthority, dict[str, str], str], Response]]] = {
        "refresh_token": _grant_refresh_token,
        "password": _grant_password,
        "client_credentials": _grant_client_credentials,
        JWT_BEARER_GRANT: _grant_jwt_bearer,
        DEVICE_CODE_GRANT: _grant_device_code,
        "authorization_code": _grant_authorization_code,
    }
    """The token endpoint's grants: ``grant_type`` -> the method deciding it."""

    def _poll_device(self, device_code: str) -> Response:
        with self._lock:
            self.stats.device_polls += 1
            rec = self._devices.get(device_code)
            if rec is None:
                return 400, {"error": "expired_token"}
            if self._slow_down_next > 0:
                self._slow_down_next -= 1
                return 400, {"error": "slow_down"}
            if rec.denied:
                return 400, {"error": "access_denied"}
            if rec.username is None:
                return 400, {"error": "authorization_pending"}
            del self._devices[device_code]
        refresh = self.issue_refresh_token(rec.username, scope=rec.scope, client_id=rec.client_id)
        return 200, self._mint(rec.username, rec.scope, rec.client_id, refresh=refresh)

    def handle_device_authorization(
        self, form: dict[str, str], auth_header: str | None = None
    ) -> Response:
        """RFC 8628 §3.1; the client authenticates as on the token endpoint."""
        with self._lock:
            self.stats.device_authorizations += 1
            self.device_forms.append(form)
        client_error = self._check_client(form, auth_header)
        if client_error:
            return 401, {"error": client_error, "error_description": "client authentication failed"}
        device_code = secrets.token_urlsafe(24)
        user_code = "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(8))
        client_id = self._client_of(form, auth_header)[0] or ""
        with self._lock:
            self._devices[device_code] = _DeviceRecord(
                user_code, client_id, self._granted(form.get("scope") or self.default_scope)
            )
        return 200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": f"{self.base_url}/device",
            "expires_in": 900,
            "interval": self.device_interval,
            "message": f"To sign in, open {self.base_url}/device and enter {user_code}.",
        }

    def handle_authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """Approve at once as :attr:`authorize_username`; returns (302, location)."""
        redirect = query.get("redirect_uri", "")
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = (
                self.authorize_username,
                self._granted(query.get("scope") or self.default_scope),
                redirect,
                query.get("code_challenge"),
            )
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        sep = "&" if "?" in redirect else "?"
        return 302, redirect + sep + urllib.parse.urlencode(params)

    def _redeem_code(self, form: dict[str, str]) -> Response:
        with self._lock:
            entry = self._codes.pop(form.get("code", ""), None)
        if entry is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown code"}
        username, scope, redirect, challenge = entry
        if form.get("redirect_uri", "") != redirect:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"}
        if challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if expected != challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE failed"}
        client_id = form.get("client_id", "test-client")
        refresh = self.issue_refresh_token(username, scope=scope, client_id=client_id)
        return 200, self._mint(username, scope, client_id, refresh=refresh)

    def handle_introspect(self, form: dict[str, str], auth_header: str | None = None) -> Response:
        """RFC 7662: a live token's record, else ``{"active": false}``. The caller is not
        authenticated (``auth_header`` is ignored), as Dovecot's passdb does not send any."""
        token = form.get("token", "")
        with self._lock:
            self.stats.introspections += 1
            rec = self._tokens.get(token)
            now = self.clock()
            if rec is None or rec.revoked or rec.expires_at <= now:
                return 200, {"active": False}
            return 200, {
                "active": True,
                "username": rec.username,
                "scope": rec.scope,
                "client_id": rec.client_id,
                "exp": int(rec.expires_at),
                # Dovecot reads expires_in as unsigned: never negative (REAL_SERVERS.md).
                "expires_in": max(1, int(rec.expires_at - now)),
            }

    def handle_revoke(self, form: dict[str, str], auth_header: str | None = None) -> Response:
        """RFC 7009: authenticate the client, revoke (a refresh token: its whole
        grant), answer 200 even for an unknown token."""
        with self._lock:
            self.stats.revocations += 1
            self.revoked_requests.append(form)
        client_error = self._check_client(form, auth_header)
        if client_error:
            return 401, {"error": client_error, "error_description": "client authentication failed"}
        token = form.get("token", "")
        with self._lock:
            family = self._refresh[token].family if token in self._refresh else None
            family = family or self._families.get(token)
            if family is not None:
                self._revoke_family(family)
        self.revoke(token)
        return 200, {}


def _jwt_claims(assertion: str) -> dict[str, Any] | None:
    """Decode a JWT's claims without checking the signature (a test server's leniency)."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None
