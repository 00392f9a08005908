"""E. Memory: N idle IMAP IDLE connections in one process, resident memory per connection.

Each variant runs in a fresh interpreter: it opens one connection first (so that
imports, the TLS context and first-use caches are paid), reads ``VmRSS`` after
``gc.collect()``, opens N more (one user each: connect, XOAUTH2, SELECT INBOX, IDLE;
50 being opened at a time), waits until every one is idling, and reads ``VmRSS``
again. Per connection = the difference / N.

- ``mailoauth``: :class:`ImapClient`, iterating :meth:`ImapClient.idle` in a task;
- ``aioimaplib``: bare ``IMAP4_SSL`` + ``xoauth2`` + ``select`` + ``idle_start``.

A second pass of the mailoauth variant under tracemalloc shows where the Python-level
memory goes (top allocation sites of a snapshot diff); what tracemalloc cannot see is
native memory, mostly OpenSSL's per-connection state.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tracemalloc
from typing import Any

from aioimaplib import IMAP4_SSL

from benchmarks._common import (
    HOST,
    Report,
    Samples,
    client_context,
    emit,
    interleaved,
    load_spec,
    pct,
    raise_nofile,
    rss_bytes,
    run_worker,
    servers,
)
from mailoauth import ImapClient, SecurityOptions

MODULE = "benchmarks.idle_memory"
VARIANTS = ["mailoauth", "aioimaplib"]
OPENING_AT_ONCE = 50
TIMEOUT = 120.0
TARGET_BYTES = 150_000


async def open_mailoauth(spec: dict[str, Any], ctx: Any, user: str, token: str) -> Any:
    client = ImapClient(
        HOST,
        spec["port"],
        user,
        token,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=ctx,
        mechanism="XOAUTH2",
        timeout=TIMEOUT,
    )
    await client.connect()
    await client.select("INBOX")

    async def idle() -> None:
        async for _ in client.idle():
            pass

    task = asyncio.create_task(idle())
    for _ in range(int(TIMEOUT * 20)):
        protocol = client._protocol  # the IDLE command has been sent
        if protocol is not None and protocol.has_pending_idle_command():
            break
        await asyncio.sleep(0.05)
    return client, task


async def open_aioimaplib(spec: dict[str, Any], ctx: Any, user: str, token: str) -> Any:
    imap = IMAP4_SSL(HOST, spec["port"], ssl_context=ctx, timeout=TIMEOUT)
    await imap.wait_hello_from_server()
    response = await imap.xoauth2(user, token)
    if response.result != "OK":
        raise RuntimeError(f"xoauth2: {response}")
    await imap.select("INBOX")
    idle = await imap.idle_start(timeout=TIMEOUT * 10)  # returns once the server said "+"
    return imap, idle


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = client_context(spec["ca_file"])
    opener = open_mailoauth if spec["variant"] == "mailoauth" else open_aioimaplib
    users = spec["users"]
    held = [await opener(spec, ctx, *users[0])]  # warm-up, not counted
    await asyncio.sleep(0.5)
    if spec.get("trace"):
        tracemalloc.start(10)
        before_snap = tracemalloc.take_snapshot()
    before = rss_bytes()
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one(user: str, token: str) -> Any:
        async with gate:
            return await opener(spec, ctx, user, token)

    start = time.perf_counter()
    held += await asyncio.gather(*(one(u, t) for u, t in users[1:]))
    opened = time.perf_counter() - start
    await asyncio.sleep(1.0)  # the last "+ idling" continuations are in
    after = rss_bytes()
    n = len(users) - 1
    result: dict[str, Any] = {
        "n": n,
        "rss_before": before,
        "rss_after": after,
        "per_connection": (after - before) / n,
        "open_seconds": opened,
    }
    if spec.get("trace"):
        after_snap = tracemalloc.take_snapshot()
        diff = after_snap.compare_to(before_snap, "lineno")
        traced = sum(d.size_diff for d in diff)
        result["traced_per_connection"] = traced / n
        result["top"] = [
            {
                "where": f"{short_path(d.traceback[0].filename)}:{d.traceback[0].lineno}",
                "per_connection": d.size_diff / n,
                "count_per_connection": d.count_diff / n,
            }
            for d in diff[:12]
        ]
    return result


def short_path(filename: str) -> str:
    """``asyncio/sslproto.py`` rather than the interpreter's install path."""
    for marker in ("site-packages/", "/lib/python3.11/", "/main/"):
        if marker in filename:
            return filename.split(marker)[-1]
    return filename


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    raise_nofile(4 * len(spec["users"]) + 256)
    result = asyncio.run(_hold_and_exit(spec))
    return result


async def _hold_and_exit(spec: dict[str, Any]) -> dict[str, Any]:
    result = await hold(spec)
    emit(result)
    os._exit(0)  # the N sessions just drop; logging out 1,000 of them measures nothing


def run(quick: bool = False, repeat: int | None = None) -> Report:
    sizes = [50, 100, 200] if quick else [100, 500, 1000]
    repeat = repeat or 2
    report = Report("idle_memory", quick)
    per: dict[tuple[int, str], Samples] = {}
    with servers() as srv:
        users = [f"idle{i}@example.test" for i in range(max(sizes) + 1)]
        tokens = [(u, srv.token(u)) for u in users]
        base = {"port": srv.dovecot.imaps_port, "ca_file": srv.ca_file}
        # Warm-up: Dovecot creates each user's maildir on first login.
        run_worker(MODULE, {**base, "variant": "aioimaplib", "users": tokens})
        for n in sizes:

            def one(variant: str, n: int = n) -> None:
                out = run_worker(MODULE, {**base, "variant": variant, "users": tokens[: n + 1]})
                per.setdefault((n, variant), Samples()).add(out["per_connection"])

            interleaved(VARIANTS, repeat, one)
        n_trace = sizes[1]
        trace = run_worker(
            MODULE, {**base, "variant": "mailoauth", "users": tokens[: n_trace + 1], "trace": True}
        )
        trace_bare = run_worker(
            MODULE, {**base, "variant": "aioimaplib", "users": tokens[: n_trace + 1], "trace": True}
        )
    t = report.table(
        f"RSS per idle IMAPS connection (median of {repeat} fresh processes per variant)",
        "N",
        "variant",
        "KB per connection",
        "spread",
        "x aioimaplib",
    )
    for n in sizes:
        for v in VARIANTS:
            s = per[(n, v)]
            t.add(n, v, s.median / 1000, pct(s.spread), s.median / per[(n, "aioimaplib")].median)
    tm = report.table(
        f"where mailoauth's memory goes (tracemalloc, N={n_trace}; the rest of RSS is "
        "native, mostly OpenSSL)",
        "allocation site",
        "bytes per connection",
        "blocks per connection",
    )
    tm.add(
        "RSS, all",
        trace["per_connection"],
        "",
    )
    tm.add("tracemalloc, all Python allocations", trace["traced_per_connection"], "")
    for entry in trace["top"]:
        tm.add(entry["where"], entry["per_connection"], entry["count_per_connection"])
    tb = report.table(
        f"for comparison, bare aioimaplib (tracemalloc, N={n_trace})",
        "allocation site",
        "bytes per connection",
        "blocks per connection",
    )
    tb.add("RSS, all", trace_bare["per_connection"], "")
    tb.add("tracemalloc, all Python allocations", trace_bare["traced_per_connection"], "")
    for entry in trace_bare["top"][:5]:
        tb.add(entry["where"], entry["per_connection"], entry["count_per_connection"])
    largest = max(sizes)
    report.target(
        f"N={largest}: KB per mailoauth connection",
        per[(largest, "mailoauth")].median / 1000,
        TARGET_BYTES / 1000,
        higher=False,
    )
    report.data = {
        "bytes_per_connection": {f"{n}/{v}": s.as_json() for (n, v), s in per.items()},
        "tracemalloc_mailoauth": trace,
        "tracemalloc_aioimaplib": trace_bare,
    }
    report.notes.append(
        f"connections opened {OPENING_AT_ONCE} at a time; RSS read from /proc/self/status "
        "after gc.collect(), before and after opening N (one warm-up connection first)"
    )
    return report


if __name__ == "__main__":
    spec = load_spec(sys.argv)
    if spec is None:
        print(run(quick=True).render())
    else:
        worker(spec)
