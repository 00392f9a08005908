"""Process plumbing shared by the real-server fixtures: ports, readiness, stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.02
PROBE_TIMEOUT = 2.0


class ManagedServer:
    """A real server a test starts and stops: ``with`` starts it, leaving the block
    stops it (by its pid) and removes the directory the server made for itself."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, *, cleanup: bool = True) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries the tail of its log."""


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """``count`` distinct free TCP ports on ``host``, found by binding to port 0.

    All sockets are held open together so that the ports differ; another process may
    still take one before the server binds it, which is an accepted test-only race.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Probe:
    """A listener that is ready once it greets with ``banner`` (over TLS if ``tls``).

    Reading the greeting, not just connecting, matters: it proves the server's worker
    processes finished starting, so a stop right after start is not held up by them.
    """

    host: str
    port: int
    banner: bytes
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def ready(self, timeout: float) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                if not self.tls:
                    return sock.recv(len(self.banner)).startswith(self.banner)
                # Readiness only: whose certificate it is gets checked by the tests.
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with ctx.wrap_socket(sock) as tls:
                    return tls.recv(len(self.banner)).startswith(self.banner)
        except OSError:
            return False


def wait_until_ready(
    probes: list[Probe],
    sockets: list[Path],
    proc: subprocess.Popen[bytes] | None,
    deadline: float,
) -> str | None:
    """Poll until every probe gets its greeting and every unix socket exists.

    Returns ``None`` when ready, else why not (timeout or the process exited).
    """
    pending_tcp = list(probes)
    pending_unix = list(sockets)
    while pending_tcp or pending_unix:
        if proc is not None and proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        left = deadline - time.monotonic()
        if left <= 0:
            waiting = [str(p) for p in pending_tcp] + [str(p) for p in pending_unix]
            return f"not ready in time; still waiting for {', '.join(waiting)}"
        pending_unix = [p for p in pending_unix if not p.exists()]
        pending_tcp = [p for p in pending_tcp if not p.ready(timeout=min(left, PROBE_TIMEOUT))]
        if pending_tcp or pending_unix:
            time.sleep(POLL_INTERVAL)
    return None


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM ``proc``, wait, then SIGKILL its process group (it was started in its own)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
