"""Proxies on loopback for tests of ``proxy=``: real ones and two scripted ones.

- :class:`TinyProxy`: tinyproxy (Debian package ``tinyproxy``) as an HTTP CONNECT
  proxy with Basic credentials;
- :class:`MicroSocks`: microsocks (Debian package ``microsocks``) as a SOCKS5 proxy
  with a user name and password;
- :class:`RecordingProxy`: an HTTP CONNECT proxy in a thread that keeps every byte the
  client sent through each tunnel, to check what a proxy gets to see;
- :class:`StallingProxy`: accepts connections and never answers.

Each starts on a free port of ``127.0.0.1`` as a context manager and is stopped (by its
process id, for the real ones) on exit. :attr:`url` is the ``proxy=`` value, with the
credentials; :meth:`tunnels` lists the ``host:port`` each tunnel went to, from the
proxy's own log.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from mailoauth.testing._process import (
    ServerStartError,
    free_ports,
    stop_process,
    tail,
)

__all__ = ["MicroSocks", "RecordingProxy", "StallingProxy", "TinyProxy", "proxy_binary"]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def proxy_binary(name: str) -> str | None:
    """The path of ``tinyproxy`` or ``microsocks``, or None when not installed."""
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


class _ProxyProcess:
    """A proxy process on a free loopback port, its output in a temp directory."""

    name = ""
    scheme = ""

    def __init__(
        self,
        username: str = "proxyuser",
        password: str = "proxy-pass-7Qx",  # noqa: S107 (a test proxy's)
    ) -> None:
        self.username = username
        self.password = password
        self.host = HOST
        self.port = free_ports(1)[0]
        self.directory = Path(tempfile.mkdtemp(prefix=f"mo-{self.name}-"))
        self.directory.chmod(0o755)
        self.log = self.directory / "proxy.log"
        self.log.touch()
        self.log.chmod(0o666)  # tinyproxy drops privileges before it writes
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``scheme://user:password@127.0.0.1:port``: the ``proxy=`` value."""
        return f"{self.scheme}://{self.username}:{self.password}@{self.host}:{self.port}"

    def url_with(self, username: str | None, password: str | None) -> str:
        """The proxy's URL with other credentials (none when ``username`` is None)."""
        auth = "" if username is None else f"{username}:{password}@"
        return f"{self.scheme}://{auth}{self.host}:{self.port}"

    def command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Raises :class:`ServerStartError` (with the log's tail) when it does not
        listen within a few seconds, and FileNotFoundError when not installed."""
        binary = proxy_binary(self.name)
        if binary is None:
            raise FileNotFoundError(f"{self.name} is not installed (apt-get install {self.name})")
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                self.command(binary),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ServerStartError(f"{self.name} did not start on port {self.port}:\n{tail(self.log)}")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def output(self) -> str:
        """What the proxy logged so far."""
        return self.log.read_text(errors="replace")

    def tunnels(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> _ProxyProcess:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class TinyProxy(_ProxyProcess):
    """tinyproxy: HTTP CONNECT to any port, Basic credentials required."""

    name = "tinyproxy"
    scheme = "http"

    def command(self, binary: str) -> list[str]:
        conf = self.directory / "tinyproxy.conf"
        conf.write_text(
            f"Port {self.port}\nListen {self.host}\nAllow {self.host}\n"
            f"BasicAuth {self.username} {self.password}\n"
            f'LogFile "{self.log}"\nLogLevel Connect\nMaxClients 50\nTimeout 60\n'
        )
        conf.chmod(0o644)
        return [binary, "-d", "-c", str(conf)]

    def tunnels(self) -> list[str]:
        """``host:port`` of each CONNECT request, as tinyproxy logged it."""
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP", self.output())


class MicroSocks(_ProxyProcess):
    """microsocks: SOCKS5 with a user name and password."""

    name = "microsocks"
    scheme = "socks5"

    def command(self, binary: str) -> list[str]:
        return [
            binary, "-i", self.host, "-p", str(self.port), "-u", self.username, "-P", self.password,
        ]  # fmt: skip

    def tunnels(self) -> list[str]:
        """``host:port`` of each connection microsocks made for a client."""
        return re.findall(r"connected to (\S+)", self.output())


class _ThreadedProxy:
    """A listening socket on loopback, served by a daemon thread per connection."""

    def __init__(self) -> None:
        self.host = HOST
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name=type(self).__name__).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()
        # shutdown wakes the thread blocked in accept(); close alone leaves the
        # listening socket open until that accept returns.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StallingProxy(_ThreadedProxy):
    """Accepts, reads, and never answers: a proxy that has hung."""

    def __enter__(self) -> StallingProxy:
        self.start()
        return self

    def _serve(self, conn: socket.socket) -> None:
        while conn.recv(4096):
            pass


class RecordingProxy(_ThreadedProxy):
    """An HTTP CONNECT proxy (no credentials) that records, per tunnel, the request
    head (:attr:`requests`) and every byte the client sent after it (:attr:`sent`)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[bytes] = []
        self.sent: list[bytearray] = []

    def __enter__(self) -> RecordingProxy:
        self.start()
        return self

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        target = head.split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        record = bytearray(rest)
        with self._lock:
            self.requests.append(head)
            self.sent.append(record)
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            conn.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.append(upstream)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.sendall(rest)
        threading.Thread(target=_pump, args=(upstream, conn, None), daemon=True).start()
        _pump(conn, upstream, record)

    def tunnels(self) -> list[str]:
        return [r.split(b" ")[1].decode() for r in self.requests]


def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
    try:
        while data := src.recv(65536):
            if record is not None:
                record.extend(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
