"""Pop3Client against real Dovecot POP3, and against stdlib poplib on the same mail."""

from __future__ import annotations

import asyncio
import poplib
import uuid
from pathlib import Path
from typing import Any

import pytest

from mailoauth.errors import AuthenticationError, CommandError, ConnectionLostError, TLSError
from mailoauth.pop3 import Pop3Client
from mailoauth.sasl import XOAuth2
from mailoauth.security import SecurityOptions
from mailoauth.tokens import AccessToken, TokenProvider
from tests.integration.conftest import MailServers
from tests.integration.test_smtp_imap import IssuingProvider

pytestmark = pytest.mark.asyncio

MECHANISMS = ["XOAUTH2", "OAUTHBEARER"]
MODES = [("pop3s_port", SecurityOptions.SSL_IMPLICIT), ("pop3_port", SecurityOptions.SSL_EXPLICIT)]

TRICKY_MESSAGES = [
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\nend\r\n",
    b"Subject: no final newline\r\n\r\nlast line without CRLF",
    b"Subject: 8bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9 \xff\xfe\x80\r\n",
    b"Subject: binary-ish\r\n\r\n"
    + bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"")
    + b"\r\n",
    b"Subject: empty body\r\n\r\n",
]


def new_user() -> str:
    return f"p{uuid.uuid4().hex[:10]}@example.test"


def client(
    servers: MailServers,
    user: str,
    token: str | AccessToken | TokenProvider,
    port: str = "pop3s_port",
    security: SecurityOptions = SecurityOptions.SSL_IMPLICIT,
    **kw: Any,
) -> Pop3Client:
    return Pop3Client(
        "localhost",
        getattr(servers.dovecot, port),
        user,
        token,
        security,
        ssl_context=servers.client_context(),
        **kw,
    )


def poplib_retrieve_all(servers: MailServers, user: str, token: str) -> list[bytes]:
    """The independent implementation: stdlib poplib with AUTH XOAUTH2."""
    pop = poplib.POP3_SSL(
        "localhost", servers.dovecot.pop3s_port, context=servers.client_context(), timeout=30
    )
    try:
        pop._shortcmd("AUTH XOAUTH2 " + XOAuth2(user, token).initial_response_b64().decode())  # type: ignore[attr-defined]
        count, _ = pop.stat()
        out = []
        for n in range(1, count + 1):
            _, lines, _ = pop.retr(n)
            out.append(b"\r\n".join(lines) + b"\r\n")
        return out
    finally:
        pop.quit()


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(("port", "security"), MODES)
async def test_every_command(
    mail_servers: MailServers, mechanism: str, port: str, security: SecurityOptions
) -> None:
    user = new_user()
    for i in range(3):
        mail_servers.dovecot.deliver(
            user, f"Subject: m{i}\r\n\r\nline one\r\nline two {i}\r\n".encode()
        )
    token = mail_servers.token(user)
    async with client(mail_servers, user, token, port, security, mechanism=mechanism) as pop:
        assert pop.mechanism_used == mechanism
        caps = await pop.capabilities()
        assert "UIDL" in caps and "PIPELINING" in caps
        stat = await pop.stat()
        assert stat.count == 3
        sizes = await pop.list()
        assert sorted(sizes) == [1, 2, 3] and sum(sizes.values()) == stat.size
        uids = await pop.uidl()
        assert len(set(uids.values())) == 3
        assert (await pop.retrieve_message(2))["Subject"] == "m1"
        assert await pop.top(3, 1) == b"Subject: m2\r\n\r\nline one\r\n"
        got = [n async for n, _ in pop.retrieve_many([3, 1, 2])]
        assert got == [3, 1, 2]
        await pop.noop()
        await pop.delete(1)
        with pytest.raises(CommandError, match="-ERR"):
            await pop.retrieve(1)  # deleted in this session
        await pop.reset()
        await pop.retrieve(1)
        await pop.delete(3)
    # A clean exit sent QUIT: the deletion took effect.
    async with client(mail_servers, user, token) as pop:
        assert (await pop.stat()).count == 2


async def test_stls_required_but_not_offered(mail_servers: MailServers) -> None:
    user = new_user()
    host = mail_servers.dovecot.no_starttls_host
    port = mail_servers.dovecot.pop3_no_starttls_port
    assert host is not None and port is not None
    with pytest.raises(TLSError, match="does not offer STLS"):
        async with Pop3Client(host, port, user, mail_servers.token(user), SecurityOptions.AUTO):
            pass
    async with Pop3Client(
        host, port, user, mail_servers.token(user), SecurityOptions.NONE, allow_insecure_auth=True
    ) as pop:
        assert (await pop.stat()).count == 0


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_revoked_token_refreshed_and_retried_once(
    mail_servers: MailServers, mechanism: str
) -> None:
    user = new_user()
    provider = IssuingProvider(mail_servers.oauth, user)
    async with client(mail_servers, user, provider, mechanism=mechanism) as pop:
        await pop.stat()
    mail_servers.oauth.revoke(provider.issued[-1])
    async with client(mail_servers, user, provider, mechanism=mechanism) as pop:
        await pop.stat()
    assert provider.calls == 2


async def test_rejected_twice_carries_the_server_reply(mail_servers: MailServers) -> None:
    user = new_user()
    token = mail_servers.token("not-" + user)
    with pytest.raises(AuthenticationError) as info:
        async with client(mail_servers, user, token):
            pass
    assert info.value.server_reply.startswith("-ERR [AUTH]")
    assert info.value.challenge is not None
    assert info.value.challenge.status in ("401", "invalid_token")


async def test_error_inside_the_session_deletes_nothing(mail_servers: MailServers) -> None:
    user = new_user()
    for i in range(3):
        mail_servers.dovecot.deliver(user, f"Subject: keep {i}\r\n\r\nx\r\n".encode())
    token = mail_servers.token(user)
    with pytest.raises(RuntimeError):
        async with client(mail_servers, user, token) as pop:
            for n in (1, 2, 3):
                await pop.delete(n)
            raise RuntimeError("the caller's code failed after DELE")
    async with client(mail_servers, user, token) as pop:
        assert (await pop.stat()).count == 3


async def test_connection_dropped_mid_retr_loses_nothing(mail_servers: MailServers) -> None:
    user = new_user()
    big = b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n"
    mail_servers.dovecot.deliver(user, big * 1)
    mail_servers.dovecot.deliver(user, b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 40000)
    token = mail_servers.token(user)
    pop = client(mail_servers, user, token)
    await pop.connect()
    await pop.delete(1)
    chunks = 0
    with pytest.raises(ConnectionLostError):
        async for _chunk in pop.iter_message(2):
            chunks += 1
            assert pop._conn is not None
            assert pop._conn._raw is not None
            pop._conn._raw.abort()  # the network drops under the transfer
    assert chunks >= 1
    with pytest.raises(ConnectionLostError):
        await pop.stat()
    await pop.aclose()
    async with client(mail_servers, user, token) as pop:
        assert (await pop.stat()).count == 2  # nothing deleted, nothing lost


async def test_streaming_to_file_and_cancellation(
    mail_servers: MailServers, tmp_path: Path
) -> None:
    user = new_user()
    body = b"Subject: file\r\n\r\n" + (b"z" * 998 + b"\r\n") * 3000
    mail_servers.dovecot.deliver(user, body)
    token = mail_servers.token(user)
    async with client(mail_servers, user, token) as pop:
        written = await pop.retrieve_to_file(1, tmp_path / "m.eml")
        assert written == len(body) and (tmp_path / "m.eml").read_bytes() == body
        await pop.delete(1)
        task = asyncio.ensure_future(pop.retrieve(1))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await pop.abort()
    async with client(mail_servers, user, token) as pop:
        assert (await pop.stat()).count == 1


async def test_identical_bytes_to_poplib(mail_servers: MailServers) -> None:
    user = new_user()
    for message in TRICKY_MESSAGES:
        mail_servers.dovecot.deliver(user, message)
    token = mail_servers.token(user)
    async with client(mail_servers, user, token) as pop:
        ours = [await pop.retrieve(n) for n in range(1, len(TRICKY_MESSAGES) + 1)]
        pipelined = [
            data async for _, data in pop.retrieve_many(range(1, len(TRICKY_MESSAGES) + 1))
        ]
    theirs = await asyncio.to_thread(poplib_retrieve_all, mail_servers, user, token)
    assert ours == pipelined
    # poplib drops line ends and re-joins with CRLF: compare on that footing, and ours
    # byte-exact against what was stored (Dovecot adds the CRLF a message lacks).
    assert [m if m.endswith(b"\r\n") else m + b"\r\n" for m in ours] == theirs
    for stored, got in zip(TRICKY_MESSAGES, ours, strict=True):
        assert got == stored or got == stored + b"\r\n"


async def test_50_mb_message_matches_poplib(mail_servers: MailServers) -> None:
    user = new_user()
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 .,;:!?\r\n"
    body = b"Subject: 50MB\r\n\r\n" + (line + b".dotted\r\n") * (50_000_000 // (len(line) + 9))
    mail_servers.dovecot.deliver(user, body)
    token = mail_servers.token(user)
    async with client(mail_servers, user, token, timeout=120) as pop:
        ours = await pop.retrieve(1)
        streamed = 0
        largest = 0
        async for chunk in pop.iter_message(1):
            streamed += len(chunk)
            largest = max(largest, len(chunk))
    assert ours == body and streamed == len(body)
    assert largest <= 1 << 20  # bounded by the chunk size, not the message size
    theirs = await asyncio.to_thread(poplib_retrieve_all, mail_servers, user, token)
    assert theirs == [body]
