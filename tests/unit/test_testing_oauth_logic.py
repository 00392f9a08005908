"""The fake OAuth server's decisions without HTTP (mailoauth.testing._oauth_logic): no
sockets, a fake clock instead of sleeping."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse

import pytest

from mailoauth.testing._oauth_logic import (
    DEVICE_CODE_GRANT,
    JWT_BEARER_GRANT,
    OAuthAuthority,
    issued_secrets,
)
from mailoauth.testing.oauth_server import FakeOAuthServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(clock: Clock) -> OAuthAuthority:
    return OAuthAuthority(clock=clock, access_token_lifetime=600)


def username_of(authority: OAuthAuthority, token: str) -> str:
    record = authority.token_info(token)
    assert record is not None
    return record.username


def refresh(authority: OAuthAuthority, token: str, **extra: str) -> tuple[int, dict[str, str]]:
    status, body = authority.handle_token(
        {"grant_type": "refresh_token", "refresh_token": token, **extra}, None
    )
    return status, body


def test_every_token_grant_the_metadata_names_has_a_handler() -> None:
    authority = OAuthAuthority()
    assert set(authority.metadata()["grant_types_supported"]) == set(OAuthAuthority.GRANTS)
    status, body = authority.handle_token({"grant_type": "magic"}, None)
    assert (status, body["error"]) == (400, "unsupported_grant_type")


def test_lifetimes_follow_the_injected_clock(authority: OAuthAuthority, clock: Clock) -> None:
    token = authority.issue_access_token("alice@example.test")
    assert authority.handle_introspect({"token": token})[1]["expires_in"] == 600
    clock.now += 599
    assert authority.is_active(token)
    assert authority.handle_introspect({"token": token})[1]["expires_in"] == 1
    clock.now += 1
    assert not authority.is_active(token)
    assert authority.handle_introspect({"token": token}) == (200, {"active": False})
    assert token in issued_secrets()


def test_rotation_with_reuse_detection_revokes_the_whole_grant(clock: Clock) -> None:
    authority = OAuthAuthority(clock=clock, rotate_refresh_tokens=True, reuse_detection=True)
    first = authority.issue_refresh_token("bob@example.test")
    status, body = refresh(authority, first)
    assert status == 200 and body["refresh_token"] != first
    second, access = body["refresh_token"], body["access_token"]
    assert not authority.is_refresh_token_active(first)
    assert refresh(authority, first)[1]["error"] == "invalid_grant"  # replayed: theft
    assert authority.stats.reuse_detected == 1
    assert not authority.is_refresh_token_active(second) and not authority.is_active(access)


def test_strict_refresh_scope_refuses_more_than_was_granted(authority: OAuthAuthority) -> None:
    authority.strict_refresh_scope = True
    rt = authority.issue_refresh_token("carol@example.test", scope="mail")
    assert refresh(authority, rt, scope="mail admin")[1]["error"] == "invalid_scope"
    status, body = refresh(authority, rt, scope="mail")
    assert status == 200 and body["scope"] == "mail"


def test_client_authentication_form_and_basic(authority: OAuthAuthority) -> None:
    form = {"grant_type": "client_credentials", "client_id": "app"}
    assert authority.handle_token(form, None)[0] == 200  # lenient until a client is added
    authority.add_client("app", "app-secret")
    assert authority.handle_token(form, None)[1]["error"] == "invalid_client"
    assert authority.handle_token({**form, "client_secret": "app-secret"}, None)[0] == 200
    basic = "Basic " + base64.b64encode(b"app:app-secret").decode()
    status, body = authority.handle_token({"grant_type": "client_credentials"}, basic)
    assert status == 200 and username_of(authority, body["access_token"]) == "app"


def test_password_grant_gives_a_refresh_token_only_with_offline_access() -> None:
    authority = OAuthAuthority(grantable_scopes="mail offline_access")
    authority.add_user("dave@example.test", "pw")
    form = {"grant_type": "password", "username": "dave@example.test", "password": "pw"}
    _, body = authority.handle_token({**form, "scope": "mail admin"}, None)
    assert body["scope"] == "mail" and "refresh_token" not in body
    _, body = authority.handle_token({**form, "scope": "mail offline_access"}, None)
    assert "refresh_token" in body
    assert authority.handle_token({**form, "password": "no"}, None)[1]["error"] == "invalid_grant"


def test_authorization_code_with_pkce_is_redeemed_once() -> None:
    authority = OAuthAuthority()
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    status, location = authority.handle_authorize(
        {
            "redirect_uri": "http://127.0.0.1:9/",
            "state": "st",
            "code_challenge": challenge.rstrip(b"=").decode(),
            "scope": "mail",
        }
    )
    assert status == 302 and location.startswith("http://127.0.0.1:9/?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["state"] == "st"
    form = {"grant_type": "authorization_code", "code": query["code"]}
    form["redirect_uri"] = "http://127.0.0.1:9/"
    assert authority.handle_token({**form, "code_verifier": "w" * 50}, None)[1][
        "error_description"
    ] == ("PKCE failed")
    # A failed attempt used the code up, as a real server does.
    status, body = authority.handle_authorize({"redirect_uri": "http://127.0.0.1:9/"})
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(body).query))["code"]
    ok_form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:9/",
    }
    status, token = authority.handle_token(ok_form, None)
    assert status == 200 and token["refresh_token"].startswith("rt-")
    assert authority.handle_token(ok_form, None)[1]["error"] == "invalid_grant"


def test_device_flow_pending_slow_down_approved() -> None:
    authority = OAuthAuthority(issuer="http://idp.test")
    status, auth = authority.handle_device_authorization({"client_id": "tv", "scope": "mail"})
    assert status == 200 and auth["verification_uri"] == "http://idp.test/device"
    poll = {"grant_type": DEVICE_CODE_GRANT, "device_code": auth["device_code"]}
    assert authority.handle_token(poll, None)[1]["error"] == "authorization_pending"
    authority.slow_down_next()
    assert authority.handle_token(poll, None)[1]["error"] == "slow_down"
    assert authority.pending_user_codes() == [auth["user_code"]]
    authority.approve_device(auth["user_code"], "erin@example.test")
    status, body = authority.handle_token(poll, None)
    assert status == 200 and username_of(authority, body["access_token"]) == "erin@example.test"
    assert authority.handle_token(poll, None)[1]["error"] == "expired_token"


def test_jwt_bearer_is_lenient_without_a_key() -> None:
    claims = {"iss": "svc@example.test", "sub": "frank@example.test", "scope": "mail"}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": f"e30.{payload}.sig"}
    status, body = OAuthAuthority().handle_token(form, None)
    assert status == 200 and body["scope"] == "mail"
    bad = {"grant_type": JWT_BEARER_GRANT, "assertion": "not-a-jwt"}
    assert OAuthAuthority().handle_token(bad, None)[1]["error"] == "invalid_grant"


def test_revoking_a_refresh_token_revokes_its_grant(authority: OAuthAuthority) -> None:
    rt = authority.issue_refresh_token("gail@example.test")
    access = refresh(authority, rt)[1]["access_token"]
    assert authority.handle_revoke({"token": rt}) == (200, {})
    assert not authority.is_active(access) and not authority.is_refresh_token_active(rt)
    assert authority.handle_revoke({"token": "unknown"}) == (200, {})  # RFC 7009 §2.2


def test_the_http_server_is_the_authority_plus_glue() -> None:
    clock = Clock()
    server = FakeOAuthServer(clock=clock)  # not started: no socket
    assert isinstance(server, OAuthAuthority)
    token = server.issue_access_token("hank@example.test", lifetime=5)
    clock.now += 5
    assert not server.is_active(token)


def test_every_http_route_names_a_decision_taking_the_form_and_the_header() -> None:
    from mailoauth.testing.oauth_server import _POST_ROUTES

    authority = OAuthAuthority()
    assert set(_POST_ROUTES) == {"/token", "/introspect", "/devicecode", "/revoke"}
    for path, name in _POST_ROUTES.items():
        status, _ = getattr(authority, name)({}, None)
        assert status in (200, 400), path
