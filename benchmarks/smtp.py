"""D. SMTP: 500 messages to Postfix (submission port, STARTTLS, AUTH XOAUTH2), each to
a recipient that Postfix accepts and discards.

One connection, each variant in a fresh interpreter per run:

- ``mailoauth``: :meth:`SmtpClient.sendmail` in a loop, what most users write
  (pipelined: MAIL, RCPT and ``BDAT n LAST`` with the message in one write);
- ``mo_serial``: the same with ``pipelining=False`` (one command per round trip, as
  before PIPELINING was used);
- ``mo_many``: :meth:`SmtpClient.send_many` (4 messages per write);
- ``aiosmtplib``: bare ``SMTP(start_tls=True)`` + ``auth_xoauth2`` + ``sendmail``;
- ``smtplib``: the standard library, ``starttls`` + ``auth("XOAUTH2", ...)``.

The bulk path, against the same Postfix:

- ``pool``: :class:`SmtpPool` (4 connections, 4 messages per write) ``send_many``;
- ``smtplib_x4``: smtplib in 4 threads, one connection each (what a user could do
  without mailoauth), for context.

Timed from after authentication (all connections of the pool and the threads open)
until the last message is accepted; client CPU is the ``getrusage(RUSAGE_SELF)`` delta
over the same span, threads included.

``python -m benchmarks.smtp --profile VARIANT`` runs one variant under cProfile (500
messages, servers started as for the benchmark) and prints where its CPU goes.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import smtplib
import ssl
import sys
import threading
import time
from typing import Any

import aiosmtplib

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
    run_worker,
    servers,
)
from mailoauth import SecurityOptions, SmtpClient, SmtpPool
from mailoauth.sasl import XOAuth2

MODULE = "benchmarks.smtp"
ONE = ["mailoauth", "mo_serial", "mo_many", "aiosmtplib", "smtplib"]
BULK = ["pool", "smtplib_x4", "smtplib"]
VARIANTS = ONE + BULK[:2]
RECIPIENT = "sink@discard.test"  # not Postfix's domain: accepted, then discarded
POOL_SIZE = 4
THREADS = 4


def message(sender: str, n: int) -> bytes:
    return (
        f"From: {sender}\r\nTo: {RECIPIENT}\r\nSubject: benchmark {n}\r\n"
        f"Message-ID: <bench-{n}@example.test>\r\n\r\n".encode()
        + b"A line of a short message body, as most notifications are.\r\n" * 12
    )


def mo_client(spec: dict[str, Any], ctx: ssl.SSLContext, **options: Any) -> SmtpClient:
    return SmtpClient(
        HOST,
        spec["port"],
        spec["user"],
        spec["token"],
        SecurityOptions.SSL_EXPLICIT,
        ssl_context=ctx,
        mechanism="XOAUTH2",
        **options,
    )


async def send_mailoauth(
    spec: dict[str, Any], ctx: ssl.SSLContext, **options: Any
) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    async with mo_client(spec, ctx, **options) as smtp:
        cpu, start = cpu_seconds(), time.perf_counter()
        for n in range(count):
            await smtp.sendmail(user, [RECIPIENT], message(user, n))
        return time.perf_counter() - start, cpu_seconds() - cpu


async def send_mo_many(spec: dict[str, Any], ctx: ssl.SSLContext) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    async with mo_client(spec, ctx) as smtp:
        cpu, start = cpu_seconds(), time.perf_counter()
        batch = [(user, [RECIPIENT], message(user, n)) for n in range(count)]
        results = await smtp.send_many(batch)
        wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} messages failed, e.g. {failed[0]!r}")
    return wall, used


async def send_pool(spec: dict[str, Any], ctx: ssl.SSLContext) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    async with SmtpPool(
        HOST,
        spec["port"],
        user,
        spec["token"],
        SecurityOptions.SSL_EXPLICIT,
        size=POOL_SIZE,
        ssl_context=ctx,
        mechanism="XOAUTH2",
    ) as pool:
        # Open every connection first (one message each), as the other variants are
        # timed after authentication.
        await pool.send_many([(user, [RECIPIENT], message(user, -1))] * POOL_SIZE * pool.window)
        cpu, start = cpu_seconds(), time.perf_counter()
        batch = [(user, [RECIPIENT], message(user, n)) for n in range(count)]
        results = await pool.send_many(batch)
        wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} messages failed, e.g. {failed[0]!r}")
    return wall, used


async def send_aiosmtplib(spec: dict[str, Any], ctx: ssl.SSLContext) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=spec["port"], start_tls=True, tls_context=ctx, local_hostname="bench"
    )
    async with smtp:
        await smtp.auth_xoauth2(user, spec["token"])
        cpu, start = cpu_seconds(), time.perf_counter()
        for n in range(count):
            await smtp.sendmail(user, [RECIPIENT], message(user, n))
        return time.perf_counter() - start, cpu_seconds() - cpu


def smtplib_session(spec: dict[str, Any], ctx: ssl.SSLContext) -> smtplib.SMTP:
    raw = XOAuth2(spec["user"], spec["token"]).initial_response().decode()
    smtp = smtplib.SMTP(HOST, spec["port"], local_hostname="bench")
    smtp.starttls(context=ctx)
    smtp.ehlo()
    smtp.auth("XOAUTH2", lambda challenge=None: raw if challenge is None else "")
    return smtp


def send_smtplib(spec: dict[str, Any], ctx: ssl.SSLContext) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    with smtplib_session(spec, ctx) as smtp:
        cpu, start = cpu_seconds(), time.perf_counter()
        for n in range(count):
            smtp.sendmail(user, [RECIPIENT], message(user, n))
        return time.perf_counter() - start, cpu_seconds() - cpu


def send_smtplib_threads(spec: dict[str, Any], ctx: ssl.SSLContext) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    sessions = [smtplib_session(spec, ctx) for _ in range(THREADS)]
    go = threading.Barrier(THREADS + 1)

    def work(k: int) -> None:
        go.wait()
        for n in range(k, count, THREADS):
            sessions[k].sendmail(user, [RECIPIENT], message(user, n))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    cpu, start = cpu_seconds(), time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    for smtp in sessions:
        smtp.quit()
    return wall, used


def measure(spec: dict[str, Any]) -> tuple[float, float]:
    ctx = client_context(spec["ca_file"])
    variant = spec["variant"]
    if variant == "smtplib":
        return send_smtplib(spec, ctx)
    if variant == "smtplib_x4":
        return send_smtplib_threads(spec, ctx)
    if variant == "aiosmtplib":
        return asyncio.run(send_aiosmtplib(spec, ctx))
    if variant == "mo_serial":
        return asyncio.run(send_mailoauth(spec, ctx, pipelining=False))
    if variant == "mo_many":
        return asyncio.run(send_mo_many(spec, ctx))
    if variant == "pool":
        return asyncio.run(send_pool(spec, ctx))
    return asyncio.run(send_mailoauth(spec, ctx))


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    wall, cpu = measure(spec)
    return {"wall": wall, "cpu": cpu}


def run(quick: bool = False, repeat: int | None = None) -> Report:
    count = 100 if quick else 500
    repeat = repeat or (3 if quick else 7)
    report = Report("smtp", quick)
    rate = {v: Samples() for v in VARIANTS}
    cpu = {v: Samples() for v in VARIANTS}
    with servers(postfix=True) as srv:
        assert srv.postfix is not None
        user = "sender@example.test"
        base = {
            "port": srv.postfix.submission_port,
            "ca_file": srv.ca_file,
            "user": user,
            "token": srv.token(user),
            "count": count,
        }
        run_worker(MODULE, {**base, "variant": "smtplib", "count": 20})  # warm-up

        def one(variant: str) -> None:
            out = run_worker(MODULE, {**base, "variant": variant})
            rate[variant].add(count / out["wall"])
            cpu[variant].add(out["cpu"] / count * 1000)

        interleaved(VARIANTS, repeat, one)
    s_rate, s_cpu = rate["smtplib"].median, cpu["smtplib"].median
    a_rate, a_cpu = rate["aiosmtplib"].median, cpu["aiosmtplib"].median
    for title, names in (
        (f"{count} messages over one connection", ONE),
        (f"{count} messages, the bulk path ({POOL_SIZE} connections)", BULK),
    ):
        t = report.table(
            f"{title} (median of {repeat} fresh processes per variant, interleaved)",
            "variant",
            "messages/s",
            "spread",
            "CPU ms/message",
            "spread ",
            "rate x smtplib",
            "CPU x smtplib",
            "time x aiosmtplib",
            "CPU x aiosmtplib",
        )
        for v in names:
            t.add(
                v,
                rate[v].median,
                pct(rate[v].spread),
                cpu[v].median,
                pct(cpu[v].spread),
                rate[v].median / s_rate,
                cpu[v].median / s_cpu,
                a_rate / rate[v].median,
                cpu[v].median / a_cpu,
            )
    mo_rate, mo_cpu = rate["mailoauth"].median, cpu["mailoauth"].median
    report.target(
        "one connection, sendmail: messages/s x smtplib", mo_rate / s_rate, 1.5, higher=True
    )
    report.target(
        "one connection, sendmail: CPU/message x smtplib", mo_cpu / s_cpu, 1.0, higher=False
    )
    report.target(
        "one connection, send_many: messages/s x smtplib",
        rate["mo_many"].median / s_rate,
        1.5,
        higher=True,
    )
    report.target("pool: messages/s x smtplib", rate["pool"].median / s_rate, 3.0, higher=True)
    report.target("time per message x aiosmtplib", a_rate / mo_rate, 1.05, higher=False)
    report.target("CPU per message x aiosmtplib", mo_cpu / a_cpu, 1.05, higher=False)
    report.notes.append(
        "every variant sends the same ~830-byte message to a discarded recipient; "
        "mo_serial is mailoauth with pipelining=False; smtplib_x4 is 4 threads with one "
        "connection each"
    )
    report.data = {
        "messages": count,
        "messages_per_s": {v: s.as_json() for v, s in rate.items()},
        "cpu_ms_per_message": {v: s.as_json() for v, s in cpu.items()},
    }
    return report


def profile(variant: str, count: int = 500, top: int = 14) -> str:
    """Run ``variant`` once in this process under cProfile; its top functions."""
    with servers(postfix=True) as srv:
        assert srv.postfix is not None
        user = "sender@example.test"
        spec = {
            "port": srv.postfix.submission_port,
            "ca_file": srv.ca_file,
            "user": user,
            "token": srv.token(user),
            "count": count,
            "variant": variant,
        }
        profiler = cProfile.Profile()
        profiler.enable()
        _, cpu = measure(spec)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    calls = stats.total_calls  # type: ignore[attr-defined]
    out.write(
        f"{variant}: {count} messages, {calls:,} Python calls ({calls / count:.0f} per "
        f"message), {cpu / count * 1000:.2f} ms CPU per message under the profiler\n"
    )
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--profile":
        print(profile(sys.argv[2]))
        sys.exit(0)
    spec = load_spec(sys.argv)
    if spec is None:
        print(run(quick=True).render())
    else:
        emit(worker(spec))
