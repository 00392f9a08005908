"""What mailoauth knows about Google and Microsoft has one home (mailoauth/_providers.py),
which the other layers read and the old public names re-export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mailoauth
from mailoauth import _providers
from mailoauth._core import auth
from mailoauth.cli import diagnose
from mailoauth.testing import sandbox
from mailoauth.tokens import responses, scopes


def test_public_names_still_come_from_where_they_were() -> None:
    for name in scopes.__all__:
        assert getattr(scopes, name) is getattr(_providers, name)
    assert responses.VENDOR_HINTS is _providers.VENDOR_HINTS
    assert responses.vendor_of is _providers.vendor_of
    assert sandbox.PROVIDER_HOSTS is _providers.MAIL_HOSTS
    assert diagnose.DELEGATED_SCOPES is _providers.DELEGATED_PERMISSIONS
    assert diagnose.GRAPH_AUDIENCES is _providers.GRAPH_AUDIENCES
    assert _providers.GOOGLE_AUTHORIZATION_URL == "https://accounts.google.com/o/oauth2/v2/auth"
    assert auth._HINTS is _providers.AUTH_FAILURE_HINTS


def test_the_documented_scopes() -> None:
    # https://developers.google.com/gmail/xoauth2_protocol and Microsoft's "Authenticate
    # an IMAP, POP or SMTP connection using OAuth" (DESIGN.md, protocol facts).
    assert _providers.GOOGLE_MAIL_SCOPE == "https://mail.google.com/"
    assert _providers.MS_DELEGATED_SCOPES == (
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/POP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
    )
    assert _providers.MS_APP_ONLY_SCOPE == "https://outlook.office365.com/.default"
    for protocol, permission in _providers.DELEGATED_PERMISSIONS.items():
        assert f"{_providers.OUTLOOK_RESOURCE}/{permission}" in _providers.MS_DELEGATED_SCOPES
        assert permission in _providers.AUTH_FAILURE_HINTS[protocol]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("gmail.com", True),
        ("IMAP.Gmail.COM", True),
        ("imap.gmail.com.", True),
        ("evilgmail.com", False),
        ("gmail.com.evil.example", False),
        ("", False),
    ],
)
def test_host_in_matches_a_domain_and_its_subdomains_only(host: str, expected: bool) -> None:
    assert _providers.host_in(host, _providers.GOOGLE_DOMAINS) is expected


def test_every_mail_host_belongs_to_a_vendor() -> None:
    for hosts in _providers.MAIL_HOSTS.values():
        for host in hosts:
            assert _providers.host_in(host, _providers.GOOGLE_DOMAINS) or _providers.host_in(
                host, _providers.MICROSOFT_DOMAINS
            ), host


# Literals that are provider knowledge: a copy outside _providers would drift from it.
_KNOWLEDGE = re.compile(
    r"https://(mail\.google\.com|outlook\.office(365)?\.com|login\.microsoftonline\.com|"
    r"oauth2\.googleapis\.com|accounts\.google\.com)|AADSTS\d"
)


def test_provider_knowledge_is_written_once() -> None:
    package = Path(mailoauth.__file__).parent
    copies = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        # the fake servers imitate what the real ones send; docstrings show examples
        if path.name != "_providers.py" and "testing" not in path.parts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _KNOWLEDGE.search(line) and not line.lstrip().startswith(("#", "``", "(https"))
    ]
    assert copies == [], f"read these from mailoauth._providers instead: {copies}"
