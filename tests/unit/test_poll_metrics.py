"""``mailoauth poll``'s parts that need no server: the JSON line of an event, the
metrics (and the error without the extra), the handler loader, the status report."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailoauth._core.dialer import DialResult
from mailoauth.cli import main
from mailoauth.cli.metrics import CountingDialer, PollMetrics
from mailoauth.cli.poll import (
    MAX_HEADER_BYTES,
    event_json,
    load_handler,
    safe_url,
    state_path,
    status_json,
    status_text,
)
from mailoauth.errors import ConfigurationError, MailConnectionError, PermanentTokenError
from mailoauth.poll import MailboxFailed, MailboxSpec, NewMessage
from mailoauth.poll.fleet import FleetStatus, WorkerStatus


def message(headers: str, body: str = "body\r\n") -> bytes:
    return (textwrap.dedent(headers).strip().replace("\n", "\r\n") + "\r\n\r\n" + body).encode()


def test_a_new_message_line_has_exactly_the_issue_keys() -> None:
    raw = message("""
        Received: from mx.example.com by imap.example.com; Wed, 02 Dec 2026 07:00:00 +0000
        Received: from client by mx.example.com; Wed, 02 Dec 2026 06:00:00 +0000
        Date: Wed, 02 Dec 2026 05:00:00 +0000
        Subject: =?utf-8?q?caf=C3=A9?= ok
        Message-ID: <m1@example.com>
        """)
    event = NewMessage("imap://a@h:993/INBOX", raw, uid=7, uidvalidity=3, redelivered=True)
    data, lag = event_json(event)
    assert data == {
        "event": "new_message",
        "mailbox": "imap://a@h:993/INBOX",
        "uid": 7,
        "uidvalidity": 3,
        "dedupe_key": "imap://a@h:993/INBOX#3:7",
        "redelivered": True,
        "message_id": "<m1@example.com>",
        "subject": "café ok",
        "size": len(raw),
    }
    # The newest Received: (the first one) is the arrival.
    arrival = dt.datetime(2026, 12, 2, 7, 0, tzinfo=dt.timezone.utc)
    expected = (dt.datetime.now(dt.timezone.utc) - arrival).total_seconds()
    assert lag is not None and abs(lag - expected) < 60


def test_odd_messages_still_make_one_line() -> None:
    raw = message("Subject: a\x1b]0;title\x07 b\nDate: not a date", "x" * 10)
    data, lag = event_json(NewMessage("pop3://a@h:995/INBOX", raw, uidl="U1"))
    line = json.dumps(data)
    assert "\n" not in line and "\x1b" not in line
    assert data["uid"] is None and data["dedupe_key"] == "pop3://a@h:995/INBOX#uidl:U1"
    assert data["message_id"] is None and lag is None
    headless, lag = event_json(NewMessage("k", b"no headers at all", uid=1, uidvalidity=1))
    assert headless["subject"] is None and headless["size"] == len(b"no headers at all")
    # Only the head is read, however large the message.
    huge = b"Subject: " + b"s" * (2 * MAX_HEADER_BYTES)
    assert event_json(NewMessage("k", huge, uid=1, uidvalidity=1))[0]["size"] == len(huge)
    now = email.utils.formatdate(localtime=False)
    _, lag = event_json(NewMessage("k", message(f"Date: {now}"), uid=1, uidvalidity=1))
    assert lag is not None and lag < 60


def test_a_failure_line() -> None:
    error = PermanentTokenError("invalid_grant: revoked", error="invalid_grant")
    data, lag = event_json(MailboxFailed("imap://a@h:993/INBOX", error, permanent=True))
    assert data == {
        "event": "mailbox_failed",
        "mailbox": "imap://a@h:993/INBOX",
        "permanent": True,
        "reason": "PermanentTokenError: invalid_grant: revoked",
    }
    assert lag is None


def test_metrics_count_what_happens() -> None:
    metrics = PollMetrics()
    metrics.observe(NewMessage("k", b"", uid=1, uidvalidity=1), lag=2.0)
    metrics.observe(NewMessage("k", b"", uid=2, uidvalidity=1, redelivered=True), lag=-1.0)
    metrics.observe(MailboxFailed("k", MailConnectionError("refused"), permanent=False))
    metrics.token_request("alice")
    metrics.watching({"a", "b"})
    metrics.watching({"b", "c", "d"})
    text = metrics.exposition().decode()
    for line in (
        'mailoauth_poll_events_total{event="new_message"} 2.0',
        'mailoauth_poll_events_total{event="mailbox_failed"} 1.0',
        "mailoauth_poll_redelivered_total 1.0",
        'mailoauth_poll_failures_total{permanent="false",reason="MailConnectionError"} 1.0',
        'mailoauth_token_requests_total{credential="alice"} 1.0',
        'mailoauth_fleet_lease_moves_total{direction="acquired"} 4.0',
        'mailoauth_fleet_lease_moves_total{direction="released"} 1.0',
        "mailoauth_poll_mailboxes 3.0",
        "mailoauth_poll_connections_open 0.0",
        "mailoauth_poll_delivery_lag_seconds_count 2.0",
        "mailoauth_poll_delivery_lag_seconds_sum 2.0",  # a negative lag counts as 0
    ):
        assert line in text, line


@pytest.mark.asyncio
async def test_the_counting_dialer_counts_open_sockets() -> None:
    made: list[socket.socket] = []

    class Inner:
        async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
            a, b = socket.socketpair()
            made.extend((a, b))
            return DialResult(a)

    dialer = CountingDialer(Inner())
    first = await dialer.connect("h", 1, timeout=1)
    await dialer.connect("h", 1, timeout=1)
    assert dialer.open_count() == 2
    first.sock.close()
    assert dialer.open_count() == 1
    for sock in made:
        sock.close()
    assert dialer.open_count() == 0


def test_without_the_extra_the_error_names_the_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'mailoauth\[metrics\]'"):
        PollMetrics()
    config = tmp_path / "c.toml"
    config.write_text("")
    assert main(["poll", "--config", str(config), "--metrics-port", "9"]) == 1
    assert "pip install 'mailoauth[metrics]'" in capsys.readouterr().err


def unwrapped(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr as one line (the command wraps its error paragraph)."""
    return " ".join(capsys.readouterr().err.split())


def test_option_mistakes_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("")
    assert main(["poll"]) == 1
    assert "needs --config FILE" in unwrapped(capsys)
    assert main(["poll", "--config", str(config), "--lease", "10"]) == 1
    assert "--lease only make sense with --redis" in unwrapped(capsys)
    argv = ["poll", "--config", str(config), "--redis", "redis://h", "--state", "s.json"]
    assert main(argv) == 1
    assert "with --redis, state is in Redis" in unwrapped(capsys)
    assert main(["poll", "--config", str(config), "--handler", "nocolon"]) == 1
    assert "--handler must be MODULE:FUNCTION" in unwrapped(capsys)
    assert main(["poll", "--config", str(config)]) == 1
    assert "has no [[mailbox]] table: nothing to watch" in unwrapped(capsys)


def test_handler_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "myhandlers.py").write_text(
        "class Box:\n    @staticmethod\n    def run(event):\n        return event\nVALUE = 3\n"
    )
    handler = load_handler("myhandlers:Box.run")
    assert handler("x") == "x"  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot import no_such_module_here"):
        load_handler("no_such_module_here:f")
    with pytest.raises(ConfigurationError, match="myhandlers has no 'missing'"):
        load_handler("myhandlers:missing")
    with pytest.raises(ConfigurationError, match="VALUE is not callable"):
        load_handler("myhandlers:VALUE")


def test_small_helpers() -> None:
    assert safe_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert safe_url("redis://user:s3cret@[::1]:6379") == "redis://user:***@[::1]:6379"
    assert safe_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert state_path(Path("/etc/mail/boxes.toml")) == Path("/etc/mail/boxes.state.json")


def test_status_report() -> None:
    spec = MailboxSpec("imap", "h", 993, "a@example.com", "alice")
    other = MailboxSpec("pop3", "h", 995, "b@example.com", "bob")
    status = FleetStatus(
        mailboxes=(spec.key, other.key),
        workers={"w1": WorkerStatus("w1", time.time(), (spec.key,))},
        leases={spec.key: "w1"},
        failures={other.key: "PermanentTokenError: invalid_grant"},
        lag={spec.key: 1.25, other.key: 0.0},
    )
    report = status_json(status, {spec.key: spec, other.key: other})
    assert report["workers"][0]["id"] == "w1" and report["workers"][0]["mailboxes"] == [spec.key]
    assert 0 <= report["workers"][0]["heartbeat_age"] < 60
    assert report["mailboxes"][spec.key] == {"worker": "w1", "lag": 1.25, "failure": None}
    assert report["mailboxes"][other.key]["failure"] == "PermanentTokenError: invalid_grant"
    text = "\n".join(status_text(report, "redis://cache", "mailoauth:fleet"))
    assert "1 worker(s), 2 mailbox(es), 1 leased, 1 failed" in text
    assert (
        f"{spec.key}  worker w1  lag 1.2 s" in text or f"{spec.key}  worker w1  lag 1.3 s" in text
    )
    assert "FAILED: PermanentTokenError" in text
