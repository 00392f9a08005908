"""``mailoauth poll`` run as a process against real Dovecot: JSON lines on stdout,
restarts with the same state, ``--handler``, signals, config errors, the metrics
endpoint."""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import redis

from mailoauth.cli import main
from mailoauth.testing._process import free_ports
from mailoauth.testing.oauth_server import issued_secrets
from mailoauth.testing.redis_server import RedisServer
from tests.integration.conftest import MailServers, skip_or_fail

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


def credential_name(user: str) -> str:
    return user.split("@")[0]


def credentials_toml(ms: MailServers, users: list[str], env: dict[str, str]) -> str:
    """One credential per user (a refresh token read from the environment, which this
    fills in: a user's token is issued once, so every config shares it)."""
    parts = []
    for user in users:
        name = credential_name(user)
        env.setdefault(f"RT_{name}", ms.oauth.issue_refresh_token(user))
        parts.append(f"""
            [credentials.{name}]
            kind = "oauth2"
            token_url = "{ms.oauth.token_url}"
            client_id = "poll-cli"
            client_secret_env = "POLL_CLIENT_SECRET"
            refresh_token_env = "RT_{name}"
            """)
    return textwrap.dedent("".join(parts))


def mailbox_key(ms: MailServers, user: str, protocol: str = "imap") -> str:
    port = ms.dovecot.imaps_port if protocol == "imap" else ms.dovecot.pop3s_port
    return f"{protocol}://{user}@localhost:{port}/INBOX"


def mailboxes_toml(ms: MailServers, users: dict[str, str]) -> str:
    """One ``[[mailbox]]`` per user (``{user: "imap" | "pop3"}``), over TLS."""
    parts = []
    for user, protocol in users.items():
        port = ms.dovecot.imaps_port if protocol == "imap" else ms.dovecot.pop3s_port
        parts.append(f"""
            [[mailbox]]
            protocol = "{protocol}"
            host = "localhost"
            port = {port}
            username = "{user}"
            credential = "{credential_name(user)}"
            security = "ssl_implicit"
            cafile = "{ms.ca.files.ca}"
            """)
    return textwrap.dedent("".join(parts))


POLL_TABLE = """
[poll]
start = "all"
interval = 1
idle_timeout = 5
"""


def base_env() -> dict[str, str]:
    return {**os.environ, "PYTHONIOENCODING": "utf-8", "POLL_CLIENT_SECRET": CLIENT_SECRET}


def write_config(path: Path, ms: MailServers, users: dict[str, str]) -> dict[str, str]:
    """A config with one credential and one mailbox per user; the environment it
    needs."""
    env = base_env()
    path.write_text(credentials_toml(ms, list(users), env) + mailboxes_toml(ms, users) + POLL_TABLE)
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
import asyncio, json, os
from mailoauth.poll import NewMessage

async def record(event):
    with open(os.environ["HANDLED"], "a") as file:
        file.write(json.dumps({"type": type(event).__name__, "key": event.dedupe_key,
                               "subject": event.message()["subject"]}) + "\\n")

def explode(event):
    raise RuntimeError("handler failed on purpose")

async def hang(event):
    with open(os.environ["HANDLED"] + ".hang", "w") as file:
        file.write(event.dedupe_key)
    await asyncio.sleep(3600)
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

    # A handler that never returns: the first SIGTERM waits for it, a second does not.
    hanging = Worker(
        ["--config", str(config), "--state", str(state), "--handler", "pollhandlers:hang"],
        cwd=tmp_path,
        env=env,
    )
    workers.append(hanging)
    started = Path(f"{handled}.hang")
    deadline = time.monotonic() + WAIT
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), hanging.finish()[1]
    hanging.proc.send_signal(signal.SIGTERM)
    assert hanging.quiet(1.0) == [] and hanging.proc.poll() is None  # still waiting
    assert hanging.stop(signal.SIGTERM) == 1
    assert "SIGTERM again: stopping now" in hanging.finish()[1]

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
    assert samples[f'mailoauth_token_requests_total{{credential="{credential_name(user)}"}}'] == 1
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


# -- the fleet -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server.url


def fleet_status(redis: str, prefix: str, env: dict[str, str]) -> dict[str, Any]:
    """``mailoauth poll status --json``, run in this process (it is polled often)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["poll", "status", "--redis", redis, "--prefix", prefix, "--json"]) == 0
    status: dict[str, Any] = json.loads(out.getvalue())
    return status


def wait_for_status(
    redis: str, prefix: str, env: dict[str, str], what: str, check: Any
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        status = fleet_status(redis, prefix, env)
        if check(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"the fleet never got to: {what}; last status: {status}")
        time.sleep(0.2)


def held(status: dict[str, Any]) -> dict[str, int]:
    return {w["id"]: len(w["mailboxes"]) for w in status["workers"]}


def settled(workers: int, mailboxes: int) -> Any:
    def check(status: dict[str, Any]) -> bool:
        counts = held(status)
        return (
            len(counts) == workers
            and sum(counts.values()) == mailboxes
            and len(status["mailboxes"]) == mailboxes
            and max(counts.values()) - min(counts.values()) <= 1
        )

    return check


def collect(workers: list[Worker], count: int) -> list[tuple[Worker, dict[str, Any]]]:
    """The next ``count`` new_message events from any of ``workers``."""
    got: list[tuple[Worker, dict[str, Any]]] = []
    deadline = time.monotonic() + WAIT
    while len(got) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(got)} of {count} events came: {[e for _, e in got]}")
        for worker in workers:
            try:
                line = worker._out.get(timeout=0.05)
            except queue.Empty:
                continue
            assert line is not None, f"a worker ended: {worker.finish()[1]}"
            worker.stdout.append(line)
            event = json.loads(line)
            if event["event"] == "new_message":
                got.append((worker, event))
    return got


def test_fleet_workers_status_add_and_remove(
    mail_servers: MailServers, redis_url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    ms = mail_servers
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    users = [new_user() for _ in range(5)]
    first_four = {user: "imap" for user in users[:4]}
    env = base_env()
    credentials = credentials_toml(ms, users, env)
    worker_config = tmp_path / "w1.toml"
    worker_config.write_text(credentials + mailboxes_toml(ms, first_four) + POLL_TABLE)
    credentials_only = tmp_path / "w2.toml"
    credentials_only.write_text(credentials + POLL_TABLE)
    extra = tmp_path / "extra.toml"
    extra.write_text(credentials + mailboxes_toml(ms, {users[4]: "imap"}))
    fleet = ["--redis", redis_url, "--prefix", prefix, "--lease", "3"]

    w1 = Worker(
        ["--config", str(worker_config), *fleet, "--worker-id", "w1"], cwd=tmp_path, env=env
    )
    workers.append(w1)
    (port,) = free_ports(1)
    w2 = Worker(
        [
            "--config",
            str(credentials_only),
            *fleet,
            "--worker-id",
            "w2",
            "--metrics-port",
            f"{port}",
        ],
        cwd=tmp_path,
        env=env,
    )
    workers.append(w2)
    status = wait_for_status(redis_url, prefix, env, "2 workers, 4 mailboxes", settled(2, 4))
    assert held(status) == {"w1": 2, "w2": 2}  # leases even
    owner = {key: box["worker"] for key, box in status["mailboxes"].items()}
    assert set(owner) == {mailbox_key(ms, user) for user in first_four}

    for user in first_four:
        deliver(ms, user, f"one-{user}")
    got = collect([w1, w2], 4)
    assert sorted(e["subject"] for _, e in got) == sorted(f"one-{u}" for u in first_four)
    for worker, event in got:  # each reported by the worker holding its lease
        assert owner[event["mailbox"]] == ("w1" if worker is w1 else "w2")
        assert event["redelivered"] is False
    # The connections hold fleet-wide budget slots, and the tokens are in Redis, all
    # under the fleet's prefix.
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys(f"{prefix}:budget:*")
        assert client.keys(f"{prefix}:tokens:cred:*")
    finally:
        client.close()

    # Runtime add and remove, through the command.
    no_secrets = {k: v for k, v in env.items() if not k.startswith("RT_")}
    proc = run_poll(["add", *fleet[:4], "--config", str(extra)], tmp_path, no_secrets)
    assert proc.returncode == 0 and "added 1 mailbox(es)" in proc.stdout, proc.stderr
    wait_for_status(redis_url, prefix, env, "the added mailbox leased", settled(2, 5))
    deliver(ms, users[4], "added")
    ((_, added),) = collect([w1, w2], 1)
    assert added["subject"] == "added" and added["mailbox"] == mailbox_key(ms, users[4])
    removed = mailbox_key(ms, users[0])
    proc = run_poll(["remove", *fleet[:4], removed], tmp_path, env)
    assert proc.returncode == 0 and "removed 1 mailbox(es)" in proc.stdout, proc.stderr
    wait_for_status(redis_url, prefix, env, "the mailbox removed", settled(2, 4))
    proc = run_poll(["remove", *fleet[:4], "imap://nobody@x:1/INBOX"], tmp_path, env)
    assert proc.returncode == 1 and "no mailbox 'imap://nobody@x:1/INBOX'" in proc.stderr

    # A clean leave: w1's mailboxes go to w2 at once, and nothing is reported twice.
    assert w1.stop(signal.SIGTERM) == 0
    out1, err1 = w1.finish()
    wait_for_status(redis_url, prefix, env, "w2 holding everything", settled(1, 4))
    for user in users[1:]:
        deliver(ms, user, f"two-{user}")
    got = collect([w2], 4)
    assert sorted(e["subject"] for _, e in got) == sorted(f"two-{u}" for u in users[1:])
    assert all(e["redelivered"] is False for _, e in got)
    assert w2.quiet(2.0) == []  # neither the removed mailbox nor a repeat

    text = run_poll(["status", *fleet[:4]], tmp_path, env)
    assert text.returncode == 0
    assert "1 worker(s), 4 mailbox(es), 4 leased, 0 failed" in text.stdout
    assert "  w2  heartbeat" in text.stdout and removed not in text.stdout

    samples = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT).text)
    assert samples['mailoauth_fleet_lease_moves_total{direction="acquired"}'] >= 4
    assert samples["mailoauth_poll_mailboxes"] == 4
    assert samples['mailoauth_poll_events_total{event="new_message"}'] == len(
        [line for line in w2.stdout if '"new_message"' in line]
    )

    # A mailbox whose credential no worker has: its failure is in the status.
    ghost = tmp_path / "ghost.toml"
    ghost.write_text(
        '[credentials.ghost]\nkind = "oauth2"\ntoken_url = "http://127.0.0.1:9/t"\n'
        'client_id = "g"\nrefresh_token_env = "GHOST_RT"\n'
        + mailboxes_toml(ms, {"ghost@example.test": "imap"})
    )
    ghost_key = mailbox_key(ms, "ghost@example.test")
    assert run_poll(["add", *fleet[:4], "--config", str(ghost)], tmp_path, env).returncode == 0
    wait_for_status(
        redis_url,
        prefix,
        env,
        "the ghost mailbox failed",
        lambda status: (status["mailboxes"].get(ghost_key) or {}).get("failure"),
    )
    text = run_poll(["status", *fleet[:4]], tmp_path, env)
    assert f"{ghost_key}  worker w2" in text.stdout
    assert "FAILED: permanent: resolve failed: ConfigurationError: no credential 'ghost'" in (
        " ".join(text.stdout.split())
    )
    assert "1 failed" in text.stdout

    # Every credential was refreshed once by the fleet: the Redis token store.
    refreshes = Counter(
        form.get("refresh_token") for form in ms.oauth.token_forms if form.get("refresh_token")
    )
    assert [refreshes[env[f"RT_{credential_name(u)}"]] for u in users] == [1, 1, 1, 1, 1]

    assert w2.stop(signal.SIGINT) == 0
    out2, err2 = w2.finish()
    assert "fleet worker w2" in err2 and "SIGINT: stopping" in err2
    assert_no_secrets(out1, err1, out2, err2)


def test_fleet_takeover_after_sigkill_redelivers_the_unacknowledged_event(
    mail_servers: MailServers, redis_url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    ms = mail_servers
    prefix = f"kill{uuid.uuid4().hex[:8]}"
    user = new_user()
    env = base_env()
    credentials = credentials_toml(ms, [user], env)
    (tmp_path / "w1.toml").write_text(credentials + mailboxes_toml(ms, {user: "imap"}) + POLL_TABLE)
    (tmp_path / "w2.toml").write_text(credentials + POLL_TABLE)
    (tmp_path / "pollhandlers.py").write_text(HANDLER)
    env["HANDLED"] = str(tmp_path / "handled.jsonl")
    fleet = ["--redis", redis_url, "--prefix", prefix, "--lease", "2"]

    # w1 takes the event and never acknowledges it (its handler hangs), then dies.
    w1 = Worker(
        ["--config", "w1.toml", *fleet, "--worker-id", "w1", "--handler", "pollhandlers:hang"],
        cwd=tmp_path,
        env=env,
    )
    workers.append(w1)
    wait_for_status(redis_url, prefix, env, "w1 holding the mailbox", settled(1, 1))
    deliver(ms, user, "in-flight")
    started = tmp_path / "handled.jsonl.hang"
    deadline = time.monotonic() + WAIT
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    dedupe_key = started.read_text()
    w2 = Worker(["--config", "w2.toml", *fleet, "--worker-id", "w2"], cwd=tmp_path, env=env)
    workers.append(w2)
    w1.proc.kill()
    w1.proc.wait(timeout=WAIT)

    # w2 takes the mailbox over once w1's lease runs out, and says it is a repeat.
    (event,) = w2.new_messages(1)
    assert event["subject"] == "in-flight" and event["dedupe_key"] == dedupe_key
    assert event["redelivered"] is True
    deliver(ms, user, "after")
    (after,) = w2.new_messages(1)
    assert after["subject"] == "after" and after["redelivered"] is False
    assert w2.stop() == 0
    assert_no_secrets(*w2.finish())
