"""Reading an access token's JWT header and claims, without verifying the signature.

Only for display and diagnosis: nothing here trusts a claim for a security decision.
Microsoft's Outlook tokens are JWTs; Google's are opaque, and give ``None``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DecodedJwt", "claim_list", "decode_jwt"]


@dataclass(frozen=True)
class DecodedJwt:
    """A JWT's header and claims (unverified); the signature is never kept."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def decode_jwt(token: str) -> DecodedJwt | None:
    """Header and claims of ``token`` if it is a JWS compact JWT, else ``None``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = _b64url_json(parts[0])
        claims = _b64url_json(parts[1])
    except (ValueError, UnicodeError, binascii.Error):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return DecodedJwt(header, claims)


def claim_list(claims: Mapping[str, Any], name: str) -> list[str]:
    """A claim that may be a space-separated string (``scp``) or a list (``roles``)."""
    value = claims.get(name)
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value]
    return []
