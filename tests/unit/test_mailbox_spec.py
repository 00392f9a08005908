"""MailboxSpec: a secret-free mailbox description that round-trips through JSON."""

from __future__ import annotations

import pytest

from mailoauth import SecurityOptions
from mailoauth.errors import ConfigurationError
from mailoauth.poll import MailboxSpec, NewMessage


def spec(**changes: object) -> MailboxSpec:
    data: dict[str, object] = {
        "protocol": "imap",
        "host": "imap.example.com",
        "port": 993,
        "username": "alice@example.com",
        "credential": "alice",
    }
    data.update(changes)
    return MailboxSpec.from_json(data)


def test_defaults_and_key_match_mailbox() -> None:
    s = spec()
    assert s.security is SecurityOptions.AUTO
    assert s.key == "imap://alice@example.com@imap.example.com:993/INBOX"
    box = s.to_mailbox("token")
    assert box.key == s.key and box.port == 993 and box.folder == "INBOX"


def test_json_round_trip_keeps_every_field() -> None:
    s = spec(security="ssl_explicit", port=143, folder="Archive", timeout=5.0, key="k1")
    again = MailboxSpec.from_json(s.to_json())
    assert again == s
    assert again.security is SecurityOptions.SSL_EXPLICIT
    assert "token" not in str(s.to_json())


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"protocol": "smtp"}, "protocol"),
        ({"port": 0}, "port"),
        ({"port": "993"}, "port"),
        ({"security": "tls"}, "security must be one of"),
        ({"credential": ""}, "credential"),
        ({"protocol": "pop3", "folder": "Sent"}, "POP3"),
        ({"colour": "red"}, "unknown mailbox setting(s): colour"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_bad_values_are_refused_naming_the_field(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        spec(**changes)


def test_missing_keys_are_named() -> None:
    with pytest.raises(ConfigurationError, match="needs host, credential"):
        MailboxSpec.from_json({"protocol": "imap", "port": 1, "username": "u"})


def test_unreadable_cafile_is_a_configuration_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = spec(cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="cannot read cafile"):
        s.to_mailbox("token")


def test_dedupe_key_is_stable_and_distinct() -> None:
    a = NewMessage("m", b"x", uid=5, uidvalidity=7)
    assert a.dedupe_key == NewMessage("m", b"y", uid=5, uidvalidity=7, redelivered=True).dedupe_key
    assert a.dedupe_key != NewMessage("m", b"x", uid=6, uidvalidity=7).dedupe_key
    assert NewMessage("m", b"x", uidl="abc").dedupe_key == "m#uidl:abc"
    assert not a.redelivered
