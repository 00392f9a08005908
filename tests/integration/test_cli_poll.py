"""``mailoauth poll`` run as a process against real Dovecot: JSON lines on stdout,
restarts with the same state, ``--handler``, signals, config errors, the metrics
endpoint."""

from __future__ import annotations

import email.utils
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from mailoauth.testing._process import free_ports
from mailoauth.testing.oauth_server import issued_secrets
from tests.integration.conftest import MailServers

WAIT = 30.0  # seconds an expected line may take (loaded, shared CI machines)
#: The keys of each event's JSON line (issue 12's contract).
NEW_MESSAGE_KEYS = {
    "event", "mailbox", "uid", "uidvalidity", "dedupe_key", "redelivered", "message_id",
    "subject", "size",
}  # fmt: skip
FAILED_KEYS = {"event", "mailbox", "permanent", "reason"}
CLIENT_SECRET = "poll-cli-client-secret-" + uuid.uuid4().hex


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class Worker:
    """A ``mailoauth poll`` process whose stdout and stderr are read as they come."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailoauth.cli", "poll", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._out: queue.Queue[str | None] = queue.Queue()
        self._err: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()

    def _drain_stderr(self) -> None:
        while True:
            try:
                line = self._err.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.stderr.append(line)

    def next_event(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next JSON line on stdout (fails after ``timeout`` or at end of output)."""
        try:
            line = self._out.get(timeout=timeout)
        except queue.Empty:
            self._drain_stderr()
            pytest.fail(f"no event within {timeout} s; stderr:\n{''.join(self.stderr)}")
        if line is None:
            self._drain_stderr()
            pytest.fail(f"the worker ended (status {self.proc.poll()}):\n{''.join(self.stderr)}")
        self.stdout.append(line)
        event: dict[str, Any] = json.loads(line)
        return event

    def new_messages(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` new_message events (a failure event fails the test)."""
        got: list[dict[str, Any]] = []
        while len(got) < count:
            event = self.next_event()
            assert event["event"] == "new_message", event
            got.append(event)
        return got

    def quiet(self, seconds: float) -> list[str]:
        """Lines printed within ``seconds`` (none expected)."""
        try:
            line = self._out.get(timeout=seconds)
        except queue.Empty:
            return []
        return [] if line is None else [line]

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``; the exit status."""
        self.proc.send_signal(signum)
        try:
            status = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the worker ignored {signal.Signals(signum).name}")
        return status

    def finish(self) -> tuple[str, str]:
        """Wait for the end of both streams: (stdout, stderr) in full."""
        self.proc.wait(timeout=WAIT)
        while (line := self._out.get(timeout=WAIT)) is not None:
            self.stdout.append(line)
        while (line := self._err.get(timeout=WAIT)) is not None:
            self.stderr.append(line)
        return "".join(self.stdout), "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def assert_no_secrets(*texts: str) -> None:
    for secret in [*issued_secrets(), CLIENT_SECRET]:
        for text in texts:
            assert secret not in text


def new_user() -> str:
    return f"pc{uuid.uuid4().hex[:10]}@example.test"


def deliver(ms: MailServers, user: str, subject: str) -> None:
    ms.dovecot.deliver(
        user,
        f"From: a@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n"
        f"Date: {email.utils.formatdate(time.time() - 5)}\r\n\r\nbody of {subject}\r\n",
    )


def write_config(
    path: Path, ms: MailServers, users: dict[str, str], *, extra: str = ""
) -> dict[str, str]:
    """A config with one credential (a refresh token, read from the environment) and
    one mailbox per user (``{user: "imap" | "pop3"}``); the environment it needs."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "POLL_CLIENT_SECRET": CLIENT_SECRET}
    parts = []
    for number, (user, protocol) in enumerate(users.items()):
        env[f"POLL_RT_{number}"] = ms.oauth.issue_refresh_token(user)
        port = ms.dovecot.imaps_port if protocol == "imap" else ms.dovecot.pop3s_port
        parts.append(f"""
            [credentials.user{number}]
            kind = "oauth2"
            token_url = "{ms.oauth.token_url}"
            client_id = "poll-cli"
            client_secret_env = "POLL_CLIENT_SECRET"
            refresh_token_env = "POLL_RT_{number}"

            [[mailbox]]
            protocol = "{protocol}"
            host = "localhost"
            port = {port}
            username = "{user}"
            credential = "user{number}"
            security = "ssl_implicit"
            cafile = "{ms.ca.files.ca}"
            """)
    poll = """
        [poll]
        start = "all"
        interval = 1
        idle_timeout = 5
        """
    path.write_text(textwrap.dedent("".join(parts)) + textwrap.dedent(poll) + extra)
    return env


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def test_json_lines_then_a_restart_reports_nothing_twice(
    mail_servers: MailServers, tmp_path: Path, workers: list[Worker]
) -> None:
    ms = mail_servers
    imap_user, pop3_user = new_user(), new_user()
    config = tmp_path / "mailboxes.toml"
    env = write_config(config, ms, {imap_user: "imap", pop3_user: "pop3"})
    deliver(ms, imap_user, "before-imap")
    deliver(ms, pop3_user, "before-pop3")

    first = Worker(["--config", str(config)], cwd=tmp_path, env=env)
    workers.append(first)
    events = first.new_messages(2)
    by_subject = {e["subject"]: e for e in events}
    assert set(by_subject) == {"before-imap", "before-pop3"}
    imap_event = by_subject["before-imap"]
    assert set(imap_event) == NEW_MESSAGE_KEYS
    assert imap_event["mailbox"] == f"imap://{imap_user}@localhost:{ms.dovecot.imaps_port}/INBOX"
    assert isinstance(imap_event["uid"], int) and isinstance(imap_event["uidvalidity"], int)
    assert imap_event["dedupe_key"] == (
        f"{imap_event['mailbox']}#{imap_event['uidvalidity']}:{imap_event['uid']}"
    )
    assert imap_event["redelivered"] is False
    assert imap_event["message_id"] == "<before-imap@example.test>"
    assert imap_event["size"] > len("body of before-imap")
    pop3_event = by_subject["before-pop3"]
    assert set(pop3_event) == NEW_MESSAGE_KEYS
    assert pop3_event["uid"] is None and pop3_event["dedupe_key"].startswith(f"pop3://{pop3_user}@")

    deliver(ms, imap_user, "while-running")
    (live,) = first.new_messages(1)
    assert live["subject"] == "while-running" and live["uid"] > imap_event["uid"]
    assert first.stop(signal.SIGTERM) == 0
    out, err = first.finish()
    assert "SIGTERM: stopping" in err
    assert (tmp_path / "mailboxes.state.json").exists()  # the default state file

    # Restarted with the same state: only what arrived meanwhile.
    deliver(ms, imap_user, "while-stopped")
    second = Worker(["--config", str(config)], cwd=tmp_path, env=env)
    workers.append(second)
    (again,) = second.new_messages(1)
    assert again["subject"] == "while-stopped"
    assert second.quiet(3.0) == []
    assert second.stop(signal.SIGINT) == 0
    out2, err2 = second.finish()
    assert_no_secrets(out, err, out2, err2)


HANDLER = """
import json, os
from mailoauth.poll import NewMessage

async def record(event):
    with open(os.environ["HANDLED"], "a") as file:
        file.write(json.dumps({"type": type(event).__name__, "key": event.dedupe_key,
                               "subject": event.message()["subject"]}) + "\\n")

def explode(event):
    raise RuntimeError("handler failed on purpose")
"""


def test_handler_is_awaited_and_acknowledges_only_when_it_returns(
    mail_servers: MailServers, tmp_path: Path, workers: list[Worker]
) -> None:
    ms = mail_servers
    user = new_user()
    config = tmp_path / "box.toml"
    env = write_config(config, ms, {user: "imap"})
    (tmp_path / "pollhandlers.py").write_text(HANDLER)
    handled = tmp_path / "handled.jsonl"
    env["HANDLED"] = str(handled)
    state = tmp_path / "custom-state.json"
    deliver(ms, user, "first")

    # A handler that raises: status 1, the event left unacknowledged.
    failing = Worker(
        ["--config", str(config), "--state", str(state), "--handler", "pollhandlers:explode"],
        cwd=tmp_path,
        env=env,
    )
    workers.append(failing)
    out, err = failing.finish()
    assert failing.proc.returncode == 1
    assert out == ""
    assert "pollhandlers:explode raised" in err and "handler failed on purpose" in err

    # The next start reports it again, to a handler that returns: acknowledged.
    good = Worker(
        ["--config", str(config), "--state", str(state), "--handler", "pollhandlers:record"],
        cwd=tmp_path,
        env=env,
    )
    workers.append(good)
    deadline = time.monotonic() + WAIT
    while not handled.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    deliver(ms, user, "second")
    while (
        len(handled.read_text().splitlines() if handled.exists() else []) < 2
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    records = [json.loads(line) for line in handled.read_text().splitlines()]
    assert [r["subject"] for r in records] == ["first", "second"]
    assert all(r["type"] == "NewMessage" for r in records)
    assert good.stop() == 0
    out, err = good.finish()
    assert out == ""  # the handler replaces printing
    assert state.exists() and not (tmp_path / "box.state.json").exists()

    # Both were acknowledged: a third start reports nothing.
    third = Worker(["--config", str(config), "--state", str(state)], cwd=tmp_path, env=env)
    workers.append(third)
    assert third.quiet(3.0) == []
    assert third.stop() == 0
    assert_no_secrets(out, err, *third.finish())


def run_poll(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailoauth.cli", "poll", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def test_config_errors_name_file_table_and_key_and_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    secret_rt = "rt-inline-" + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "MISSING_RT"}
    config.write_text(
        textwrap.dedent(f"""
        [credentials.alice]
        kind = "oauth2"
        token_url = "http://127.0.0.1:9/token"
        client_id = "x"
        client_secret = "{CLIENT_SECRET}"
        refresh_token_env = "MISSING_RT"
        """)
    )
    proc = run_poll(["--config", str(config)], tmp_path, env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert str(config) in proc.stderr
    assert "[credentials.alice] refresh_token_env" in proc.stderr
    assert "MISSING_RT is not set" in proc.stderr

    config.write_text(
        textwrap.dedent(f"""
        [credentials.alice]
        kind = "oauth2"
        token_url = "http://127.0.0.1:9/token"
        client_id = "x"
        refresh_token = "{secret_rt}"

        [[mailbox]]
        protocol = "imap"
        host = "imap.example.com"
        port = "993"
        username = "alice@example.com"
        credential = "alice"
        """)
    )
    proc = run_poll(["--config", str(config)], tmp_path, env)
    assert proc.returncode == 1
    assert "[[mailbox]] #1" in proc.stderr and "port must be an int" in proc.stderr
    for text in (proc.stdout, proc.stderr):
        assert secret_rt not in text and CLIENT_SECRET not in text


def test_metrics_endpoint_is_scraped_over_loopback(
    mail_servers: MailServers, tmp_path: Path, workers: list[Worker]
) -> None:
    ms = mail_servers
    user = new_user()
    config = tmp_path / "metered.toml"
    env = write_config(config, ms, {user: "imap"})
    (port,) = free_ports(1)
    deliver(ms, user, "metered")
    worker = Worker(["--config", str(config), "--metrics-port", str(port)], cwd=tmp_path, env=env)
    workers.append(worker)
    (event,) = worker.new_messages(1)
    assert event["subject"] == "metered"
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT)
    assert response.status_code == 200
    samples = parse_metrics(response.text)
    assert samples['mailoauth_poll_events_total{event="new_message"}'] == 1
    assert samples['mailoauth_poll_events_total{event="mailbox_failed"}'] == 0
    assert samples['mailoauth_token_requests_total{credential="user0"}'] == 1
    assert samples["mailoauth_poll_connections_open"] == 1  # the IDLE connection
    assert samples["mailoauth_poll_mailboxes"] == 1
    assert samples["mailoauth_poll_delivery_lag_seconds_count"] == 1
    assert samples["mailoauth_poll_delivery_lag_seconds_sum"] > 0
    assert worker.stop() == 0
    out, err = worker.finish()
    assert f"metrics on http://127.0.0.1:{port}/metrics" in err
    assert_no_secrets(out, err, response.text)


def parse_metrics(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of Prometheus's text format."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
