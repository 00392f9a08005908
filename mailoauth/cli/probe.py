"""The steps before authentication, one at a time, for ``mailoauth check``.

The clients do connect, TLS and capabilities in one ``connect()``; to time and report
each step, the check first walks them on a connection of its own (through the same
connection core, so the TLS policy is the library's), reads the greeting and the
capabilities, and leaves with QUIT/LOGOUT. Only single lines and the three protocols'
simple multi-line capability replies are read here, each bounded by
:data:`MAX_PROBE_LINE` and :data:`MAX_PROBE_LINES`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailoauth._core.connection import Connection
from mailoauth._core.dialer import Dialer
from mailoauth.cli.output import Timer
from mailoauth.errors import (
    LimitExceededError,
    MailOAuthError,
    MailTimeoutError,
    ProtocolError,
    TLSError,
)

__all__ = ["MAX_PROBE_LINE", "MAX_PROBE_LINES", "ProbeResult", "probe"]

#: Longest line the probe reads (octets); a capability list fits many times over.
MAX_PROBE_LINE = 8192
#: Most lines in one reply the probe reads.
MAX_PROBE_LINES = 200

StepCallback = Callable[[str, str, Timer], None]


@dataclass
class ProbeResult:
    """What the probe saw: greeting, TLS parameters and the SASL mechanisms offered."""

    greeting: str = ""
    tls_version: str | None = None
    cipher: str | None = None
    mechanisms: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    certificate_names: list[str] = field(default_factory=list)
    """The DNS names and IP addresses the server's certificate holds."""


class _Lines:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.buffer = b""

    def reset(self) -> None:
        self.buffer = b""  # nothing sent before the TLS handshake counts after it

    async def line(self) -> str:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_PROBE_LINE:
                raise LimitExceededError(
                    f"{self.conn.host} sent a line over {MAX_PROBE_LINE} octets"
                )
            self.buffer += await self.conn.receive()
        raw, _, self.buffer = self.buffer.partition(b"\n")
        return raw.rstrip(b"\r").decode("utf-8", "replace")

    async def send(self, text: str) -> None:
        await self.conn.send(text.encode("ascii") + b"\r\n")


async def _smtp_reply(lines: _Lines) -> list[str]:
    reply = []
    for _ in range(MAX_PROBE_LINES):
        line = await lines.line()
        reply.append(line)
        if len(line) < 4 or line[3] != "-":
            return reply
    raise LimitExceededError(f"SMTP reply over {MAX_PROBE_LINES} lines")


async def _imap_tagged(lines: _Lines, tag: str) -> list[str]:
    reply = []
    for _ in range(MAX_PROBE_LINES):
        line = await lines.line()
        reply.append(line)
        if line.startswith(tag + " "):
            return reply
    raise LimitExceededError(f"IMAP reply over {MAX_PROBE_LINES} lines")


async def _pop3_multiline(lines: _Lines) -> list[str]:
    first = await lines.line()
    if not first.startswith("+OK"):
        return [first]
    reply = [first]
    for _ in range(MAX_PROBE_LINES):
        line = await lines.line()
        if line == ".":
            return reply
        reply.append(line)
    raise LimitExceededError(f"POP3 reply over {MAX_PROBE_LINES} lines")


def _record_tls(conn: Connection, result: ProbeResult) -> None:
    ssl_object = conn.extra("ssl_object")
    if isinstance(ssl_object, ssl.SSLObject):
        result.tls_version = ssl_object.version()
        cipher = ssl_object.cipher()
        result.cipher = cipher[0] if cipher else None
        cert: dict[str, Any] = dict(ssl_object.getpeercert() or {})
        names = [
            str(pair[1])
            for pair in cert.get("subjectAltName", ())
            if pair[0] in ("DNS", "IP Address")
        ]
        result.certificate_names = names or [
            str(pair[1])
            for rdn in cert.get("subject", ())
            for pair in rdn
            if pair[0] == "commonName"
        ]


async def probe(
    protocol: str,
    host: str,
    port: int,
    *,
    implicit_tls: bool,
    starttls: bool,
    ssl_context: ssl.SSLContext,
    timeout: float,
    on_step: StepCallback,
    dialer: Dialer | None = None,
) -> ProbeResult:
    """Connect (``on_step("CONNECT", ...)``), set up TLS (``"TLS"``) and read the
    capabilities (``"CAPS"``). Raises the library's errors: TLSError,
    MailConnectionError, MailTimeoutError, ProtocolError."""
    result = ProbeResult()
    timer = Timer()
    conn = await Connection.open(
        host, port, implicit_tls=False, ssl_context=ssl_context, timeout=timeout, dialer=dialer
    )
    on_step("CONNECT", f"TCP connection to {host}:{port}", timer)
    lines = _Lines(conn)
    try:
        if implicit_tls:
            timer = Timer()
            await conn.start_tls()
            _record_tls(conn, result)
            on_step("TLS", _tls_text("implicit TLS", result), timer)
        timer = Timer()
        try:
            result.greeting = await _greeting(protocol, lines)
        except MailTimeoutError as exc:
            raise MailTimeoutError(f"{host}:{port} sent no greeting within {timeout:g} s") from exc
        caps = await _read_caps(protocol, lines, "c1")
        if starttls:
            await _starttls(protocol, lines, caps, host, port)
            await conn.start_tls()
            lines.reset()
            _record_tls(conn, result)
            on_step("TLS", _tls_text("STARTTLS", result), timer)
            timer = Timer()
            caps = await _read_caps(protocol, lines, "c3")
        result.capabilities = caps
        result.mechanisms = _mechanisms(protocol, caps)
        offered = ", ".join(result.mechanisms) or "none"
        on_step("CAPS", f"greeting {result.greeting[:60]!r}; SASL mechanisms: {offered}", timer)
        with contextlib.suppress(MailOAuthError):
            await lines.send("c9 LOGOUT" if protocol == "imap" else "QUIT")
    finally:
        await conn.aclose()
    return result


def _tls_text(how: str, result: ProbeResult) -> str:
    params = ", ".join(p for p in (result.tls_version, result.cipher) if p)
    return f"{how} established, certificate verified ({params})"


async def _greeting(protocol: str, lines: _Lines) -> str:
    if protocol == "smtp":
        reply = await _smtp_reply(lines)
        if not reply[0].startswith("220"):
            raise ProtocolError(f"the SMTP server greeted with {reply[0]!r}")
        return reply[0]
    line = await lines.line()
    ok = "* OK" if protocol == "imap" else "+OK"
    if not line.startswith(ok) and not line.startswith("* PREAUTH"):
        raise ProtocolError(f"the {protocol.upper()} server greeted with {line[:100]!r}")
    return line


async def _read_caps(protocol: str, lines: _Lines, tag: str) -> list[str]:
    if protocol == "smtp":
        await lines.send("EHLO localhost")
        reply = await _smtp_reply(lines)
        if not reply[0].startswith("250"):
            raise ProtocolError(f"the SMTP server refused EHLO: {reply[0]!r}")
        return [line[4:] for line in reply[1:]]
    if protocol == "imap":
        await lines.send(f"{tag} CAPABILITY")
        reply = await _imap_tagged(lines, tag)
        caps: list[str] = []
        for line in reply:
            if line.upper().startswith("* CAPABILITY "):
                caps.extend(line.split()[2:])
        return caps
    await lines.send("CAPA")
    reply = await _pop3_multiline(lines)
    if not reply[0].startswith("+OK"):
        raise ProtocolError(f"the POP3 server refused CAPA: {reply[0]!r}")
    return reply[1:]


async def _starttls(protocol: str, lines: _Lines, caps: list[str], host: str, port: int) -> None:
    upper = [c.upper() for c in caps]
    verb = {"smtp": "STARTTLS", "imap": "c2 STARTTLS", "pop3": "STLS"}[protocol]
    if not any(c.split()[0] in ("STARTTLS", "STLS") for c in upper if c):
        raise TLSError(
            f"{host}:{port} does not offer STARTTLS (capabilities: {', '.join(caps[:12])})"
        )
    await lines.send(verb)
    if protocol == "smtp":
        reply = (await _smtp_reply(lines))[-1]
        ok = reply.startswith("220")
    elif protocol == "imap":
        reply = (await _imap_tagged(lines, "c2"))[-1]
        ok = reply.upper().startswith("C2 OK")
    else:
        reply = await lines.line()
        ok = reply.startswith("+OK")
    if not ok:
        raise TLSError(f"{host}:{port} refused STARTTLS: {reply[:100]!r}")


def _mechanisms(protocol: str, caps: list[str]) -> list[str]:
    found: list[str] = []
    for cap in caps:
        words = cap.split()
        if not words:
            continue
        head = words[0].upper()
        if protocol == "imap" and head.startswith("AUTH="):
            found.append(head[5:])
        elif head == {"smtp": "AUTH", "pop3": "SASL"}.get(protocol):
            found.extend(w.upper() for w in words[1:])
    return list(dict.fromkeys(found))
