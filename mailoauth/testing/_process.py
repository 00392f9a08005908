"""Process plumbing shared by the real-server fixtures: ports, readiness, stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40
POLL_INTERVAL = 0.02


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


def wait_until_ready(
    endpoints: list[tuple[str, int]],
    sockets: list[Path],
    proc: subprocess.Popen[bytes] | None,
    deadline: float,
) -> str | None:
    """Poll until every TCP endpoint accepts and every unix socket exists.

    Returns ``None`` when ready, else why not (timeout or the process exited).
    """
    pending_tcp = list(endpoints)
    pending_unix = list(sockets)
    while pending_tcp or pending_unix:
        if proc is not None and proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        if time.monotonic() > deadline:
            waiting = [f"{h}:{p}" for h, p in pending_tcp] + [str(p) for p in pending_unix]
            return f"not ready in time; still waiting for {', '.join(waiting)}"
        pending_unix = [p for p in pending_unix if not p.exists()]
        still: list[tuple[str, int]] = []
        for host, port in pending_tcp:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    pass
            except OSError:
                still.append((host, port))
        pending_tcp = still
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
