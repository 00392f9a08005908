"""A real redis-server on loopback, for tests of the Redis token store and the fleet.

:class:`RedisServer` starts ``redis-server`` on a free port with its data in a temporary
directory and persistence on (``appendonly yes``), so :meth:`RedisServer.restart` (a
clean shutdown, then a start on the same port) keeps every key: what a fleet sees when
its Redis is restarted under it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from mailoauth.testing._process import (
    DEFAULT_HOST,
    POLL_INTERVAL,
    ManagedServer,
    ServerStartError,
    free_ports,
    stop_process,
    tail,
)

__all__ = ["RedisServer", "ServerStartError"]

STARTUP_TIMEOUT: Final = 20.0


def _pong(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ManagedServer):
    """``redis-server`` on ``host`` and a free port, data in ``directory`` (a temporary
    one, removed on :meth:`stop`, unless given).

    ``with RedisServer() as redis:`` starts it; :attr:`url` is its ``redis://`` URL.
    :meth:`restart` stops it cleanly (the append-only file is flushed) and starts it
    again on the same port with the same data. Raises ``FileNotFoundError`` when
    redis-server is not installed and ``ServerStartError`` (with its log's tail) when it
    does not answer PING within ``startup_timeout`` seconds.
    """

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        directory: Path | None = None,
        binary: str = "redis-server",
        appendonly: bool = True,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_ports(1, host)[0]
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mo-redis-"))
        self.binary = binary
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.log_path = self.directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        binary = shutil.which(self.binary)
        if binary is None:
            raise FileNotFoundError(f"{self.binary} not found (apt-get install redis-server)")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.starts += 1
        deadline = time.monotonic() + self.startup_timeout
        while not _pong(self.host, self.port, 1.0):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                status = self._proc.poll()
                self.stop(cleanup=False)
                raise ServerStartError(
                    f"redis-server on {self.host}:{self.port} did not answer PING "
                    f"(exit status {status})\n--- {self.log_path} ---\n{tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def restart(self) -> None:
        """Stop cleanly, then start again on the same port, keeping the data."""
        self.stop(cleanup=False)
        self.start()

    def stop(self, *, cleanup: bool = True) -> None:
        """Stop it by its pid (SIGTERM: Redis flushes its append-only file; SIGKILL after
        a while) and remove the directory if this object made it and ``cleanup``."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if cleanup and self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self) -> str:
        return tail(self.log_path)

    def __repr__(self) -> str:
        return f"RedisServer({self.url!r})"
