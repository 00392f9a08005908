"""RS256 JSON Web Tokens for OAuth grants, signed with ``cryptography``.

Two assertions: the Microsoft client assertion (certificate credentials of a
confidential client) and the Google service-account assertion (jwt-bearer grant).
``cryptography`` is imported only when one is made; without it they raise
:class:`~mailoauth.errors.ConfigurationError` naming the extra to install.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
from typing import TYPE_CHECKING, Any

from mailoauth.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "CLIENT_ASSERTION_LIFETIME",
    "CLIENT_ASSERTION_TYPE",
    "SERVICE_ACCOUNT_ASSERTION_LIFETIME",
    "b64url",
    "certificate_thumbprint",
    "load_rsa_private_key",
    "make_client_assertion",
    "make_service_account_assertion",
    "sign_rs256",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ASSERTION_LIFETIME = 600
"""Seconds a Microsoft client assertion is valid (Microsoft allows up to 10 minutes)."""
SERVICE_ACCOUNT_ASSERTION_LIFETIME = 3600
"""Seconds a Google service-account assertion is valid (Google's maximum)."""

_EXTRA_HINT = (
    "signing JWT assertions needs the 'cryptography' package: "
    "pip install 'mailoauth[crypto]' (or pip install cryptography)"
)


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


def load_rsa_private_key(pem: str | bytes, *, password: bytes | None = None) -> RSAPrivateKey:
    """Load an RSA private key from PEM.

    Raises :class:`ConfigurationError` when ``cryptography`` is missing, the PEM cannot
    be read, or the key is not RSA (the message never quotes the key).
    """
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ConfigurationError(_EXTRA_HINT) from exc
    try:
        key = load_pem_private_key(_as_bytes(pem), password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # from None: the parser's message might quote key material.
        raise ConfigurationError(
            "the private key is not a readable PEM private key (wrong format or password)"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigurationError(f"RS256 needs an RSA private key, not {type(key).__name__}")
    return key


def certificate_thumbprint(cert_pem: str | bytes) -> str:
    """The ``x5t`` header: base64url of the SHA-1 digest of the DER certificate.

    Raises :class:`ConfigurationError` when ``cryptography`` is missing or the PEM is
    not a certificate.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
    except ImportError as exc:  # pragma: no cover
        raise ConfigurationError(_EXTRA_HINT) from exc
    try:
        cert = x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    except ValueError:
        raise ConfigurationError("the certificate is not a readable PEM certificate") from None
    # SHA-1 here is an identifier Microsoft asks for, not a security primitive.
    return b64url(hashlib.sha1(cert.public_bytes(Encoding.DER), usedforsecurity=False).digest())


def sign_rs256(claims: dict[str, Any], key: RSAPrivateKey, *, headers: dict[str, Any]) -> str:
    """A compact JWS of ``claims`` signed with RS256 (PKCS#1 v1.5, SHA-256)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    header = {"alg": "RS256", "typ": "JWT", **headers}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


def make_client_assertion(
    *,
    client_id: str,
    audience: str,
    private_key: str | bytes,
    certificate: str | bytes | None,
    now: dt.datetime,
    lifetime: int = CLIENT_ASSERTION_LIFETIME,
    key_id: str | None = None,
) -> str:
    """A client assertion (RFC 7523 ``private_key_jwt``), e.g. Microsoft's certificate
    credentials.

    Header ``x5t`` is the certificate's SHA-1 thumbprint when a certificate is given
    (Microsoft asks for it), ``kid`` is ``key_id`` when given; claims ``aud`` (the token
    URL), ``iss`` = ``sub`` = ``client_id``, a random ``jti``, ``nbf``, ``iat``, ``exp``.
    """
    key = load_rsa_private_key(private_key)
    issued = int(now.timestamp())
    claims = {
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": secrets.token_hex(16),
        "nbf": issued,
        "iat": issued,
        "exp": issued + lifetime,
    }
    headers: dict[str, Any] = {}
    if certificate is not None:
        headers["x5t"] = certificate_thumbprint(certificate)
    if key_id:
        headers["kid"] = key_id
    return sign_rs256(claims, key, headers=headers)


def make_service_account_assertion(
    *,
    client_email: str,
    private_key: str | bytes,
    audience: str,
    scope: str,
    now: dt.datetime,
    subject: str | None = None,
    key_id: str | None = None,
) -> str:
    """A Google service-account assertion for the jwt-bearer grant.

    Claims ``iss`` (the service account), ``scope``, ``aud`` (the token URI), ``iat``,
    ``exp`` = ``iat`` + 3600 and, for domain-wide delegation, ``sub`` (the user).
    """
    key = load_rsa_private_key(private_key)
    issued = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": client_email,
        "scope": scope,
        "aud": audience,
        "iat": issued,
        "exp": issued + SERVICE_ACCOUNT_ASSERTION_LIFETIME,
    }
    if subject:
        claims["sub"] = subject
    return sign_rs256(claims, key, headers={"kid": key_id} if key_id else {})
