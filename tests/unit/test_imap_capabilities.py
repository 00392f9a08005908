"""Capabilities volunteered with a command's OK spare the CAPABILITY round trip."""

from __future__ import annotations

from mailoauth.imap.session import _capabilities_sent


def test_untagged_capability_line() -> None:
    lines: list[bytes | bytearray] = [b"CAPABILITY IMAP4rev1 IDLE SASL-IR", b"Logged in"]
    assert _capabilities_sent(lines) == frozenset({"IMAP4rev1", "IDLE", "SASL-IR"})


def test_response_code_in_tagged_text() -> None:
    lines: list[bytes | bytearray] = [bytearray(b"[CAPABILITY IMAP4rev1 MOVE] Logged in")]
    assert _capabilities_sent(lines) == frozenset({"IMAP4rev1", "MOVE"})


def test_none_sent_means_ask() -> None:
    assert _capabilities_sent([b"Logged in"]) is None
    assert _capabilities_sent([]) is None
    assert _capabilities_sent([b"[CAPABILITYX] no"]) is None
