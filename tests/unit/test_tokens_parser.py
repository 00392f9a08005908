"""The token response parser: defensive about every shape, raising only TokenErrors."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailoauth.errors import PermanentTokenError, TokenError, TransientTokenError
from mailoauth.tokens import AccessToken, parse_token_response
from mailoauth.tokens.responses import (
    DEFAULT_EXPIRES_IN,
    MAX_DESCRIPTION_CHARS,
    MAX_DEVICE_INTERVAL,
    MAX_EXPIRES_IN,
    parse_device_authorization,
    parse_expires_in,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
token_fields = st.sampled_from(
    ["access_token", "expires_in", "refresh_token", "scope", "error", "error_description"]
)
token_dicts = st.dictionaries(token_fields | st.text(max_size=8), json_values, max_size=7)
expires_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.from_regex(r"-?[0-9]{1,400}(\.[0-9]+)?(e[0-9]{1,4})?", fullmatch=True)
    | st.lists(st.integers(), max_size=2)
)


def _body(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=150, deadline=None)
@given(
    status=st.sampled_from([200, 201, 204, 301, 400, 401, 403, 404, 408, 429, 500, 503, 599]),
    doc=token_dicts,
)
def test_any_json_dict_gives_a_token_or_a_token_error(status: int, doc: dict[str, Any]) -> None:
    try:
        token = parse_token_response(status, _body(doc), now=NOW)
    except TokenError:
        return
    assert isinstance(token, AccessToken) and token.value
    assert token.expires_at is not None and token.expires_at > NOW


@settings(max_examples=300, deadline=None)
@given(value=expires_values)
def test_any_expires_in_value_parses(value: Any) -> None:
    token = parse_token_response(200, _body({"access_token": "a", "expires_in": value}), now=NOW)
    assert token.expires_at is not None
    seconds = (token.expires_at - NOW).total_seconds()
    assert 0 < seconds <= MAX_EXPIRES_IN


@settings(max_examples=200, deadline=None)
@given(status=st.integers(min_value=100, max_value=599), body=st.binary(max_size=200))
def test_any_bytes_give_a_token_or_a_token_error(status: int, body: bytes) -> None:
    with contextlib.suppress(TokenError):
        parse_token_response(status, body, now=NOW, content_type="text/html")
    with contextlib.suppress(TokenError):
        parse_device_authorization(status, body)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3599, 3599.0),
        ("3599", 3599.0),
        (" 60 ", 60.0),
        (1.5, 1.5),
        (None, DEFAULT_EXPIRES_IN),
        ("", DEFAULT_EXPIRES_IN),
        (True, DEFAULT_EXPIRES_IN),
        (0, DEFAULT_EXPIRES_IN),
        (-1, DEFAULT_EXPIRES_IN),
        (float("nan"), DEFAULT_EXPIRES_IN),
        (float("inf"), DEFAULT_EXPIRES_IN),
        (10**400, DEFAULT_EXPIRES_IN),
        (10**12, MAX_EXPIRES_IN),
        ({"a": 1}, DEFAULT_EXPIRES_IN),
    ],
)
def test_parse_expires_in(value: object, expected: float) -> None:
    assert parse_expires_in(value) == expected


def test_scope_list_and_refresh_token_are_read() -> None:
    token = parse_token_response(
        200,
        _body({"access_token": " at ", "scope": ["a", "b"], "refresh_token": "rt", "x": 1}),
        now=NOW,
    )
    assert token.value == "at" and token.scope == "a b" and token.refresh_token == "rt"
    assert token.issued_at == NOW


def test_error_description_is_shortened_and_cleaned() -> None:
    body = _body({"error": "invalid_grant", "error_description": "x\r\n" * 500})
    with pytest.raises(PermanentTokenError) as info:
        parse_token_response(400, body, now=NOW)
    assert info.value.error_description is not None
    assert len(info.value.error_description) <= MAX_DESCRIPTION_CHARS
    assert "\r" not in str(info.value) and "\n" not in str(info.value)


def test_graph_style_error_object() -> None:
    body = _body({"error": {"code": "invalid_client", "message": "AADSTS7000215: bad secret"}})
    with pytest.raises(PermanentTokenError, match="AADSTS7000215") as info:
        parse_token_response(401, body, now=NOW)
    assert info.value.error == "invalid_client"


def test_5xx_with_json_error_is_transient_and_keeps_status() -> None:
    with pytest.raises(TransientTokenError) as info:
        parse_token_response(503, _body({"error": "server_error"}), now=NOW)
    assert info.value.status_code == 503


def test_device_authorization_defaults_and_limits() -> None:
    auth = parse_device_authorization(
        200,
        _body(
            {
                "device_code": "dc",
                "user_code": "ABCD",
                "verification_url": "https://g.co/device",
                "interval": 10**6,
            }
        ),
    )
    assert auth.verification_uri == "https://g.co/device"
    assert "ABCD" in auth.message and auth.interval == MAX_DEVICE_INTERVAL
    assert "dc" not in repr(auth).replace("device", "")
    with pytest.raises(PermanentTokenError):
        parse_device_authorization(200, _body({"user_code": "x"}))
