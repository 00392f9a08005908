"""A. POP3: a 50 MB message and 2,000 small ones from Dovecot over implicit TLS.

Variants, each timed from after authentication until the last byte of the last
message (connect + AUTH excluded, the same for all):

- ``bare``: an ``ssl`` socket that sends every RETR at once (pipelined) and only counts
  ``CRLF . CRLF`` terminators in 256 KiB reads: the practical limit.
- ``poplib``: the standard library, synchronous, AUTH XOAUTH2 by ``_shortcmd``.
- ``mo_retrieve``: :meth:`Pop3Client.retrieve`, one message after the other.
- ``mo_many``: :meth:`Pop3Client.retrieve_many` (pipelined, like ``bare``).
- ``mo_stream``: :meth:`Pop3Client.iter_message`, chunks dropped as they come.
- ``core_rtt``: one RETR at a time over mailoauth's connection core
  (:class:`~mailoauth._core.connection.Connection` ``send``/``receive``), counting
  terminators only: the floor for an awaited round trip on this event loop, whatever
  the client does above it.

Also the tracemalloc peak of the streaming form for a 5 MB and a 50 MB message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import poplib
import pstats
import resource
import socket
import ssl
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from benchmarks._common import (
    HOST,
    Report,
    Samples,
    Servers,
    client_context,
    cpu_seconds,
    interleaved,
    pct,
    servers,
)
from mailoauth._core.connection import Connection
from mailoauth.pop3 import Pop3Client
from mailoauth.sasl import XOAuth2
from mailoauth.security import SecurityOptions

TERMINATOR = b"\r\n.\r\n"
READ_SIZE = 256 * 1024
LINE = b"The quick brown fox jumps over the lazy dog. 0123456789 .,;:!?\r\n"

Variant = Callable[[Servers, str, str, list[int]], tuple[float, int, float]]


def big_message(size: int) -> bytes:
    body = (LINE * 99 + b".a line the server dot-stuffs\r\n") * (size // (len(LINE) * 100) + 1)
    return b"Subject: big\r\n\r\n" + body[:size]


def small_message(n: int) -> bytes:
    return b"Subject: small %d\r\nFrom: a@example.test\r\n\r\n" % n + LINE * 30


def _recv_line(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def bare(srv: Servers, user: str, token: str, numbers: list[int]) -> tuple[float, int, float]:
    ctx = srv.client_context()
    raw = socket.create_connection((HOST, srv.dovecot.pop3s_port))
    with ctx.wrap_socket(raw, server_hostname=HOST) as sock:
        _recv_line(sock)
        b64 = XOAuth2(user, token).initial_response_b64()
        sock.sendall(b"AUTH XOAUTH2 " + b64 + b"\r\n")
        if not _recv_line(sock).startswith(b"+OK"):
            raise RuntimeError("AUTH failed")
        cpu, start = cpu_seconds(), time.perf_counter()
        sock.sendall(b"".join(b"RETR %d\r\n" % n for n in numbers))
        found = total = 0
        tail = b""
        while found < len(numbers):
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionError("closed")
            total += len(data)
            found += data.count(TERMINATOR) + (tail + data[:4]).count(TERMINATOR)
            tail = (tail + data[-4:])[-4:]
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        sock.sendall(b"QUIT\r\n")
    return elapsed, total, cpu


def stdlib(srv: Servers, user: str, token: str, numbers: list[int]) -> tuple[float, int, float]:
    pop = poplib.POP3_SSL(HOST, srv.dovecot.pop3s_port, context=srv.client_context())
    try:
        b64 = XOAuth2(user, token).initial_response_b64().decode()
        pop._shortcmd("AUTH XOAUTH2 " + b64)  # type: ignore[attr-defined]
        cpu, start = cpu_seconds(), time.perf_counter()
        total = 0
        for n in numbers:
            _, _lines, octets = pop.retr(n)
            total += octets
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    finally:
        pop.quit()
    return elapsed, total, cpu


def core_rtt(srv: Servers, user: str, token: str, numbers: list[int]) -> tuple[float, int, float]:
    async def session() -> tuple[float, int, float]:
        conn = await Connection.open(
            HOST,
            srv.dovecot.pop3s_port,
            implicit_tls=True,
            ssl_context=srv.client_context(),
            timeout=120,
        )
        try:
            await conn.receive()
            b64 = XOAuth2(user, token).initial_response_b64()
            await conn.send(b"AUTH XOAUTH2 " + b64 + b"\r\n")
            if not (await conn.receive()).startswith(b"+OK"):
                raise RuntimeError("AUTH failed")
            cpu, start = cpu_seconds(), time.perf_counter()
            total = 0
            for n in numbers:
                await conn.send(b"RETR %d\r\n" % n)
                tail = b""
                while not tail.endswith(TERMINATOR):  # the terminator may come split
                    data = await conn.receive()
                    total += len(data)
                    tail = (tail + data[-5:])[-5:]
            elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            await conn.send(b"QUIT\r\n")
        finally:
            await conn.aclose()
        return elapsed, total, cpu

    return asyncio.run(session())


def _mailoauth(mode: str) -> Variant:
    async def session(
        srv: Servers, user: str, token: str, numbers: list[int]
    ) -> tuple[float, int, float]:
        async with Pop3Client(
            HOST,
            srv.dovecot.pop3s_port,
            user,
            token,
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=srv.client_context(),
            mechanism="XOAUTH2",
            timeout=120,
        ) as pop:
            cpu, start = cpu_seconds(), time.perf_counter()
            total = 0
            if mode == "retrieve":
                for n in numbers:
                    total += len(await pop.retrieve(n))
            elif mode == "many":
                async for _, data in pop.retrieve_many(numbers):
                    total += len(data)
            else:
                for n in numbers:
                    async for chunk in pop.iter_message(n):
                        total += len(chunk)
            return time.perf_counter() - start, total, cpu_seconds() - cpu

    def run(srv: Servers, user: str, token: str, numbers: list[int]) -> tuple[float, int, float]:
        return asyncio.run(session(srv, user, token, numbers))

    return run


VARIANTS: dict[str, Variant] = {
    "bare": bare,
    "poplib": stdlib,
    "mo_retrieve": _mailoauth("retrieve"),
    "mo_many": _mailoauth("many"),
    "mo_stream": _mailoauth("stream"),
    "core_rtt": core_rtt,
}


def stream_peak(srv: Servers, user: str, token: str, number: int, mode: str) -> tuple[int, int]:
    """tracemalloc peak (bytes) above the connected baseline, and bytes received."""

    async def go() -> tuple[int, int]:
        async with Pop3Client(
            HOST,
            srv.dovecot.pop3s_port,
            user,
            token,
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=srv.client_context(),
            mechanism="XOAUTH2",
            timeout=120,
        ) as pop:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            total = 0
            if mode == "stream":
                async for chunk in pop.iter_message(number):
                    total += len(chunk)
            else:
                total = len(await pop.retrieve(number))
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            return peak, total

    return asyncio.run(go())


def measure(
    report: Report,
    srv: Servers,
    title: str,
    user: str,
    numbers: list[int],
    names: list[str],
    repeat: int,
) -> dict[str, dict[str, Samples]]:
    token = srv.token(user)
    for name in names:  # warm-up: Dovecot builds its index and UIDL cache once
        VARIANTS[name](srv, user, token, numbers)
    mbps: dict[str, Samples] = {n: Samples() for n in names}
    msgs: dict[str, Samples] = {n: Samples() for n in names}
    cpu_per_mb: dict[str, Samples] = {n: Samples() for n in names}
    # Per message, in µs: the wall time, the client's CPU, and the rest (waiting).
    wall_us: dict[str, Samples] = {n: Samples() for n in names}
    cpu_us: dict[str, Samples] = {n: Samples() for n in names}
    wait_us: dict[str, Samples] = {n: Samples() for n in names}
    sizes: dict[str, int] = {}

    def one(name: str) -> None:
        elapsed, total, cpu = VARIANTS[name](srv, user, token, numbers)
        sizes[name] = total
        mbps[name].add(total / elapsed / 1e6)
        msgs[name].add(len(numbers) / elapsed)
        cpu_per_mb[name].add(cpu / (total / 1e6) * 1000)
        wall_us[name].add(elapsed / len(numbers) * 1e6)
        cpu_us[name].add(cpu / len(numbers) * 1e6)
        wait_us[name].add((elapsed - cpu) / len(numbers) * 1e6)

    interleaved(names, repeat, one)
    t = report.table(
        title,
        "variant",
        "MB/s",
        "msgs/s",
        "spread",
        "x bare",
        "x poplib",
        "client CPU ms/MB",
        "CPU x bare",
        "CPU x poplib",
    )
    for name in names:
        t.add(
            name,
            mbps[name].median,
            msgs[name].median,
            pct(mbps[name].spread),
            mbps[name].median / mbps["bare"].median,
            mbps[name].median / mbps["poplib"].median,
            cpu_per_mb[name].median,
            cpu_per_mb[name].median / cpu_per_mb["bare"].median,
            cpu_per_mb[name].median / cpu_per_mb["poplib"].median,
        )
    report.data[title] = {
        "wire_bytes": sizes,
        "MB_per_s": {n: s.as_json() for n, s in mbps.items()},
        "msgs_per_s": {n: s.as_json() for n, s in msgs.items()},
        "client_cpu_ms_per_MB": {n: s.as_json() for n, s in cpu_per_mb.items()},
        "per_message_us": {
            n: {
                "wall": wall_us[n].as_json(),
                "cpu": cpu_us[n].as_json(),
                "wait": wait_us[n].as_json(),
            }
            for n in names
        },
    }
    return {"MB/s": mbps, "CPU": cpu_per_mb, "wall": wall_us, "cpu": cpu_us, "wait": wait_us}


def run(quick: bool = False, repeat: int | None = None) -> Report:
    big_mb = 10 if quick else 50
    n_small = 500 if quick else 2000
    repeat = repeat or (3 if quick else 9)
    report = Report("pop3", quick)
    with servers() as srv:
        srv.dovecot.deliver("big@example.test", big_message(big_mb * 1_000_000))
        srv.dovecot.deliver("five@example.test", big_message(5_000_000))
        for n in range(n_small):
            srv.dovecot.deliver("small@example.test", small_message(n))
        big_all = measure(
            report,
            srv,
            f"one {big_mb} MB message (median of {repeat}, interleaved)",
            "big@example.test",
            [1],
            ["bare", "poplib", "mo_retrieve", "mo_stream"],
            repeat,
        )
        big = big_all["MB/s"]
        small_all = measure(
            report,
            srv,
            f"{n_small:,} small messages of ~2 KB (median of {repeat}, interleaved)",
            "small@example.test",
            list(range(1, n_small + 1)),
            ["bare", "poplib", "mo_retrieve", "mo_many", "core_rtt"],
            repeat,
        )
        small, small_cpu = small_all["MB/s"], small_all["CPU"]
        split = report.table(
            "one RETR at a time: where the wall time per message goes (µs, medians)",
            "variant",
            "wall",
            "client CPU",
            "spread",
            "waiting",
            "spread",
            "client CPU for 1.2x poplib's rate",
        )
        goal = small_all["wall"]["poplib"].median / 1.2
        for name in ("poplib", "mo_retrieve", "core_rtt"):
            cpu, wait = small_all["cpu"][name], small_all["wait"][name]
            split.add(
                name,
                small_all["wall"][name].median,
                cpu.median,
                pct(cpu.spread),
                wait.median,
                pct(wait.spread),
                max(goal - wait.median, 0.0),
            )
        mem = report.table(
            "tracemalloc peak while reading one message (above the connected client)",
            "message",
            "iter_message peak",
            "retrieve peak",
        )
        peaks = {}
        for user, label in (("five@example.test", "5 MB"), ("big@example.test", f"{big_mb} MB")):
            token = srv.token(user)
            s_peak, _ = stream_peak(srv, user, token, 1, "stream")
            r_peak, _ = stream_peak(srv, user, token, 1, "retrieve")
            peaks[label] = {"stream": s_peak, "retrieve": r_peak}
            mem.add(label, f"{s_peak / 1024:,.0f} KiB", f"{r_peak / 1024:,.0f} KiB")
        report.data["tracemalloc_peak_bytes"] = peaks
    bare_big, bare_small = big["bare"].median, small["bare"].median
    report.target(
        f"retrieve, {big_mb} MB: x bare", big["mo_retrieve"].median / bare_big, 0.8, higher=True
    )
    report.target(
        f"iter_message, {big_mb} MB: x bare", big["mo_stream"].median / bare_big, 0.8, higher=True
    )
    report.target(
        f"retrieve_many, {n_small} small: x bare",
        small["mo_many"].median / bare_small,
        0.8,
        higher=True,
    )
    # Issue 13: one RETR at a time (what most users write) ahead of poplib.
    report.target(
        f"retrieve one at a time, {n_small} small: rate x poplib",
        small["mo_retrieve"].median / small["poplib"].median,
        1.2,
        higher=True,
    )
    report.target(
        f"retrieve one at a time, {n_small} small: CPU per message x poplib",
        small_cpu["mo_retrieve"].median / small_cpu["poplib"].median,
        1.0,
        higher=False,
    )
    report.target(
        f"retrieve_many, {n_small} small: x bare (issue 13)",
        small["mo_many"].median / bare_small,
        0.9,
        higher=True,
    )
    p5, pbig = peaks["5 MB"]["stream"], peaks[f"{big_mb} MB"]["stream"]
    report.target(
        f"iter_message peak, {big_mb} MB / 5 MB (flat = 1)", pbig / max(p5, 1), 1.5, higher=False
    )
    report.notes.append(
        "bare = pipelined RETRs on an ssl socket, counting terminators only; "
        "mo_retrieve, core_rtt and poplib send one RETR at a time"
    )
    report.notes.append(
        "waiting = wall - client CPU per message: the server (Dovecot's pop3-login TLS "
        "proxy and pop3, on the same 2 cores) and the scheduler; the last column is the "
        "client CPU per message at which that wait would give 1.2x poplib's rate"
    )
    return report


# -- per-message counts (load-independent): python -m benchmarks.pop3 --help -----------


class _Running:
    """The servers of ``serve``, as the variants see them, from another process."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.dovecot = SimpleNamespace(pop3s_port=info["port"])

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.info["ca"])


def _counts(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.pop3",
        description="Count what one RETR at a time costs, per message, against a Dovecot "
        "left running by 'serve': e.g. 'strace -c' or 'valgrind --tool=callgrind' "
        "around 'once' at two values of N (the difference over the messages between "
        "them is per message), or cProfile call counts with 'calls'.",
    )
    ap.add_argument("mode", choices=["serve", "once", "calls", "cpu"])
    ap.add_argument("info", help="JSON file written by serve: port, CA, token")
    ap.add_argument("variant", nargs="?", choices=sorted(VARIANTS), default="mo_retrieve")
    ap.add_argument("n", nargs="?", type=int, default=2000, help="messages 1..N (<= 2000)")
    ap.add_argument("--rounds", type=int, default=9, help="cpu: interleaved rounds")
    args = ap.parse_args(argv)
    if args.mode == "serve":
        with servers() as srv:
            for n in range(2000):
                srv.dovecot.deliver("small@example.test", small_message(n))
            info = {"port": srv.dovecot.pop3s_port, "ca": srv.ca_file}
            info["token"] = srv.token("small@example.test")
            Path(args.info).write_text(json.dumps(info))
            print("serving; Ctrl-C to stop", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return
    info = json.loads(Path(args.info).read_text())
    srv = cast(Servers, _Running(info))
    numbers = list(range(1, args.n + 1))

    def once() -> tuple[float, int, float]:
        return VARIANTS[args.variant](srv, "small@example.test", info["token"], numbers)

    if args.mode == "cpu":  # poplib, the variant and core_rtt, interleaved, CPU per message
        names = ["poplib", args.variant, "core_rtt"]
        figures = ("cpu", "wall", "user", "sys")
        got: dict[tuple[str, str], Samples] = {}

        def one(name: str) -> None:
            before = resource.getrusage(resource.RUSAGE_SELF)
            elapsed, _, cpu = VARIANTS[name](srv, "small@example.test", info["token"], numbers)
            after = resource.getrusage(resource.RUSAGE_SELF)
            # user and system time of the whole run (connect and AUTH included)
            user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
            for figure, seconds in zip(figures, (cpu, elapsed, user, system), strict=True):
                got.setdefault((name, figure), Samples()).add(seconds / args.n * 1e6)

        for name in names:
            one(name)  # warm-up
        got.clear()
        interleaved(names, args.rounds, one)
        for name in names:
            cpu = got[name, "cpu"]
            ratio = cpu.median / got["poplib", "cpu"].median
            print(
                f"{name:12} CPU {cpu.median:6.1f} µs/msg ({pct(cpu.spread)}) = {ratio:.2f}x "
                f"poplib (user {got[name, 'user'].median:.1f}, system "
                f"{got[name, 'sys'].median:.1f}); wall {got[name, 'wall'].median:.1f} µs/msg"
            )
        return
    if args.mode == "once":
        elapsed, _, cpu = once()
        per = 1e6 / args.n
        print(f"{args.variant}: {cpu * per:.1f} µs CPU, {elapsed * per:.1f} µs wall per message")
        return
    once()  # warm-up
    profile = cProfile.Profile()
    profile.runcall(once)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted(((v[1], k) for k, v in stats.items()), reverse=True)
    print(f"{args.variant}: {sum(r[0] for r in rows) / args.n:.1f} Python calls per message")
    for count, (path, line, name) in rows[:40]:
        print(f"{count / args.n:7.2f}  {Path(path).name}:{line}({name})")


if __name__ == "__main__":
    if sys.argv[1:]:
        _counts(sys.argv[1:])
    else:
        print(run(quick=True).render())
