"""What every benchmark shares: the real servers, statistics, tables, JSON records,
CPU and memory probes, and fresh-subprocess workers.

Every benchmark starts its own FakeOAuthServer + Dovecot (+ Postfix) on loopback from
:mod:`mailoauth.testing`, runs the variants side by side in one run (interleaved and
repeated, since the machine is shared), and reports medians and ratios.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailoauth.testing.certs import TestCA
from mailoauth.testing.dovecot import DovecotServer
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.postfix import PostfixServer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"  # the certificate names 127.0.0.1; "localhost" may try ::1 first
MAX_SESSIONS = 1200


# -- servers -------------------------------------------------------------------------


@dataclass
class Servers:
    """The running servers and what a client needs to reach them."""

    root: Path
    ca: TestCA
    oauth: FakeOAuthServer
    dovecot: DovecotServer
    postfix: PostfixServer | None

    @property
    def ca_file(self) -> str:
        return str(self.ca.files.ca)

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.ca_file)

    def token(self, user: str) -> str:
        return self.oauth.issue_access_token(user)


def client_context(ca_file: str) -> ssl.SSLContext:
    """The TLS context every variant uses: verifies the test CA and the host name."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)


@contextlib.contextmanager
def servers(*, postfix: bool = False, max_sessions: int = MAX_SESSIONS) -> Iterator[Servers]:
    """Start the token server, Dovecot and (optionally) Postfix in a fresh directory."""
    root = Path(tempfile.mkdtemp(prefix="mo-"))
    root.chmod(0o755)  # dovecot, dovenull and postfix must traverse it
    try:
        ca = TestCA(root / "ca")
        with FakeOAuthServer() as oauth:
            dovecot = DovecotServer(
                oauth.introspection_url,
                ca.files,
                directory=root / "dc",
                max_sessions=max_sessions,
            )
            with dovecot:
                if not postfix:
                    yield Servers(root, ca, oauth, dovecot, None)
                    return
                pf = PostfixServer(
                    ca.files,
                    dovecot.auth_socket,
                    dovecot.lmtp_socket,
                    directory=root / "pf",
                    max_sessions=max_sessions,
                )
                with pf:
                    yield Servers(root, ca, oauth, dovecot, pf)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- statistics ----------------------------------------------------------------------


@dataclass
class Samples:
    """Repeated measurements of one figure; reported as median and spread."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """(max - min) / median, as a fraction."""
        m = self.median
        return (max(self.values) - min(self.values)) / m if m else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "spread": self.spread,
            "values": self.values,
        }


def interleaved(
    variants: Sequence[str], repeat: int, run: Callable[[str], None], *, rotate: bool = True
) -> None:
    """Run every variant ``repeat`` times, interleaved, rotating the order each round so
    that no variant always runs first (warm caches) or last."""
    order = list(variants)
    for r in range(repeat):
        k = r % len(order) if rotate else 0
        for name in order[k:] + order[:k]:
            run(name)


# -- CPU and memory ------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes() -> int:
    """VmRSS of this process, after a full collection."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def raise_nofile(minimum: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < minimum:
        target = minimum if hard == resource.RLIM_INFINITY else min(max(minimum, soft), hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- fresh-subprocess workers --------------------------------------------------------


def run_worker(module: str, spec: dict[str, Any], *, timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m <module> --worker SPEC_FILE`` in a fresh interpreter and return
    the JSON it prints last. The spec (which holds tokens) goes through a 0600 file,
    never the command line."""
    fd, path = tempfile.mkstemp(prefix="mo-bench-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        proc = subprocess.run(
            [sys.executable, "-m", module, "--worker", path],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def load_spec(argv: Sequence[str]) -> dict[str, Any] | None:
    """The worker spec if this process was started by :func:`run_worker`, else None."""
    if len(argv) >= 3 and argv[1] == "--worker":
        return dict(json.loads(Path(argv[2]).read_text()))
    return None


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


# -- reporting -----------------------------------------------------------------------


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def render(self) -> str:
        cells = [self.columns] + [[fmt(c) for c in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [self.title]
        for k, row in enumerate(cells):
            lines.append(
                "  "
                + "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
            if k == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def pct(spread: float) -> str:
    return f"±{spread * 50:.0f}%"  # half the range, around the median


@dataclass
class Target:
    what: str
    measured: float
    limit: float
    higher_is_better: bool

    @property
    def met(self) -> bool:
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def as_row(self) -> list[Any]:
        op = ">=" if self.higher_is_better else "<="
        return [self.what, f"{self.measured:.2f}", f"{op} {self.limit:g}", _yes(self.met)]


def _yes(ok: bool) -> str:
    return "met" if ok else "NOT MET"


@dataclass
class Report:
    """One benchmark's output: tables, targets, notes; printed and written as JSON."""

    name: str
    quick: bool
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def table(self, title: str, *columns: str) -> Table:
        t = Table(title, list(columns))
        self.tables.append(t)
        return t

    def target(self, what: str, measured: float, limit: float, *, higher: bool) -> None:
        self.targets.append(Target(what, measured, limit, higher))

    def render(self) -> str:
        parts = [f"== {self.name}{' (quick)' if self.quick else ''} =="]
        parts += [t.render() for t in self.tables]
        if self.targets:
            tt = Table("targets", ["target", "measured", "limit", ""])
            for t in self.targets:
                tt.add(*t.as_row())
            parts.append(tt.render())
        parts += [f"note: {n}" for n in self.notes]
        return "\n\n".join(parts)

    def write(self, command: str) -> Path:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{self.name}{'-quick' if self.quick else ''}.json"
        record = {
            "benchmark": self.name,
            "command": command,
            "quick": self.quick,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "machine": machine(),
            "tables": [
                {"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables
            ],
            "targets": [
                {
                    "what": t.what,
                    "measured": t.measured,
                    "limit": t.limit,
                    "higher_is_better": t.higher_is_better,
                    "met": t.met,
                }
                for t in self.targets
            ],
            "notes": self.notes,
            "data": self.data,
        }
        path.write_text(json.dumps(record, indent=1, default=str) + "\n")
        return path


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in load],
        "openssl": ssl.OPENSSL_VERSION,
    }
