"""Hypothesis fuzzing of every parser that reads what a server sends: the POP3
protocol, SASL error challenges, token endpoint responses, IMAP responses.

Only mailoauth's own errors may escape (``fuzz.targets.run`` swallows those and lets
anything else fail the test). Bytes are drawn both raw and from protocol-shaped
pieces, so that the parsers get past their first line. The same targets run for hours
under atheris (``fuzz/``). :data:`EXAMPLES` per target; the total is reported.
"""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import imap_parsers, pop3_protocol, run, sasl_challenge, token_response

EXAMPLES = 2000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

POP3_PIECES = st.sampled_from(
    [
        b"+OK",
        b"-ERR",
        b"+ ",
        b"+OK ready <1.2@host>\r\n",
        b"+OK logged in\r\n",
        b".",
        b"..",
        b"\r\n",
        b"\n",
        b"\r",
        b".\r\n",
        b"1 120\r\n",
        b"1 uid-1\r\n",
        b"2 3\r\n",
        b"SASL XOAUTH2 OAUTHBEARER\r\n",
        b"PIPELINING\r\n",
        b"[SYS/TEMP]",
        b"[AUTH]",
        b" ",
        b"99999999999999999999999",
        b"-1",
        b"\x00",
        b"\xff",
        base64.b64encode(json.dumps({"status": "401", "schemes": "bearer"}).encode()),
    ]
)
pop3_bytes = st.one_of(
    st.binary(max_size=512),
    st.builds(
        lambda first, parts: bytes([first]) + b"".join(parts),
        st.integers(0, 255),
        st.lists(POP3_PIECES | st.binary(max_size=8), max_size=60),
    ),
)


@FUZZ
@given(pop3_bytes)
def test_pop3_protocol(data: bytes) -> None:
    run(pop3_protocol, data)


# Flat JSON values: cheap to generate, and every field the parsers read is flat.
scalar = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
challenge_json = scalar | st.lists(scalar, max_size=3)
challenges = st.one_of(
    st.binary(max_size=300),
    challenge_json.map(lambda doc: base64.b64encode(json.dumps(doc).encode())),
    st.fixed_dictionaries(
        {"status": challenge_json, "schemes": challenge_json, "scope": challenge_json}
    ).map(lambda doc: base64.b64encode(json.dumps(doc).encode())),
    st.binary(max_size=200).map(base64.b64encode),
)


@FUZZ
@given(challenges)
def test_sasl_error_challenge(data: bytes) -> None:
    run(sasl_challenge, data)


token_docs = st.dictionaries(
    st.sampled_from(
        ["access_token", "token_type", "expires_in", "refresh_token", "scope", "error",
         "error_description", "device_code", "user_code", "verification_uri", "interval"]
    ) | st.text(max_size=6),
    challenge_json,
    max_size=8,
)  # fmt: skip
token_bodies = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda status, doc: status.to_bytes(2, "big") + json.dumps(doc).encode(),
        st.integers(0, 65535),
        token_docs,
    ),
)


@FUZZ
@given(token_bodies)
def test_token_response(data: bytes) -> None:
    run(token_response, data)


IMAP_PIECES = st.sampled_from(
    [
        b"* 1 FETCH (UID 5 FLAGS (\\Seen) RFC822.SIZE 12 BODY[] ",
        b"{3}",
        b"abc",
        b")",
        b"(",
        b"* SEARCH 1 2 3",
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b"* LIST () NIL Sent",
        b"* 3 EXISTS",
        b"* OK [UIDVALIDITY 7] ok",
        b"* OK [UIDNEXT 9] ok",
        b"* STATUS INBOX (MESSAGES 2 UNSEEN 1)",
        b"OK [APPENDUID 7 9] done",
        b"&AOk-",
        b"&-",
        b"&",
        b'"',
        b"\\",
        b"\r\n",
        b" ",
        b"99999999999999999999",
    ]
)
imap_bytes = st.one_of(
    st.binary(max_size=400),
    st.lists(IMAP_PIECES | st.binary(max_size=6), max_size=40).map(b"".join),
)


@FUZZ
@given(imap_bytes)
def test_imap_parsers(data: bytes) -> None:
    run(imap_parsers, data)
