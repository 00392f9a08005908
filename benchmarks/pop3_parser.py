"""The sans-IO POP3 parser alone (no sockets): :mod:`benchmarks.bench_pop3_parser`
run through the package's reporting, so its figures land in ``results/`` too.

A micro-benchmark of the parser against a bare terminator scan over the same chunks;
see that module's docstring for the three content shapes.
"""

from __future__ import annotations

from benchmarks._common import Report
from benchmarks.bench_pop3_parser import bare, best_times, make_wire, parser, split


def run(quick: bool = False, repeat: int | None = None) -> Report:
    size_mb = 10 if quick else 50
    repeat = repeat or (3 if quick else 7)
    report = Report("pop3_parser", quick)
    t = report.table(
        f"{size_mb} MB RETR response in 64 KiB chunks (best of {repeat}, interleaved)",
        "content",
        "bare MB/s",
        "Pop3Protocol MB/s",
        "x bare",
    )
    for kind in ("text", "base64", "prose"):
        wire = make_wire(kind, size_mb * 1024 * 1024)
        t_bare, t_parser = best_times([bare, parser], split(wire), repeat)
        mb = len(wire) / 1e6
        t.add(kind, mb / t_bare, mb / t_parser, t_bare / t_parser)
        report.data[kind] = {"bare_s": t_bare, "parser_s": t_parser, "wire_bytes": len(wire)}
    return report
