"""SASL mechanisms: exact encodings, escaping, error challenges, injection guards."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailoauth._util.text import CONTROL_CHARACTERS
from mailoauth.errors import ConfigurationError
from mailoauth.sasl import (
    POP3_MAX_AUTH_LINE,
    SMTP_MAX_COMMAND_LINE,
    OAuthBearer,
    XOAuth2,
    create_mechanism,
    decode_error_challenge,
    escape_saslname,
    fits_initial_response,
)

safe_text = st.text(
    alphabet=st.characters(exclude_characters=CONTROL_CHARACTERS, exclude_categories=["Cs"]),
    min_size=1,
)


def test_xoauth2_initial_response_is_exact() -> None:
    mech = XOAuth2("user@example.com", "ya29.token")
    assert mech.initial_response() == b"user=user@example.com\x01auth=Bearer ya29.token\x01\x01"
    assert base64.b64decode(mech.initial_response_b64()) == mech.initial_response()
    assert mech.respond(b"eyJzdGF0dXMiOiI0MDAifQ==") == b""


def test_oauthbearer_initial_response_is_exact() -> None:
    mech = OAuthBearer("user@example.com", "tok", host="imap.example.com", port=993)
    assert mech.initial_response() == (
        b"n,a=user@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer tok\x01\x01"
    )
    assert base64.b64decode(mech.respond(b"")) == b"\x01"


def test_saslname_escaping_rfc5801() -> None:
    assert escape_saslname("a,b=c") == "a=2Cb=3Dc"
    mech = OAuthBearer("we,ird=name", "t", host="h", port=1)
    assert mech.initial_response().startswith(b"n,a=we=2Cird=3Dname,\x01")


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\x00b", "a\x01b", "a\x85b"])
def test_control_characters_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="CR, LF or NUL"):
        XOAuth2(bad, "token")
    with pytest.raises(ConfigurationError, match="CR, LF or NUL"):
        XOAuth2("user", bad)
    with pytest.raises(ConfigurationError):
        OAuthBearer(bad, "token", host="h", port=1)


def test_repr_hides_the_token() -> None:
    for mech in (XOAuth2("u", "SECRET-TOKEN"), OAuthBearer("u", "SECRET-TOKEN", host="h", port=1)):
        assert "SECRET-TOKEN" not in repr(mech)


def test_create_mechanism() -> None:
    assert create_mechanism("xoauth2", "u", "t", host="h", port=1).name == "XOAUTH2"
    assert create_mechanism("OAuthBearer", "u", "t", host="h", port=1).name == "OAUTHBEARER"
    with pytest.raises(ConfigurationError, match="unknown SASL mechanism"):
        create_mechanism("PLAIN", "u", "t", host="h", port=1)


def test_decode_error_challenge_google_style() -> None:
    payload = {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}
    challenge = decode_error_challenge(base64.b64encode(json.dumps(payload).encode()))
    assert challenge is not None
    assert challenge.status == "400" and challenge.scope == "https://mail.google.com/"
    assert "status=400" in challenge.describe()


def test_decode_error_challenge_rfc7628_style() -> None:
    payload = {"status": "invalid_token", "openid-configuration": "https://x/.well-known"}
    challenge = decode_error_challenge(base64.b64encode(json.dumps(payload).encode()).decode())
    assert challenge is not None
    assert challenge.status == "invalid_token"
    assert challenge.openid_configuration == "https://x/.well-known"


@pytest.mark.parametrize("raw", [b"", b"   "])
def test_empty_challenge_is_none(raw: bytes) -> None:
    assert decode_error_challenge(raw) is None


@given(st.binary())
def test_decode_error_challenge_never_raises(data: bytes) -> None:
    result = decode_error_challenge(data)
    assert result is None or isinstance(result.raw, str)


@given(st.binary())
def test_decode_error_challenge_of_base64_never_raises(data: bytes) -> None:
    decode_error_challenge(base64.b64encode(data))


@given(user=safe_text, token=safe_text)
def test_xoauth2_round_trips(user: str, token: str) -> None:
    raw = base64.b64decode(XOAuth2(user, token).initial_response_b64()).decode()
    assert raw == f"user={user}\x01auth=Bearer {token}\x01\x01"


@given(user=safe_text, token=safe_text, port=st.integers(1, 65535))
def test_oauthbearer_saslname_unescapes_to_the_user(user: str, token: str, port: int) -> None:
    raw = OAuthBearer(user, token, host="h", port=port).initial_response().decode()
    gs2, _, rest = raw.partition(",\x01")
    assert gs2.startswith("n,a=")
    name = gs2[4:]
    assert "," not in name
    assert name.replace("=2C", ",").replace("=3D", "=") == user
    assert rest.endswith(f"auth=Bearer {token}\x01\x01")


def test_fits_initial_response_limits() -> None:
    short = XOAuth2("u@example.com", "t" * 100)
    long = XOAuth2("u@example.com", "t" * 1500)  # a Microsoft-sized token
    assert fits_initial_response(b"AUTH XOAUTH2 ", short, SMTP_MAX_COMMAND_LINE)
    assert not fits_initial_response(b"AUTH XOAUTH2 ", long, SMTP_MAX_COMMAND_LINE)
    assert fits_initial_response(b"AUTH XOAUTH2 ", short, POP3_MAX_AUTH_LINE)
    assert not fits_initial_response(b"AUTH XOAUTH2 ", XOAuth2("u", "t" * 200), POP3_MAX_AUTH_LINE)
    exact = len(b"AUTH XOAUTH2 ") + len(short.initial_response_b64()) + 2
    assert fits_initial_response(b"AUTH XOAUTH2 ", short, exact)
    assert not fits_initial_response(b"AUTH XOAUTH2 ", short, exact - 1)
