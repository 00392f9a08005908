"""TLS session resumption: what an abbreviated handshake saves a client that reconnects.

Against Dovecot over implicit TLS (its login processes in high-performance mode, so it
resumes: see :mod:`mailoauth.testing.dovecot`), in a fresh interpreter per run, after
one warm-up connection (which gives ``mo`` its first session):

- ``handshake``: ``RECONNECTS`` connections in a row: TCP, the TLS handshake, the
  greeting, close -- the TLS part alone (``imaplib``: ``ssl.SSLContext.wrap_socket``);
- ``reconnect``: one mailbox, ``RECONNECTS`` times in a row: connect, XOAUTH2, SELECT
  INBOX, LOGOUT (a poller's cycle);
- ``poll``: ``POLL_N`` mailboxes at once: connect, XOAUTH2, SELECT, UID SEARCH UNSEEN,
  LOGOUT (``imap_polling``'s workload).

Variants: ``mo`` (:class:`ImapClient`, resumption on, the default), ``mo_noresume``
(``tls_resumption=False``: a full handshake every time) and ``imaplib`` (the standard
library, which never resumes unless its caller does it by hand; threads for ``poll``).
Client CPU is the ``getrusage`` delta over the timed span; wall time is reported too.
"""

from __future__ import annotations

import asyncio
import imaplib
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks._common import (
    HOST,
    Report,
    Samples,
    client_context,
    cpu_seconds,
    emit,
    interleaved,
    load_spec,
    pct,
    raise_nofile,
    run_worker,
    servers,
)
from mailoauth import ImapClient, SecurityOptions
from mailoauth._core.connection import Connection
from mailoauth.sasl import XOAuth2

MODULE = "benchmarks.tls_resume"
VARIANTS = ["mo", "mo_noresume", "imaplib"]
WORKLOADS = ["handshake", "reconnect", "poll"]
RECONNECTS = 100
POLL_N = 200
THREADS = 32
TIMEOUT = 120.0
#: Issue 13 asks resumption to cut the handshake's share of a reconnect; no number was
#: set. This one: resumption must not cost CPU (``mo`` <= ``mo_noresume``).
TARGET_RATIO = 1.0


async def mo_session(spec: dict[str, Any], ctx: ssl.SSLContext, user: str, token: str) -> bool:
    if spec["workload"] == "handshake":
        conn = await Connection.open(
            HOST,
            spec["port"],
            implicit_tls=True,
            ssl_context=ctx,
            timeout=TIMEOUT,
            tls_resumption=spec["variant"] == "mo",
        )
        await conn.receive()  # the greeting (and, with TLS 1.3, the tickets before it)
        await conn.aclose()
        return conn.tls_resumed
    async with ImapClient(
        HOST,
        spec["port"],
        user,
        token,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=ctx,
        mechanism="XOAUTH2",
        timeout=TIMEOUT,
        tls_resumption=spec["variant"] == "mo",
    ) as imap:
        await imap.select("INBOX")
        if spec["workload"] == "poll":
            await imap.uid_search("UNSEEN")
        return imap.tls_resumed


def imaplib_session(spec: dict[str, Any], ctx: ssl.SSLContext, user: str, token: str) -> bool:
    if spec["workload"] == "handshake":
        with ctx.wrap_socket(
            socket.create_connection((HOST, spec["port"])), server_hostname=HOST
        ) as tls:
            tls.recv(4096)
            return bool(tls.session_reused)  # None: no session, so not resumed
    imap = imaplib.IMAP4_SSL(HOST, spec["port"], ssl_context=ctx, timeout=TIMEOUT)
    raw = XOAuth2(user, token).initial_response()
    imap.authenticate("XOAUTH2", lambda _: raw)
    imap.select("INBOX")
    if spec["workload"] == "poll":
        imap.uid("SEARCH", "UNSEEN")
    resumed = bool(imap.sock.session_reused)  # type: ignore[attr-defined]
    imap.logout()
    return resumed


async def run_mo(spec: dict[str, Any], ctx: ssl.SSLContext, users: list[Any]) -> list[bool]:
    if spec["workload"] == "poll":
        return list(await asyncio.gather(*(mo_session(spec, ctx, u, t) for u, t in users)))
    return [await mo_session(spec, ctx, u, t) for u, t in users]


def run_imaplib(spec: dict[str, Any], ctx: ssl.SSLContext, users: list[Any]) -> list[bool]:
    if spec["workload"] == "poll":
        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(lambda ut: imaplib_session(spec, ctx, *ut), users))
    return [imaplib_session(spec, ctx, u, t) for u, t in users]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    raise_nofile(4 * len(spec["users"]) + 256)
    ctx = client_context(spec["ca_file"])
    warm, *users = [tuple(x) for x in spec["users"]]
    if spec["variant"] == "imaplib":
        run_imaplib(spec, ctx, [warm])
        start_cpu, start = cpu_seconds(), time.perf_counter()
        resumed = run_imaplib(spec, ctx, users)
    else:

        async def both() -> tuple[list[bool], float, float]:
            await run_mo(spec, ctx, [warm])
            start_cpu, start = cpu_seconds(), time.perf_counter()
            return await run_mo(spec, ctx, users), start_cpu, start

        resumed, start_cpu, start = asyncio.run(both())
    wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    return {"wall": wall, "cpu": cpu, "n": len(users), "resumed": sum(resumed)}


def run(quick: bool = False, repeat: int | None = None) -> Report:
    reconnects = 30 if quick else RECONNECTS
    poll_n = 50 if quick else POLL_N
    repeat = repeat or (3 if quick else 5)
    report = Report("tls_resume", quick)
    cpu: dict[tuple[str, str], Samples] = {}
    wall: dict[tuple[str, str], Samples] = {}
    resumed: dict[tuple[str, str], Samples] = {}
    with servers() as srv:
        base = {"port": srv.dovecot.imaps_port, "ca_file": srv.ca_file}
        one_user = "resume0@example.test"
        specs = {
            "handshake": [(one_user, "")] * (reconnects + 1),
            "reconnect": [(one_user, srv.token(one_user))] * (reconnects + 1),
            "poll": [
                (u, srv.token(u)) for u in (f"resume{i}@example.test" for i in range(poll_n + 1))
            ],
        }
        # Warm-up: Dovecot creates and indexes each mailbox on first use.
        run_worker(
            MODULE, {**base, "variant": "imaplib", "workload": "poll", "users": specs["poll"]}
        )
        for workload in WORKLOADS:

            def one(variant: str, workload: str = workload) -> None:
                spec = {**base, "variant": variant, "workload": workload, "users": specs[workload]}
                out = run_worker(MODULE, spec)
                key = (workload, variant)
                cpu.setdefault(key, Samples()).add(out["cpu"] / out["n"] * 1000)
                wall.setdefault(key, Samples()).add(out["wall"] / out["n"] * 1000)
                resumed.setdefault(key, Samples()).add(out["resumed"] / out["n"])

            interleaved(VARIANTS, repeat, one)
    t = report.table(
        f"per IMAPS session (median of {repeat} fresh processes per variant, interleaved; "
        f"handshake: TLS and greeting x {reconnects} in a row; reconnect: 1 mailbox x "
        f"{reconnects} in a row; poll: {poll_n} mailboxes at once)",
        "workload",
        "variant",
        "resumed",
        "CPU ms/session",
        "spread",
        "wall ms/session",
        "spread ",
        "CPU x mo_noresume",
        "CPU x imaplib",
    )
    for workload in WORKLOADS:
        for v in VARIANTS:
            key = (workload, v)
            c, w = cpu[key], wall[key]
            t.add(
                workload,
                v,
                f"{resumed[key].median:.0%}",
                c.median,
                pct(c.spread),
                w.median,
                pct(w.spread),
                c.median / cpu[(workload, "mo_noresume")].median,
                c.median / cpu[(workload, "imaplib")].median,
            )
    for workload in WORKLOADS:
        report.target(
            f"{workload}: client CPU, mo x mo_noresume",
            cpu[(workload, "mo")].median / cpu[(workload, "mo_noresume")].median,
            TARGET_RATIO,
            higher=False,
        )
    report.notes.append(
        "the first connection of each run (not timed) gives mo its first session; "
        "imaplib uses 32 threads for poll; sessions include XOAUTH2 against Dovecot's "
        "token introspection, which is the same for every variant"
    )
    report.data = {
        "cpu_ms": {f"{w}/{v}": s.as_json() for (w, v), s in cpu.items()},
        "wall_ms": {f"{w}/{v}": s.as_json() for (w, v), s in wall.items()},
        "resumed": {f"{w}/{v}": s.as_json() for (w, v), s in resumed.items()},
    }
    return report


if __name__ == "__main__":
    spec = load_spec(sys.argv)
    if spec is None:
        print(run(quick=True).render())
    else:
        emit(worker(spec))
