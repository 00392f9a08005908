"""ConnectionSettings: every check once, and the clients, Mailbox and watchers share it."""

from __future__ import annotations

import dataclasses
import math
import ssl
from types import SimpleNamespace
from typing import Any, cast

import pytest

from mailoauth import (
    ConfigurationError,
    ConnectionSettings,
    Dialer,
    DialResult,
    DirectDialer,
    ImapClient,
    InsecureTransportError,
    Mailbox,
    Pop3Client,
    SecurityOptions,
    SmtpClient,
)
from mailoauth._core import client_base
from mailoauth._core.settings import CONNECT_TIMEOUT_FACTOR, DEFAULT_MIN_RATE, DEFAULT_TIMEOUT
from mailoauth.poll import Backoff, LocalBudgets, Poller, PollLimits
from mailoauth.poll._common import WatchContext
from mailoauth.poll._imap import ImapWatcher
from mailoauth.poll._pop3 import Pop3Watcher

CLIENTS = (SmtpClient, ImapClient, Pop3Client)


class NullDialer:
    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
        raise OSError("not dialling in a unit test")


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"host": ""}, "host"),
        ({"host": "two words"}, "host"),
        ({"host": "evil\r\nhost"}, "host"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": True}, "port"),
        ({"port": "993"}, "port"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"min_rate": 0}, "min_rate"),
        ({"min_rate": math.inf}, "min_rate"),
        ({"min_rate": True}, "min_rate"),
        ({"mechanism": "PLAIN"}, "mechanism"),
        ({"dialer": object()}, "dialer"),
        ({"security": "ssl"}, "security"),
    ],
)
def test_each_check_names_its_argument(changes: dict[str, Any], names: str) -> None:
    base: dict[str, Any] = {"host": "imap.example.test", "port": 993}
    with pytest.raises(ConfigurationError, match=names):
        ConnectionSettings(**{**base, **changes})


def test_plaintext_needs_consent() -> None:
    with pytest.raises(InsecureTransportError):
        ConnectionSettings("mail.example.test", 143, SecurityOptions.NONE)
    ok = ConnectionSettings(
        "mail.example.test", 143, SecurityOptions.NONE, allow_insecure_auth=True
    )
    assert not ok.plan.encrypted


def test_defaults_and_derived_values() -> None:
    s = ConnectionSettings("imap.example.test", 993)
    assert s.security is SecurityOptions.AUTO and s.plan.implicit_tls
    assert (s.timeout, s.min_rate, s.dialer) == (DEFAULT_TIMEOUT, DEFAULT_MIN_RATE, None)
    assert s.effective_connect_timeout == CONNECT_TIMEOUT_FACTOR * DEFAULT_TIMEOUT
    assert s.replace(connect_timeout=5).effective_connect_timeout == 5
    assert s.replace(timeout=math.inf).timeout == math.inf  # "no deadline" stays allowed
    with pytest.raises(ConfigurationError, match="port"):
        s.replace(port=0)  # a variant is checked again
    # The constants the clients documented stay importable where they were.
    assert client_base.DEFAULT_TIMEOUT == DEFAULT_TIMEOUT
    assert client_base.DEFAULT_MIN_RATE == DEFAULT_MIN_RATE


def test_repr_and_equality_leave_out_context_and_dialer() -> None:
    ctx = ssl.create_default_context()
    a = ConnectionSettings("imap.example.test", 993, ssl_context=ctx, dialer=NullDialer())
    b = ConnectionSettings("imap.example.test", 993)
    assert a == b
    assert "SSLContext" not in repr(a)


@pytest.mark.parametrize("cls", CLIENTS)
def test_clients_check_through_settings(cls: type[SmtpClient | ImapClient | Pop3Client]) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        cls("mail.example.test", 993, "u", "t", timeout=0)
    with pytest.raises(ConfigurationError, match="username"):
        cls("mail.example.test", 993, "", "t")


@pytest.mark.parametrize("cls", CLIENTS)
def test_old_keyword_form_and_from_settings_agree(
    cls: type[SmtpClient | ImapClient | Pop3Client],
) -> None:
    ctx = ssl.create_default_context()
    dialer = NullDialer()
    old = cls(
        "mail.example.test",
        465,
        "u",
        "t",
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=ctx,
        timeout=7,
        connect_timeout=9,
        min_rate=2048,
        mechanism="XOAUTH2",
        dialer=dialer,
    )
    settings = ConnectionSettings(
        "mail.example.test",
        465,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=ctx,
        timeout=7,
        connect_timeout=9,
        min_rate=2048,
        mechanism="XOAUTH2",
        dialer=dialer,
    )
    new = cls.from_settings(settings, "u", "t")
    assert new.settings is settings  # used as given, not copied
    assert old.settings == settings
    for client in (old, new):
        assert (client.host, client.port, client.timeout, client.connect_timeout) == (
            "mail.example.test",
            465,
            7,
            9,
        )
        assert client.ssl_context is ctx and client.dialer is dialer
        assert client.min_rate == 2048.0 and client.mechanism == "XOAUTH2"


def test_from_settings_passes_client_options() -> None:
    settings = ConnectionSettings("pop.example.test", 995)
    pop = Pop3Client.from_settings(settings, "u", "t", max_message_size=1000)
    assert pop.max_message_size == 1000
    smtp = SmtpClient.from_settings(
        settings.replace(host="smtp.example.test", port=587), "u", "t", local_hostname="me"
    )
    assert smtp.local_hostname == "me"
    with pytest.raises(TypeError, match="no_such_option"):
        ImapClient.from_settings(settings, "u", "t", no_such_option=1)
    with pytest.raises(TypeError, match=r"timeout: set them on the settings"):
        ImapClient.from_settings(settings, "u", "t", timeout=5)  # would be ignored


def test_the_default_dialer_is_direct() -> None:
    assert isinstance(DirectDialer(), Dialer)
    assert ImapClient("imap.example.test", 993, "u", "t").dialer is None


def _ctx(mailbox: Mailbox) -> WatchContext:
    return cast(WatchContext, SimpleNamespace(mailbox=mailbox, tokens="token"))


def test_mailbox_old_fields_make_its_settings() -> None:
    ctx = ssl.create_default_context()
    box = Mailbox("imap", "imap.example.test", 993, "u", "t", ssl_context=ctx, timeout=5)
    assert box.settings == ConnectionSettings("imap.example.test", 993, timeout=5)
    assert box.settings.ssl_context is ctx
    with pytest.raises(ConfigurationError, match="port"):
        Mailbox("imap", "imap.example.test", 0, "u", "t")


def test_mailbox_from_settings_and_the_watchers_build_clients_from_it() -> None:
    settings = ConnectionSettings("mail.example.test", 993, timeout=4, dialer=NullDialer())
    imap_box = Mailbox.from_settings("imap", settings, "u", "t", folder="Archive")
    assert imap_box.settings is settings
    assert (imap_box.host, imap_box.port, imap_box.timeout) == ("mail.example.test", 993, 4)
    assert imap_box.key == "imap://u@mail.example.test:993/Archive"
    assert ImapWatcher(_ctx(imap_box))._client().settings is settings

    pop_box = Mailbox.from_settings(
        "pop3", settings.replace(port=995), "u", "t", max_message_size=9
    )
    client = Pop3Watcher(_ctx(pop_box))._client()
    assert client.settings is pop_box.settings and client.max_message_size == 9
    assert client.dialer is settings.dialer


def test_mailbox_replace_of_a_field_changes_its_settings() -> None:
    dialer = NullDialer()
    box = Mailbox.from_settings(
        "imap", ConnectionSettings("m.example.test", 993, dialer=dialer), "u", "t"
    )
    other = dataclasses.replace(box, timeout=3, port=1993)
    assert (other.settings.timeout, other.settings.port) == (3, 1993)
    assert other.settings.dialer is dialer  # what was not replaced stays
    assert dataclasses.replace(box, folder="Sent").settings is box.settings


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_per_host": 1.5}, "max_per_host"),
        ({"max_per_account": 0}, "max_per_account"),
        ({"max_per_account": True}, "max_per_account"),
    ],
)
def test_poll_limits_check_each_limit(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigurationError, match=names):
        PollLimits(**kwargs)
    assert PollLimits(max_per_account=None).max_per_account is None


def test_backoff_checks_its_order() -> None:
    with pytest.raises(ConfigurationError, match="backoff_base <= backoff_max"):
        Backoff(base=5, max=1)
    with pytest.raises(ConfigurationError, match="0 <= backoff_base"):
        Backoff(base=-1)


@pytest.mark.asyncio
async def test_poller_takes_grouped_limits_and_backoff_or_the_old_keywords() -> None:
    grouped = Poller(limits=PollLimits(7, 3, 2), backoff=Backoff(0.5, 9))
    loose = Poller(
        max_connections=7, max_per_host=3, max_per_account=2, backoff_base=0.5, backoff_max=9
    )
    for poller in (grouped, loose):
        assert poller.limits == PollLimits(7, 3, 2) and poller.backoff == Backoff(0.5, 9)
        assert (poller.max_per_host, poller.max_per_account) == (3, 2)
        assert (poller.backoff_base, poller.backoff_max) == (0.5, 9)
        assert isinstance(poller.budgets, LocalBudgets) and poller.budgets.limits == poller.limits
    assert Poller().limits == PollLimits() and Poller().backoff == Backoff()
    with pytest.raises(ConfigurationError, match="either limits= or max_per_host"):
        Poller(limits=PollLimits(), max_per_host=2)
    with pytest.raises(ConfigurationError, match="either backoff= or backoff_max"):
        Poller(backoff=Backoff(), backoff_max=2)
    with pytest.raises(ConfigurationError, match="max_connections"):
        Poller(max_connections=0)  # the old keyword is checked by the group object
    with pytest.raises(TypeError, match="max_conections"):
        Poller(max_conections=3)  # type: ignore[call-arg]
