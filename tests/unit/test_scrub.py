"""Scrubbing a SASL exchange's secrets out of server text (mailoauth/_core/scrub.py)."""

from __future__ import annotations

import base64
import contextlib
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailoauth._core.scrub import MIN_SECRET_FORM, REDACTED, SCRUBBED_LOGGERS, Scrubber
from mailoauth.errors import CommandError
from mailoauth.sasl import XOAuth2, decode_error_challenge

TOKEN = "ya29.a0AfH6SMBx-token-value_0123456789"


def readable(text: str) -> str:
    """``text`` plus everything any base64 run in it decodes to, at every offset."""
    out = [text]
    for word in text.replace("<", " ").replace(">", " ").split():
        for skip in range(4):
            chunk = word[skip:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            with contextlib.suppress(ValueError):
                out.append(base64.b64decode(chunk).decode("latin-1"))
    return "\n".join(out)


@given(prefix=st.binary(max_size=7), suffix=st.binary(max_size=7))
def test_the_token_is_scrubbed_from_any_base64_text_that_contains_it(
    prefix: bytes, suffix: bytes
) -> None:
    # A server echoing a longer line, base64-encoded at any alignment.
    echoed = base64.b64encode(prefix + TOKEN.encode() + suffix).decode()
    scrubbed = Scrubber(TOKEN).scrub(f"535 you sent {echoed} and {TOKEN}")
    assert TOKEN not in readable(scrubbed)
    assert REDACTED in scrubbed


def test_the_initial_response_goes_whole() -> None:
    mech = XOAuth2("u@example.com", TOKEN)
    b64 = mech.initial_response_b64().decode()
    scrubber = Scrubber(TOKEN, mech.initial_response())
    assert scrubber.scrub(f"NO you sent AUTHENTICATE XOAUTH2 {b64}") == (
        f"NO you sent AUTHENTICATE XOAUTH2 {REDACTED}"
    )
    raw = mech.initial_response().decode()
    assert TOKEN not in scrubber.scrub(f"-ERR {raw}")


def test_text_without_the_secret_is_unchanged_and_short_forms_are_not_used() -> None:
    scrubber = Scrubber(TOKEN, "abc")  # "abc" is shorter than MIN_SECRET_FORM
    assert len("abc") < MIN_SECRET_FORM
    text = "535 5.7.8 Error: authentication failed: abc"
    assert scrubber.scrub(text) == text


def test_challenge_fields_are_scrubbed() -> None:
    body = f'{{"status":"401","scope":"{TOKEN}","other":"{TOKEN}"}}'
    challenge = decode_error_challenge(base64.b64encode(body.encode()))
    assert challenge is not None
    clean = Scrubber(TOKEN).scrub_fields(challenge)
    assert TOKEN not in repr(clean)
    assert clean.status == "401"


def test_an_exception_chain_is_scrubbed_in_place() -> None:
    try:
        try:
            raise ValueError(f"server said {TOKEN}")
        except ValueError as inner:
            raise CommandError(f"refused: {TOKEN}", command="AUTH", reply=TOKEN) from inner
    except CommandError as exc:
        Scrubber(TOKEN).scrub_exception(exc)
        assert TOKEN not in str(exc) + repr(exc) + repr(vars(exc))
        assert TOKEN not in str(exc.__cause__)
        assert exc.reply == REDACTED


def test_an_exception_leaving_the_active_block_is_scrubbed() -> None:
    with pytest.raises(CommandError) as info, Scrubber(TOKEN).active():
        raise CommandError(f"echo {TOKEN}", command="AUTH", reply=TOKEN)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("name", SCRUBBED_LOGGERS)
def test_log_records_are_scrubbed_while_active_only(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger(name)
    caplog.set_level(logging.DEBUG, logger=name)
    scrubber = Scrubber(TOKEN)
    with scrubber.active():
        logger.debug("Received : %s", f"b'A1 NO {TOKEN}\\r\\n'")  # args
        logger.debug(f"Received : b'A1 NO {TOKEN}'")  # pre-formatted, as aioimaplib does
    logger.debug("after: %s", "x" * 3)
    messages = [r.getMessage() for r in caplog.records if r.name == name]
    assert len(messages) == 3
    assert all(TOKEN not in m for m in messages)
    assert sum(REDACTED in m for m in messages) == 2
