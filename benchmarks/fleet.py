"""G. The fleet: N IMAP mailboxes with IDLE shared by worker processes through Redis.

Real Redis (``appendonly yes``), Dovecot and the FakeOAuthServer on loopback. Each
worker is a fresh interpreter (``python -m benchmarks.fleet --worker SPEC``) running a
:class:`~mailoauth.poll.fleet.FleetWorker`; one ``OAuth2TokenProvider`` per
credential (one per mailbox here) on a shared ``RedisTokenStore``. The mailboxes are
added once the workers are up. Side by side, in one run: the same N mailboxes over 3
workers and over 1.

- **Latency**: once every mailbox has its starting point, one message per mailbox is
  delivered into its maildir (``RATE`` per second, in random order); latency is the
  worker's ``time.time()`` when the event is yielded minus the delivery's. Dovecot runs
  with ``mailbox_idle_check_interval = 1 secs``: past 128 IDLE sessions of one Unix
  user it stops using inotify (REAL_SERVERS.md), so this interval bounds what IDLE can
  do here.
- **Lost**: messages delivered and never reported (must be 0), and repeats not marked
  ``redelivered``.
- **Takeover** (3 workers): one worker is killed with SIGKILL, and one message is
  delivered to each mailbox it held, at once. Reported: the time until every one of its
  mailboxes is leased by a live worker, and until every one of those messages was
  reported. The lease is ``LEASE`` seconds, so the first figure is about a lease.
- **Memory**: each worker's VmRSS once all its mailboxes are watched, minus its VmRSS
  when it was ready with none, per mailbox held.
- **Tokens**: token requests per credential over the run (both fleets; the store is
  shared, so 1 means once per fleet lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import (
    HOST,
    MAX_SESSIONS,
    Report,
    raise_nofile,
)

MODULE = "benchmarks.fleet"
ROOT = str(Path(__file__).resolve().parents[1])
LEASE = 15.0
RATE = 100.0  # deliveries per second
STEP = 300.0  # the most any one phase may take
CLIENT_ID = "bench-fleet"
CLIENT_SECRET = "cs-bench-fleet"
POLLER: dict[str, Any] = {"max_connections": 2000, "max_per_host": 2000, "idle_timeout": 290.0}


# -- the worker process ---------------------------------------------------------------


async def work(spec: dict[str, Any]) -> None:
    import httpx
    import redis.asyncio

    from mailoauth.poll import Mailbox, MailboxSpec, NewMessage
    from mailoauth.poll.fleet import FleetWorker
    from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant
    from mailoauth.tokens.redis_store import RedisTokenStore

    # A blocking pool: hundreds of first refreshes at once would exceed a plain pool's
    # connections (MaxConnectionsError) and send their mailboxes into backoff.
    pool = redis.asyncio.BlockingConnectionPool.from_url(spec["redis"], max_connections=64)
    store = RedisTokenStore(redis.asyncio.Redis(connection_pool=pool), prefix="bench:tokens:")
    http = httpx.AsyncClient()  # one for all providers (each would load the CA store)
    providers: dict[str, OAuth2TokenProvider] = {}

    def resolve(box: MailboxSpec) -> Mailbox:
        if box.credential not in providers:
            providers[box.credential] = OAuth2TokenProvider(
                spec["token_url"],
                RefreshTokenGrant(spec["refresh_tokens"][box.credential]),
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                store=store,
                store_key=box.credential,
                http_client=http,
            )
        return box.to_mailbox(providers[box.credential])

    worker = FleetWorker(
        spec["redis"],
        resolve,
        worker_id=spec["worker_id"],
        lease=LEASE,
        prefix=spec["prefix"],
        **POLLER,
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    out = sys.stdout
    async with worker:
        out.write(json.dumps({"event": "ready"}) + "\n")
        out.flush()
        async for event in worker:
            line: dict[str, Any]
            if isinstance(event, NewMessage):
                line = {
                    "event": "new",
                    "t": time.time(),
                    "mailbox": event.mailbox,
                    "subject": str(event.message()["Subject"]),
                    "redelivered": event.redelivered,
                }
            else:
                line = {"event": "failed", "mailbox": event.mailbox, "error": repr(event.error)}
            out.write(json.dumps(line) + "\n")
            out.flush()
    await http.aclose()
    await store.aclose()
    await pool.aclose()


# -- the benchmark process ------------------------------------------------------------


class Proc:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name, self.proc = name, proc
        self.events: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            if line["event"] == "ready":
                self.ready.set()
            else:
                self.events.append(line)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


async def spawn(name: str, spec: dict[str, Any], spec_dir: Path) -> Proc:
    path = spec_dir / f"{name}.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps({**spec, "worker_id": name}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        MODULE,
        "--worker",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=(spec_dir / f"{name}.log").open("ab"),
        cwd=ROOT,
    )
    p = Proc(name, proc)
    try:
        await asyncio.wait_for(p.ready.wait(), STEP)
    finally:
        path.unlink()  # it holds the refresh tokens
    return p


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def until(check: Any, what: str, timeout: float = STEP) -> float:
    """Seconds until ``check()`` (a coroutine function) is true; raises TimeoutError
    naming ``what``."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await check():
                    took = time.monotonic() - start
                    print(f"  {what}: {took:.1f} s", file=sys.stderr, flush=True)
                    return took
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {timeout:g} s") from None


async def one_fleet(
    workers: int, srv: Any, redis_url: str, specs: list[Any], base: dict[str, Any], tmp: Path
) -> dict[str, Any]:
    from mailoauth.poll.fleet import Fleet

    prefix = f"bench{workers}"
    result: dict[str, Any] = {"workers": workers}
    procs: list[Proc] = []
    async with Fleet(redis_url, prefix=prefix) as fleet:
        spec = {**base, "prefix": prefix}
        try:
            procs = list(
                await asyncio.gather(*(spawn(f"{prefix}-w{i}", spec, tmp) for i in range(workers)))
            )
            empty = {p.name: p.rss() for p in procs}
            for box in specs:
                await fleet.add(box)
            print(f"  {workers} worker(s): {len(specs)} mailboxes added", file=sys.stderr)

            async def settled() -> bool:
                status = await fleet.status()
                return (
                    not status.unleased and status.spread() <= 1 and len(status.workers) == workers
                )

            states = [fleet.keys.state(b.key) for b in specs]

            async def baselines() -> bool:
                return bool(await fleet._redis.exists(*states) == len(states))

            result["start_s"] = await until(settled, "settled")
            result["start_s"] += await until(baselines, "baselines")
            await asyncio.sleep(2.0)  # every session in IDLE
            status = await fleet.status()
            per_box = [
                (p.rss() - empty[p.name]) / max(1, len(status.workers[p.name].keys)) for p in procs
            ]
            result["bytes_per_mailbox"] = statistics.median(per_box)
            # Latency: one message per mailbox, RATE per second, in random order.
            order = list(specs)
            random.Random(workers).shuffle(order)
            sent: dict[tuple[str, str], float] = {}
            for i, box in enumerate(order):
                subject = f"lat{i}"
                sent[(box.key, subject)] = time.time()
                srv.dovecot.deliver(box.username, f"Subject: {subject}\r\n\r\nx\r\n")
                await asyncio.sleep(1 / RATE)

            def reported() -> dict[tuple[str, str], list[dict[str, Any]]]:
                got: dict[tuple[str, str], list[dict[str, Any]]] = {}
                for p in procs:
                    for e in p.events:
                        if e["event"] != "new":
                            continue
                        got.setdefault((e["mailbox"], e["subject"]), []).append(e)
                return got

            async def all_in() -> bool:
                return set(sent) <= set(reported())

            with contextlib.suppress(TimeoutError):
                await until(all_in, "latency messages", timeout=120)
            got = reported()
            result["failures"] = sum(e["event"] == "failed" for p in procs for e in p.events)
            latencies = [min(e["t"] for e in got[k]) - t for k, t in sent.items() if k in got]
            result["p50_s"] = quantile(latencies, 0.5)
            result["p99_s"] = quantile(latencies, 0.99)
            result["lost"] = len(set(sent) - set(got))
            result["unmarked_repeats"] = sum(
                1 for es in got.values() if sum(not e["redelivered"] for e in es) > 1
            )
            if workers > 1:
                victim = procs[0]
                held = set((await fleet.status()).workers[victim.name].keys)
                victim.proc.send_signal(signal.SIGKILL)
                await victim.proc.wait()
                by_key = {b.key: b for b in specs}
                kill_sent: dict[tuple[str, str], float] = {}
                for i, key in enumerate(sorted(held)):
                    kill_sent[(key, f"kill{i}")] = time.time()
                    srv.dovecot.deliver(by_key[key].username, f"Subject: kill{i}\r\n\r\nx\r\n")

                async def retaken() -> bool:
                    status = await fleet.status()
                    return all(status.leases.get(k) not in (None, victim.name) for k in held)

                result["takeover_leases_s"] = await until(retaken, "takeover")

                async def kill_in() -> bool:
                    return set(kill_sent) <= set(reported())

                await until(kill_in, "takeover messages", timeout=120)
                got = reported()
                after = [min(e["t"] for e in got[k]) - t for k, t in kill_sent.items()]
                result["takeover_events_p50_s"] = quantile(after, 0.5)
                result["takeover_events_max_s"] = max(after)
                result["takeover_mailboxes"] = len(held)
                result["lost"] += len(set(kill_sent) - set(got))
        finally:
            for p in procs:
                if p.proc.returncode is None:
                    p.proc.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    await asyncio.wait_for(p.proc.wait(), 60)
                except TimeoutError:
                    p.proc.kill()
                    await p.proc.wait()
    return result


async def bench(n: int, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    from mailoauth.poll import MailboxSpec
    from mailoauth.security import SecurityOptions
    from mailoauth.testing.redis_server import RedisServer

    with _servers() as srv, RedisServer() as redis:
        srv.oauth.add_client(CLIENT_ID, CLIENT_SECRET)
        specs = []
        refresh_tokens = {}
        for i in range(n):
            user = f"fleet{i}@example.test"
            refresh_tokens[user] = srv.oauth.issue_refresh_token(user, client_id=CLIENT_ID)
            specs.append(
                MailboxSpec(
                    "imap",
                    HOST,
                    srv.dovecot.imaps_port,
                    user,
                    user,
                    SecurityOptions.SSL_IMPLICIT,
                    cafile=srv.ca_file,
                )
            )
        base = {
            "redis": redis.url,
            "token_url": srv.oauth.token_url,
            "refresh_tokens": refresh_tokens,
        }
        results = [await one_fleet(w, srv, redis.url, specs, base, tmp) for w in (3, 1)]
        per_credential: dict[str, int] = {}
        for form in srv.oauth.token_forms:
            if form.get("client_id") == CLIENT_ID:
                rt = form.get("refresh_token", "")
                per_credential[rt] = per_credential.get(rt, 0) + 1
    return results, per_credential


@contextlib.contextmanager
def _servers() -> Iterator[Any]:
    """benchmarks._common.servers, with Dovecot checking idle mailboxes every second."""
    from benchmarks import _common
    from mailoauth.testing.dovecot import DovecotServer

    class IdleDovecot(DovecotServer):
        def render_config(self) -> str:
            return super().render_config() + "mailbox_idle_check_interval = 1 secs\n"

    # _common.servers() builds the DovecotServer it finds in its module.
    original = vars(_common)["DovecotServer"]
    setattr(_common, "DovecotServer", IdleDovecot)  # noqa: B010
    try:
        with _common.servers(max_sessions=MAX_SESSIONS) as srv:
            yield srv
    finally:
        setattr(_common, "DovecotServer", original)  # noqa: B010


def run(quick: bool = False, repeat: int | None = None) -> Report:
    import shutil
    import tempfile

    n = 150 if quick else 1000
    raise_nofile(4 * n + 256)
    report = Report("fleet", quick)
    logs = Path(tempfile.mkdtemp(prefix="mo-fleet-"))
    try:
        results, tokens = asyncio.run(bench(n, logs))
    except BaseException:
        print(f"  the workers' logs are in {logs}", file=sys.stderr)
        raise
    shutil.rmtree(logs, ignore_errors=True)
    t = report.table(
        f"N = {n} IMAP mailboxes with IDLE, one message each at {RATE:g}/s (one run each)",
        "workers",
        "start s",
        "p50 s",
        "p99 s",
        "x 1 worker p50",
        "lost",
        "unmarked repeats",
        "failures",
        "KB per mailbox",
    )
    one = next(r for r in results if r["workers"] == 1)
    for r in results:
        t.add(
            r["workers"],
            r["start_s"],
            r["p50_s"],
            r["p99_s"],
            r["p50_s"] / one["p50_s"],
            r["lost"],
            r["unmarked_repeats"],
            r["failures"],
            r["bytes_per_mailbox"] / 1000,
        )
    three = next(r for r in results if r["workers"] == 3)
    k = report.table(
        f"takeover after SIGKILL of one of 3 workers (lease {LEASE:g} s)",
        "mailboxes moved",
        "leases retaken s",
        "events p50 s",
        "events max s",
    )
    k.add(
        three["takeover_mailboxes"],
        three["takeover_leases_s"],
        three["takeover_events_p50_s"],
        three["takeover_events_max_s"],
    )
    counts = list(tokens.values())
    tk = report.table(
        "token requests per credential (both fleets, one RedisTokenStore)",
        "credentials",
        "min",
        "max",
    )
    tk.add(len(counts), min(counts, default=0), max(counts, default=0))
    report.target("messages lost", float(sum(r["lost"] for r in results)), 0, higher=False)
    report.target("token requests per credential", float(max(counts, default=0)), 1, higher=False)
    report.target(
        "takeover: leases retaken (s), at most lease + a tick",
        three["takeover_leases_s"],
        LEASE * 4 / 3 + 1,
        higher=False,
    )
    report.data = {"fleets": results, "token_requests_per_credential": counts}
    report.notes.append(
        "latency = worker's time.time() at the yield minus the delivery's (maildir write); "
        "Dovecot mailbox_idle_check_interval = 1 s; lease "
        f"{LEASE:g} s; memory = worker VmRSS with its mailboxes minus with none, per mailbox"
    )
    return report


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        spec = json.loads(Path(sys.argv[2]).read_text())
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
        )
        asyncio.run(work(spec))
    else:
        print(run(quick=True).render())
