"""The pure parts of the authorization-code grant (mailoauth.tokens.authcode): PKCE,
the authorization URL, argument checks, reprs. No sockets."""

from __future__ import annotations

import base64
import hashlib
import string
import urllib.parse

import pytest

from mailoauth.errors import ConfigurationError
from mailoauth.tokens import AuthorizationCodeGrant, authorization_code_flow
from mailoauth.tokens.authcode import (
    DEFAULT_AUTHORIZATION_TIMEOUT,
    LOOPBACK_HOST,
    PKCE_VERIFIER_BYTES,
    Pkce,
    RedirectResult,
    build_authorization_url,
    make_pkce,
)

_UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


def test_pkce_verifier_is_within_rfc7636_and_the_challenge_is_its_s256() -> None:
    pkce = make_pkce()
    # RFC 7636 §4.1: 43 to 128 unreserved characters.
    assert 43 <= len(pkce.verifier) <= 128 and set(pkce.verifier) <= _UNRESERVED
    unpadded = base64.urlsafe_b64encode(bytes(PKCE_VERIFIER_BYTES)).rstrip(b"=")
    assert len(pkce.verifier) == len(unpadded)
    digest = hashlib.sha256(pkce.verifier.encode()).digest()
    assert pkce.challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert pkce.method == "S256"
    assert make_pkce().verifier != pkce.verifier  # fresh each time
    assert pkce.verifier not in repr(pkce)


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def test_authorization_url_carries_the_request_and_extra_params_win() -> None:
    pkce = Pkce("v" * 43, "challenge")
    url = build_authorization_url(
        "https://idp.example/authorize?tenant=x",
        client_id="app",
        redirect_uri="http://127.0.0.1:5000/",
        scope="mail offline_access",
        state="st",
        pkce=pkce,
        extra_params={"prompt": "consent", "response_type": "code id_token"},
    )
    assert url.startswith("https://idp.example/authorize?tenant=x&")
    query = query_of(url)
    assert query == {
        "tenant": "x",
        "response_type": "code id_token",  # the caller's extra parameter wins
        "client_id": "app",
        "redirect_uri": "http://127.0.0.1:5000/",
        "scope": "mail offline_access",
        "state": "st",
        "code_challenge": "challenge",
        "code_challenge_method": "S256",
        "prompt": "consent",
    }
    assert pkce.verifier not in url  # only the challenge travels through the browser


def test_authorization_url_without_scope_leaves_it_out() -> None:
    url = build_authorization_url(
        "https://idp.example/authorize",
        client_id="app",
        redirect_uri="http://127.0.0.1:1/",
        scope=None,
        state="s",
        pkce=make_pkce(),
    )
    assert "scope" not in query_of(url) and "?" in url


@pytest.mark.parametrize(("url", "client_id"), [("", "app"), ("https://idp/authorize", "")])
def test_authorization_url_refuses_missing_parts(url: str, client_id: str) -> None:
    with pytest.raises(ConfigurationError, match=r"authorization_url|client_id"):
        build_authorization_url(
            url, client_id=client_id, redirect_uri="r", scope=None, state="s", pkce=make_pkce()
        )


def test_grant_checks_its_arguments_and_names_no_secret() -> None:
    with pytest.raises(ConfigurationError, match="authorization_url must not be empty"):
        AuthorizationCodeGrant("")
    with pytest.raises(ConfigurationError, match="timeout must be positive"):
        AuthorizationCodeGrant("https://idp/authorize", timeout=0)
    grant = AuthorizationCodeGrant("https://idp/authorize", extra_params={"prompt": "x"})
    assert grant.grant_type == "authorization_code" and grant.renew_with_refresh_token
    assert grant.timeout == DEFAULT_AUTHORIZATION_TIMEOUT and grant.redirect_host == LOOPBACK_HOST
    assert grant.identity() == "authorization-code"
    assert AuthorizationCodeGrant("https://idp/a", account="me@x.test").identity() == "me@x.test"
    assert repr(grant) == "AuthorizationCodeGrant('https://idp/authorize')"


def test_redirect_result_repr_hides_the_code() -> None:
    result = RedirectResult(code="the-authorization-code", state="s")
    assert "the-authorization-code" not in repr(result) and "state='s'" in repr(result)


def test_the_flow_is_public_in_mailoauth_tokens() -> None:
    import mailoauth.tokens

    assert "AuthorizationCodeGrant" in mailoauth.tokens.__all__
    assert mailoauth.tokens.authorization_code_flow is authorization_code_flow
