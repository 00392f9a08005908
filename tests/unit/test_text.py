"""The one control-character guard (refused in what we send) and the terminal escape
(applied to what we show), mailoauth/_util/text.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mailoauth
from mailoauth._util import text as _text
from mailoauth._util.text import (
    CONTROL_CHARACTERS,
    TERMINAL_UNSAFE,
    escape_controls,
    find_control,
    refuse_controls,
)
from mailoauth.errors import ConfigurationError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3 import Pop3Client
from mailoauth.sasl import OAuthBearer, XOAuth2, create_mechanism
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient

#: One of each kind: CR, LF, NUL (the old guard), the SASL separator, TAB, ESC, DEL,
#: NEL (``\x85``, a line break to str.splitlines), CSI, the Unicode line separator.
CONTROLS = ["\r", "\n", "\x00", "\x01", "\t", "\x1b", "\x7f", "\x85", "\x9b", "\u2028"]


def test_the_control_set_is_c0_del_c1_and_the_unicode_separators() -> None:
    expected = {chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]}
    assert set(CONTROL_CHARACTERS) == expected
    # Every character str.splitlines() breaks on is in it.
    assert {c for c in map(chr, range(0x3000)) if len(f"a{c}b".splitlines()) > 1} <= expected
    assert set(CONTROL_CHARACTERS) < set(TERMINAL_UNSAFE)
    assert "\u202e" in TERMINAL_UNSAFE  # RIGHT-TO-LEFT OVERRIDE


@pytest.mark.parametrize("bad", CONTROLS)
def test_refuse_controls_names_the_field_and_the_code_point_not_the_value(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        refuse_controls(f"secret-value{bad}x", "access token")
    message = str(info.value)
    assert "access token" in message
    assert f"U+{ord(bad):04X}" in message
    assert "position 12" in message
    assert "secret-value" not in message


def test_refuse_controls_passes_clean_text_and_allowed_characters() -> None:
    assert refuse_controls("user@example.com", "username") == "user@example.com"
    assert refuse_controls("a\tb", "search criterion", allow="\t") == "a\tb"
    with pytest.raises(ConfigurationError):
        refuse_controls("a\t\x01b", "search criterion", allow="\t")
    assert find_control("ünïcode ✓ text") is None


@given(st.text())
def test_refuse_controls_agrees_with_find_control(value: str) -> None:
    found = find_control(value)
    if found is None:
        assert refuse_controls(value, "x") == value
    else:
        with pytest.raises(ConfigurationError):
            refuse_controls(value, "x")


@pytest.mark.parametrize("bad", CONTROLS)
def test_sasl_mechanisms_refuse_every_control_character(bad: str) -> None:
    # \x01 in the username would forge a field: "user=a\x01auth=Bearer other\x01...".
    builds: list[Callable[[], object]] = [
        lambda: XOAuth2(f"a{bad}auth=Bearer forged", "token"),
        lambda: XOAuth2("user", f"tok{bad}en"),
        lambda: OAuthBearer(f"a{bad}b", "token", host="h", port=1),
        lambda: OAuthBearer("a", "token", host=f"h{bad}x", port=1),
        lambda: create_mechanism("XOAUTH2", f"a{bad}", "t", host="h", port=1),
    ]
    for build in builds:
        with pytest.raises(ConfigurationError, match=f"U\\+{ord(bad):04X}"):
            build()


CLIENTS: list[Any] = [ImapClient, Pop3Client, SmtpClient]


@pytest.mark.parametrize("bad", CONTROLS)
@pytest.mark.parametrize("cls", CLIENTS)
def test_clients_refuse_control_characters_in_username_and_host(cls: Any, bad: str) -> None:
    # Raised by the constructor: nothing can have been sent.
    with pytest.raises(ConfigurationError, match="username"):
        cls("mail.example.test", 993, f"u{bad}@example.test", "at-x", SecurityOptions.AUTO)
    with pytest.raises(ConfigurationError, match="host"):
        cls(f"mail{bad}.example.test", 993, "u@example.test", "at-x", SecurityOptions.AUTO)


@pytest.mark.parametrize("bad", CONTROLS)
def test_smtp_local_hostname_is_guarded_too(bad: str) -> None:
    # It goes on the EHLO line.
    with pytest.raises(ConfigurationError, match="local_hostname"):
        SmtpClient("h", 587, "u", "t", SecurityOptions.AUTO, local_hostname=f"me{bad}x")


def test_escape_controls_makes_one_inert_line() -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J\r✓ AUTH  ok\n\u202etxt.exe\x85\x9b31m"
    shown = escape_controls(hostile)
    assert not any(c in TERMINAL_UNSAFE for c in shown)
    assert shown == ("\\x1b]0;owned\\x07\\x1b[2J\\r✓ AUTH  ok\\n\\u202etxt.exe\\x85\\x9b31m")
    assert escape_controls("plain ünïcode ✓") == "plain ünïcode ✓"


@given(st.text())
def test_escape_controls_leaves_nothing_unsafe(text: str) -> None:
    assert not any(c in TERMINAL_UNSAFE for c in escape_controls(text))


# The copies the guard replaced looked like `any(c in value for c in "\r\n\x00")` or a
# tuple constant of those three characters. A new copy would drift from the one guard.
_AD_HOC_GUARD = re.compile(r"""in ["']\\r\\n|\(["']\\r["'], ["']\\n["']""")


def test_there_is_one_control_character_guard() -> None:
    package = Path(mailoauth.__file__).parent
    copies = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if "testing" not in path.parts and path.name != Path(_text.__file__).name
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _AD_HOC_GUARD.search(line)
    ]
    assert copies == [], f"use mailoauth._util.text.refuse_controls instead of: {copies}"
