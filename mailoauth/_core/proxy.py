"""Mail connections through a corporate proxy: HTTP CONNECT or SOCKS5.

A :class:`ProxyDialer` is a :class:`~mailoauth._core.dialer.Dialer`: it reaches the
proxy with an inner dialer, asks it (with the handshake of python-socks, the ``proxy``
extra) for a tunnel to the mail server, and hands the tunnelled socket to the core,
which runs TLS, STARTTLS and the deadlines over it as over any other socket. The proxy
sees the server's name and port, then only TLS bytes (or, with
``SecurityOptions.NONE``, what the caller allowed in clear).

The proxy is named by a URL, :class:`ProxyURL`: ``http://user:pass@host:port`` (HTTP
CONNECT, Basic credentials) or ``socks5://user:pass@host:port`` (SOCKS5; the proxy
resolves the server's name, as ``socks5h`` means elsewhere). The password never appears
in a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from typing import Any, Final, cast

from mailoauth._core.dialer import DIRECT, Dialer, DialResult
from mailoauth._util.proxyurl import ProxyURL, proxy_from_environment
from mailoauth.errors import ConfigurationError

__all__ = ["ProxyDialer", "ProxyURL", "proxy_from_environment"]

#: The longest answer to CONNECT read before giving up on the proxy (bytes).
MAX_CONNECT_REPLY: Final = 16384


class _Forward:
    """What python-socks calls ``forward``: how the proxy itself is reached. Here the
    inner dialer, so that a routed or custom dialer reaches the proxy."""

    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self.timeout = 0.0

    async def connect(
        self, dest_host: str, dest_port: int, timeout: float | None = None, **_: Any
    ) -> Any:
        result = await self.dialer.connect(dest_host, dest_port, timeout=self.timeout)
        return result.sock


class ProxyDialer:
    """Reach ``host:port`` through ``proxy`` (HTTP CONNECT or SOCKS5), the proxy
    itself reached with ``inner`` (default: directly).

    Needs python-socks: ``pip install 'mailoauth[proxy]'`` (checked when made:
    :class:`~mailoauth.errors.ConfigurationError` names the command). The handshake is
    bounded by the connect deadline the core enforces; a proxy that refuses or cannot
    reach the server raises :class:`OSError` (:class:`~mailoauth.errors.MailConnectionError`
    to the caller) naming the proxy -- without its password -- and the proxy's answer.
    """

    def __init__(self, proxy: str | ProxyURL, *, inner: Dialer | None = None) -> None:
        self.proxy = ProxyURL.parse(proxy)
        self.inner: Dialer = inner if inner is not None else DIRECT
        if self.proxy.scheme == "socks5":
            _python_socks()

    async def connect(self, host: str, port: int, *, timeout: float) -> DialResult:
        """Raises :class:`OSError` naming the proxy when the proxy cannot be reached,
        refuses the credentials or the tunnel, or closes the connection."""
        where = f"{'HTTP CONNECT' if self.proxy.scheme == 'http' else 'SOCKS5'} proxy {self.proxy}"
        if self.proxy.scheme == "http":
            try:
                dialled = await self.inner.connect(
                    self.proxy.host, self.proxy.port, timeout=timeout
                )
            except OSError as exc:
                raise OSError(f"could not reach the {where}: {exc.strerror or exc}") from exc
            try:
                await _http_connect(dialled.sock, host, port, self.proxy, where)
            except BaseException:
                dialled.sock.close()
                raise
            return DialResult(dialled.sock)
        return DialResult(await self._socks5(host, port, timeout, where))

    async def _socks5(self, host: str, port: int, timeout: float, where: str) -> socket.socket:
        socks = _python_socks()
        from python_socks.async_.asyncio import Proxy

        forward = _Forward(self.inner)
        forward.timeout = timeout
        tunnel = Proxy(
            socks.ProxyType.SOCKS5,
            self.proxy.host,
            self.proxy.port,
            username=self.proxy.username,
            password=self.proxy.password,
            rdns=True,  # the proxy resolves the name (socks5h), as corporate networks need
            forward=cast(Any, forward),
        )
        try:
            sock: socket.socket = await tunnel.connect(host, port, timeout=timeout)
        except socks.ProxyTimeoutError as exc:
            raise TimeoutError(
                f"the {where} did not open a tunnel to {host}:{port} in time"
            ) from exc
        except socks.ProxyError as exc:
            raise OSError(
                f"the {where} refused the tunnel to {host}:{port}: {_reply(exc)}"
                f"{_proxy_hint(getattr(exc, 'error_code', None), str(exc), self.proxy)}"
            ) from None
        except OSError as exc:
            raise OSError(f"could not reach the {where}: {exc.strerror or exc}") from exc
        return sock

    def __repr__(self) -> str:
        return f"ProxyDialer({str(self.proxy)!r}, inner={self.inner!r})"


def _reply(exc: BaseException) -> str:
    """The proxy's answer, as python-socks reports it (it never includes credentials)."""
    return str(exc) or type(exc).__name__


async def _http_connect(
    sock: socket.socket, host: str, port: int, proxy: ProxyURL, where: str
) -> None:
    """The HTTP CONNECT handshake (RFC 9110 section 9.3.6) on ``sock``, with h11.

    The reply is read a byte at a time up to its blank line: mail servers speak first,
    and a greeting that arrives in the same packet as the proxy's ``200`` must stay in
    the socket for the core (python-socks' HTTP connector reads a whole buffer and
    would drop it). Raises :class:`OSError` naming the proxy's answer."""
    import h11

    loop = asyncio.get_running_loop()
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    headers = [("Host", target)]
    if proxy.username is not None:
        userpass = f"{proxy.username}:{proxy.password or ''}".encode()
        headers.append(("Proxy-Authorization", "Basic " + base64.b64encode(userpass).decode()))
    conn = h11.Connection(h11.CLIENT)
    await loop.sock_sendall(
        sock, conn.send(h11.Request(method="CONNECT", target=target, headers=headers)) or b""
    )
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        if len(head) > MAX_CONNECT_REPLY:
            raise OSError(f"the {where} sent a reply longer than {MAX_CONNECT_REPLY} bytes")
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            raise OSError(
                f"the {where} closed the connection instead of answering CONNECT "
                f"{target}" + ("" if head else " (is it an HTTP proxy?)")
            )
        head += byte
    conn.receive_data(bytes(head))
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise OSError(f"the {where} answered CONNECT with something not HTTP: {exc}") from None
    if not isinstance(event, h11.Response):
        raise OSError(f"the {where} sent no complete answer to CONNECT {target}")
    if not 200 <= event.status_code < 300:
        reason = event.reason.decode("latin-1", "replace")
        raise OSError(
            f"the {where} refused the tunnel to {target}: {event.status_code} {reason}"
            f"{_proxy_hint(event.status_code, reason, proxy)}"
        )


def _proxy_hint(code: object, reply: str, proxy: ProxyURL) -> str:
    if code in (401, 407) or "authentication" in reply.lower():
        if proxy.username is None:
            return (
                f" (the proxy wants credentials and none were given: "
                f"proxy={proxy.scheme}://USER:PASSWORD@{proxy.netloc})"
            )
        return f" (check the user name {proxy.username!r} and the password in proxy=)"
    if code == 403:
        return " (the proxy's rules forbid this server or port)"
    return ""


def _python_socks() -> Any:
    try:
        import python_socks
    except ImportError as exc:
        raise ConfigurationError(
            f"a proxy for mail connections needs python-socks ({exc.name} is not "
            f"installed): pip install 'mailoauth[proxy]'"
        ) from None
    return python_socks
