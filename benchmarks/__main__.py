"""``python -m benchmarks [names...] [--quick] [--repeat N]``: run, print, record.

Each name is a module of this package with ``run(quick, repeat) -> Report``; its
tables are printed and written to ``benchmarks/results/<name>.json``
(``<name>-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time

BENCHMARKS = {
    "pop3": "POP3 retrieval vs poplib and a bare TLS socket reader; streaming memory",
    "token_single_flight": "1,000 concurrent callers with an expired token",
    "imap_polling": "N mailboxes: connect, auth, select, UID SEARCH UNSEEN",
    "smtp": "500 messages to Postfix: one STARTTLS connection, and SmtpPool",
    "idle_memory": "RSS per idle IMAP IDLE connection; 10,000 held, new-message latency",
    "tls_resume": "TLS session resumption: reconnects and polls, resumed vs full handshakes",
    "pop3_parser": "the sans-IO POP3 parser alone vs a bare terminator scan (no sockets)",
    "fleet": "N IMAP IDLE mailboxes over 3 fleet workers vs 1: latency, takeover, memory",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"default: all of {', '.join(BENCHMARKS)}")
    ap.add_argument("--quick", action="store_true", help="smaller N, fewer repeats")
    ap.add_argument("--repeat", type=int, default=None, help="override the repeat count")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, what in BENCHMARKS.items():
            print(f"{name:22} {what}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}; see --list")
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    failed = []
    for name in args.names or list(BENCHMARKS):
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        try:
            report = module.run(quick=args.quick, repeat=args.repeat)
        except Exception as exc:  # one broken benchmark must not hide the others
            print(f"== {name}: FAILED: {exc!r}", flush=True)
            failed.append(name)
            continue
        print(report.render(), flush=True)
        path = report.write(command.strip())
        where = path.relative_to(path.parents[2])
        print(f"({time.perf_counter() - start:.0f} s; recorded in {where})\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
