"""Discovery, revocation responses, vendor hints and provider bounds, without sockets
(httpx.MockTransport stands in for the server)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from mailoauth.errors import ConfigurationError, PermanentTokenError, TransientTokenError
from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant
from mailoauth.tokens.discovery import MAX_METADATA_BYTES, discover
from mailoauth.tokens.oauth2 import MAX_SUPERSEDED, refresh_token_digest
from mailoauth.tokens.responses import (
    ERROR_HINTS,
    hints_for,
    parse_revocation_response,
    vendor_of,
)

ISSUER = "https://idp.example/tenant"


def client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def metadata(**extra: object) -> dict[str, object]:
    return {"issuer": ISSUER, "token_endpoint": f"{ISSUER}/token", **extra}


@pytest.mark.asyncio
async def test_metadata_over_the_limit_is_refused() -> None:
    big = json.dumps(metadata(padding="x" * MAX_METADATA_BYTES)).encode()
    async with client(lambda request: httpx.Response(200, content=big)) as http:
        with pytest.raises(ConfigurationError, match=f"over {MAX_METADATA_BYTES} bytes"):
            await discover(ISSUER, http_client=http)
    small = json.dumps(metadata(padding="x" * (MAX_METADATA_BYTES - 200))).encode()
    assert len(small) <= MAX_METADATA_BYTES
    async with client(lambda request: httpx.Response(200, content=small)) as http:
        assert (await discover(ISSUER, http_client=http)).token_endpoint == f"{ISSUER}/token"


@pytest.mark.asyncio
async def test_discovery_paths_and_fallback() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.startswith("/.well-known/oauth-authorization-server"):
            return httpx.Response(200, json=metadata(scopes_supported=["mail", 7]))
        return httpx.Response(404)

    async with client(handler) as http:
        found = await discover(ISSUER, http_client=http)
    assert seen == [
        "/tenant/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/tenant",
    ]
    assert found.scopes_supported == ("mail",) and found.revocation_endpoint is None


@pytest.mark.parametrize(
    ("response", "error", "match"),
    [
        (httpx.Response(503), TransientTokenError, "temporary"),
        (httpx.Response(200, text="<html>"), ConfigurationError, "JSON object"),
        (httpx.Response(200, json={"token_endpoint": "x"}), ConfigurationError, "no issuer"),
        (
            httpx.Response(200, json=metadata(token_endpoint="javascript:alert(1)")),
            ConfigurationError,
            "bad token_endpoint",
        ),
        (
            httpx.Response(200, json={"issuer": "https://evil.example"}),
            ConfigurationError,
            "evil.example",
        ),
    ],
)
@pytest.mark.asyncio
async def test_bad_metadata_maps_onto_the_tree(
    response: httpx.Response, error: type[Exception], match: str
) -> None:
    async with client(lambda request: response) as http:
        with pytest.raises(error, match=match):
            await discover(ISSUER, http_client=http)


@pytest.mark.asyncio
async def test_from_issuer_without_a_token_endpoint_says_so() -> None:
    doc = {"issuer": ISSUER}
    async with client(lambda request: httpx.Response(200, json=doc)) as http:
        with pytest.raises(ConfigurationError, match="no token_endpoint"):
            await OAuth2TokenProvider.from_issuer(
                ISSUER, RefreshTokenGrant("rt"), client_id="c", http_client=http
            )


def test_revocation_responses() -> None:
    parse_revocation_response(200, b"")  # RFC 7009 §2.2: any 200 body is success
    with pytest.raises(TransientTokenError):
        parse_revocation_response(503, b"")
    with pytest.raises(PermanentTokenError, match="unsupported_token_type") as info:
        parse_revocation_response(400, b'{"error": "unsupported_token_type"}')
    assert info.value.error == "unsupported_token_type"


def test_vendor_hints() -> None:
    assert vendor_of("https://oauth2.googleapis.com/token") == "google"
    assert vendor_of("https://login.microsoftonline.com/common/oauth2/v2.0/token") == "microsoft"
    assert vendor_of("https://idp.example/token") is None
    assert vendor_of("https://googleapis.com.evil.example/token") is None
    for text in ERROR_HINTS.values():
        assert "Google" not in text and "Microsoft" not in text and "Azure" not in text
    assert "Testing" in hints_for("google")["invalid_grant"]
    assert "Conditional Access" in hints_for("microsoft")["invalid_grant"]
    assert hints_for(None) is ERROR_HINTS


def test_superseded_refresh_tokens_are_bounded() -> None:
    provider = OAuth2TokenProvider(
        "https://idp.example/token", RefreshTokenGrant("rt-0"), client_id="c"
    )
    for i in range(MAX_SUPERSEDED + 10):
        provider._supersede(f"rt-{i}")
    remembered = provider._superseded
    assert len(remembered) == MAX_SUPERSEDED
    assert refresh_token_digest("rt-0") not in remembered  # the oldest went first
    assert refresh_token_digest(f"rt-{MAX_SUPERSEDED + 9}") in remembered
