"""D. SMTP: 500 messages over one connection to Postfix (submission port, STARTTLS,
AUTH XOAUTH2), each to a recipient that Postfix accepts and discards.

Variants, each in a fresh interpreter per run:

- ``mailoauth``: :meth:`SmtpClient.sendmail`;
- ``aiosmtplib``: bare ``SMTP(start_tls=True)`` + ``auth_xoauth2`` + ``sendmail``;
- ``smtplib``: the standard library, ``starttls`` + ``auth("XOAUTH2", ...)``.

Timed from after authentication until the 500th message is accepted (250 after
DATA); client CPU is the ``getrusage(RUSAGE_SELF)`` delta over the same span.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import sys
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
from mailoauth import SecurityOptions, SmtpClient
from mailoauth.sasl import XOAuth2

MODULE = "benchmarks.smtp"
VARIANTS = ["mailoauth", "aiosmtplib", "smtplib"]
RECIPIENT = "sink@discard.test"  # not Postfix's domain: accepted, then discarded


def message(sender: str, n: int) -> bytes:
    return (
        f"From: {sender}\r\nTo: {RECIPIENT}\r\nSubject: benchmark {n}\r\n"
        f"Message-ID: <bench-{n}@example.test>\r\n\r\n".encode()
        + b"A line of a short message body, as most notifications are.\r\n" * 12
    )


async def send_mailoauth(spec: dict[str, Any], ctx: ssl.SSLContext) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    async with SmtpClient(
        HOST,
        spec["port"],
        user,
        spec["token"],
        SecurityOptions.SSL_EXPLICIT,
        ssl_context=ctx,
        mechanism="XOAUTH2",
    ) as smtp:
        cpu, start = cpu_seconds(), time.perf_counter()
        for n in range(count):
            await smtp.sendmail(user, [RECIPIENT], message(user, n))
        return time.perf_counter() - start, cpu_seconds() - cpu


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


def send_smtplib(spec: dict[str, Any], ctx: ssl.SSLContext) -> tuple[float, float]:
    user, count = spec["user"], spec["count"]
    raw = XOAuth2(user, spec["token"]).initial_response().decode()
    with smtplib.SMTP(HOST, spec["port"], local_hostname="bench") as smtp:
        smtp.starttls(context=ctx)
        smtp.ehlo()
        smtp.auth("XOAUTH2", lambda challenge=None: raw if challenge is None else "")
        cpu, start = cpu_seconds(), time.perf_counter()
        for n in range(count):
            smtp.sendmail(user, [RECIPIENT], message(user, n))
        return time.perf_counter() - start, cpu_seconds() - cpu


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = client_context(spec["ca_file"])
    variant = spec["variant"]
    if variant == "smtplib":
        wall, cpu = send_smtplib(spec, ctx)
    elif variant == "aiosmtplib":
        wall, cpu = asyncio.run(send_aiosmtplib(spec, ctx))
    else:
        wall, cpu = asyncio.run(send_mailoauth(spec, ctx))
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
    t = report.table(
        f"{count} messages over one connection (median of {repeat} fresh processes per "
        "variant, interleaved)",
        "variant",
        "messages/s",
        "spread",
        "CPU ms/message",
        "spread ",
        "time x aiosmtplib",
        "CPU x aiosmtplib",
    )
    a_rate, a_cpu = rate["aiosmtplib"].median, cpu["aiosmtplib"].median
    for v in VARIANTS:
        t.add(
            v,
            rate[v].median,
            pct(rate[v].spread),
            cpu[v].median,
            pct(cpu[v].spread),
            a_rate / rate[v].median,
            cpu[v].median / a_cpu,
        )
    report.target(
        "time per message x aiosmtplib", a_rate / rate["mailoauth"].median, 1.05, higher=False
    )
    report.target(
        "CPU per message x aiosmtplib", cpu["mailoauth"].median / a_cpu, 1.05, higher=False
    )
    report.data = {
        "messages": count,
        "messages_per_s": {v: s.as_json() for v, s in rate.items()},
        "cpu_ms_per_message": {v: s.as_json() for v, s in cpu.items()},
    }
    return report


if __name__ == "__main__":
    spec = load_spec(sys.argv)
    if spec is None:
        print(run(quick=True).render())
    else:
        emit(worker(spec))
