"""A fleet of worker processes on real Redis and Dovecot, mail arriving through Postfix.

Three workers (tests/integration/fleet_worker.py) share 300 IMAP mailboxes while mail
is submitted to Postfix throughout; one worker is killed with SIGKILL, one is added,
one is stopped with SIGTERM. Every message delivered is reported at least once, a
repeat only with ``redelivered=True``; the leases end even within one; each credential
is refreshed once for the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import json
import os
import random
import shutil
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailoauth.poll import MailboxSpec
from mailoauth.poll.fleet import Fleet, FleetStatus
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.redis_server import RedisServer
from tests.integration.conftest import MailServers, skip_or_fail

pytestmark = pytest.mark.asyncio

ROOT = str(Path(__file__).resolve().parents[2])
MAILBOXES = 300
LEASE = 6.0
#: Bounds the whole test: its steps together take well under this.
TOTAL = 170.0
STEP = 70.0  # the most any one step may take (loaded CI machines)
#: IDLE rounds of 3 s: past 128 IDLE sessions Dovecot stops using inotify and looks for
#: new mail only every mailbox_idle_check_interval (REAL_SERVERS.md); the search at the
#: end of each round is the safety net. No per-host cap: every mailbox is on localhost.
POLLER = {"interval": 2.0, "idle_timeout": 3.0, "max_connections": 400, "max_per_host": 400}
CLIENT_ID = "fleet-processes"
CLIENT_SECRET = "cs-fleet-processes-secret"


class Worker:
    """A worker process and the JSON lines it printed."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            self.lines.append(line)
            if line["event"] == "ready":
                self.ready.set()

    def messages(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == "new_message"]


async def spawn(name: str, config: Path, log_dir: Path) -> Worker:
    err = (log_dir / f"{name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.fleet_worker",
        str(config),
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=err,
        env={**os.environ, "PYTHONPATH": ROOT},
        cwd=ROOT,
    )
    err.close()
    worker = Worker(name, proc)
    await asyncio.wait_for(worker.ready.wait(), STEP)
    return worker


def counts(status: FleetStatus) -> dict[str, int]:
    return {w: len(s.keys) for w, s in status.workers.items()}


async def settle(fleet: Fleet, workers: set[str]) -> FleetStatus:
    """Wait until exactly ``workers`` hold every mailbox, within one of even."""
    status = await fleet.status()
    async with asyncio.timeout(STEP):
        while not (set(status.workers) == workers and not status.unleased and status.spread() <= 1):
            await asyncio.sleep(0.2)
            status = await fleet.status()
    return status


async def until_reported(workers: list[Worker], sent: set[tuple[str, str]]) -> None:
    async with asyncio.timeout(STEP):
        while True:
            if sent <= {(m["mailbox"], m["subject"]) for w in workers for m in w.messages()}:
                return
            await asyncio.sleep(0.2)


async def until_baselines(fleet: Fleet, specs: list[MailboxSpec]) -> None:
    """Every mailbox has its starting point (start="new") saved."""
    states = [fleet.keys.state(s.key) for s in specs]
    async with asyncio.timeout(STEP):
        while True:
            if await fleet._redis.exists(*states) == len(states):
                return
            await asyncio.sleep(0.2)


class Sender:
    """Submits mail to Postfix, one message at a time to a random mailbox, until
    stopped; :attr:`sent` holds (mailbox key, subject) of each accepted message."""

    def __init__(self, ms: MailServers, specs: list[MailboxSpec]) -> None:
        self.ms = ms
        self.specs = specs
        self.sent: set[tuple[str, str]] = set()
        self._stop = asyncio.Event()
        self._rng = random.Random(12)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        sender = f"s{uuid.uuid4().hex[:8]}@example.test"
        async with SmtpClient(
            "localhost",
            self.ms.postfix.submission_port,
            sender,
            self.ms.token(sender),
            SecurityOptions.SSL_EXPLICIT,
            ssl_context=self.ms.client_context(),
        ) as smtp:
            n = 0
            while not self._stop.is_set():
                spec = self._rng.choice(self.specs)
                n += 1
                msg = email.message.EmailMessage()
                msg["From"] = sender
                msg["To"] = spec.username
                msg["Subject"] = f"m{n}"
                msg.set_content("fleet")
                await smtp.send_message(msg)
                self.sent.add((spec.key, f"m{n}"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.05)

    async def stop(self) -> set[tuple[str, str]]:
        self._stop.set()
        await asyncio.wait_for(self.task, STEP)
        return set(self.sent)


@contextlib.asynccontextmanager
async def fleet_processes(
    ms: MailServers, tmp: Path
) -> AsyncIterator[tuple[Fleet, Path, list[MailboxSpec]]]:
    """A Redis, a fleet on it, the workers' config file and the mailboxes to add."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as redis:
        async with Fleet(redis.url, prefix="procs") as fleet:
            # No add_client: registering one on the session's server would make it refuse
            # every other test's client. Token requests are told apart by client_id.
            refresh_tokens = {}
            specs = []
            for _ in range(MAILBOXES):
                user = f"p{uuid.uuid4().hex[:10]}@example.test"
                refresh_tokens[user] = ms.oauth.issue_refresh_token(user, client_id=CLIENT_ID)
                spec = MailboxSpec(
                    "imap",
                    "localhost",
                    ms.dovecot.imaps_port,
                    user,
                    user,
                    SecurityOptions.SSL_IMPLICIT,
                    cafile=str(ms.ca.files.ca),
                )
                specs.append(spec)
            config = tmp / "fleet.json"
            config.touch(mode=0o600)
            config.write_text(
                json.dumps(
                    {
                        "redis": redis.url,
                        "prefix": "procs",
                        "lease": LEASE,
                        "poller": POLLER,
                        "token_url": ms.oauth.token_url,
                        "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET,
                        "refresh_tokens": refresh_tokens,
                    }
                )
            )
            yield fleet, config, specs


async def test_three_workers_kill_add_and_stop_lose_nothing(
    mail_servers: MailServers, tmp_path: Path
) -> None:
    workers: list[Worker] = []
    try:
        async with (
            asyncio.timeout(TOTAL),
            fleet_processes(mail_servers, tmp_path) as (fleet, config, specs),
        ):
            a, b, c = await asyncio.gather(
                *(spawn(n, config, tmp_path) for n in ("w-a", "w-b", "w-c"))
            )
            workers += [a, b, c]
            for spec in specs:  # added at run time: the three share them from the start
                await fleet.add(spec)
            await settle(fleet, {"w-a", "w-b", "w-c"})
            await until_baselines(fleet, specs)
            sender = Sender(mail_servers, specs)
            await asyncio.sleep(2.0)
            a.proc.send_signal(signal.SIGKILL)
            assert await a.proc.wait() == -signal.SIGKILL
            await settle(fleet, {"w-b", "w-c"})
            d = await spawn("w-d", config, tmp_path)
            workers.append(d)
            await settle(fleet, {"w-b", "w-c", "w-d"})
            await asyncio.sleep(1.0)
            b.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(b.proc.wait(), STEP) == 0
            assert b.lines[-1]["event"] == "left"
            await asyncio.sleep(1.0)
            sent = await sender.stop()
            status = await settle(fleet, {"w-c", "w-d"})
            await until_reported(workers, sent)
            for worker in (c, d):
                worker.proc.send_signal(signal.SIGTERM)
            for worker in (c, d):
                assert await asyncio.wait_for(worker.proc.wait(), STEP) == 0
    finally:
        for worker in workers:
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()
    assert status.spread() <= 1 and sorted(counts(status).values()) == [150, 150]
    reported = [m for w in workers for m in w.messages()]
    got = Counter((m["mailbox"], m["subject"]) for m in reported)
    assert sent <= set(got), sorted(sent - set(got))[:10]  # nothing lost
    assert set(got) <= sent  # nothing invented (the old mail was before the start)
    first = Counter((m["mailbox"], m["subject"]) for m in reported if not m["redelivered"])
    assert max(first.values()) == 1, [k for k, n in first.items() if n > 1][:10]
    failures = [line for w in workers for line in w.lines if line["event"] == "mailbox_failed"]
    assert not [f for f in failures if f["permanent"]], failures[:5]
    # One refresh per credential for the whole fleet (the RedisTokenStore's lock).
    refreshes = Counter(
        form.get("refresh_token")
        for form in mail_servers.oauth.token_forms
        if form.get("client_id") == CLIENT_ID
    )
    assert len(refreshes) == MAILBOXES and set(refreshes.values()) == {1}
