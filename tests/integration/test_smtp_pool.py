"""SmtpPool: many messages over a few connections sharing one token manager.

Against real Postfix (delivery checked in Dovecot over IMAP) and a scripted server that
drops a connection in the middle of a pipelined window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.message
import uuid
from typing import Any

import pytest

from mailoauth import SmtpPool
from mailoauth.errors import (
    ConfigurationError,
    ConnectionLostError,
    MailConnectionError,
    UsageError,
)
from mailoauth.imap.client import ImapClient
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SendResult
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.tokens.access_token import AccessToken
from tests.integration.conftest import MailServers
from tests.integration.smtp_script import Script, ScriptedSmtp

pytestmark = pytest.mark.asyncio

GUARD = 60.0


class CountingProvider:
    """Mints tokens from the fake OAuth server and counts the requests."""

    def __init__(self, oauth: FakeOAuthServer, username: str) -> None:
        self.oauth = oauth
        self.username = username
        self.calls = 0
        self.issued: list[str] = []

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        await asyncio.sleep(0.01)  # a network round trip, so that callers pile up
        value = self.oauth.issue_access_token(self.username)
        self.issued.append(value)
        return AccessToken(value, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))


def new_user() -> str:
    return f"pool{uuid.uuid4().hex[:10]}@example.test"


def message(user: str, n: int) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, user, f"pooled {n}"
    msg.set_content(f"message {n}\n.a dot line\n")
    return msg


def pool(servers: MailServers, user: str, token: Any, **options: Any) -> SmtpPool:
    return SmtpPool(
        "localhost",
        servers.postfix.submission_port,
        user,
        token,
        SecurityOptions.SSL_EXPLICIT,
        ssl_context=servers.client_context(),
        **options,
    )


async def subjects_in_inbox(servers: MailServers, user: str, count: int) -> list[str]:
    async with ImapClient(
        "localhost",
        servers.dovecot.imaps_port,
        user,
        servers.token(user),
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=servers.client_context(),
    ) as imap:
        for _ in range(150):  # delivery through LMTP is asynchronous
            await imap.select()
            uids = await imap.uid_search("ALL")
            if len(uids) >= count:
                break
            await asyncio.sleep(0.1)
        return [str((await imap.fetch_message(uid))["Subject"]) for uid in uids]


async def test_pool_delivers_every_message_in_order_of_results(
    mail_servers: MailServers,
) -> None:
    user = new_user()
    provider = CountingProvider(mail_servers.oauth, user)
    messages = [message(user, n) for n in range(30)]
    async with pool(mail_servers, user, provider, size=3, window=4) as smtp:
        results = await asyncio.wait_for(smtp.send_many(messages), GUARD)
        assert sum(c.connected for c in smtp.clients) == 3
    assert all(isinstance(r, SendResult) and r.refused == {} for r in results), results
    assert provider.calls == 1  # one token for the three connections
    assert not any(c.connected for c in smtp.clients)
    got = await subjects_in_inbox(mail_servers, user, 30)
    assert sorted(got) == sorted(f"pooled {n}" for n in range(30))


async def test_pool_replaces_dead_connections(mail_servers: MailServers) -> None:
    user = new_user()
    async with pool(mail_servers, user, mail_servers.token(user), size=2) as smtp:
        first = await asyncio.wait_for(smtp.send_many([message(user, n) for n in range(8)]), GUARD)
        for client in smtp.clients:  # as if the server had reset both connections
            assert client._smtp is not None and client._smtp.transport is not None
            client._smtp.transport.close()
        await asyncio.sleep(0)
        second = await asyncio.wait_for(
            smtp.send_many([message(user, n) for n in range(8, 16)]), GUARD
        )
    assert all(isinstance(r, SendResult) for r in first + second), first + second
    got = await subjects_in_inbox(mail_servers, user, 16)
    assert len(got) == 16


async def test_token_rejected_mid_pool_is_refreshed_once(mail_servers: MailServers) -> None:
    user = new_user()
    provider = CountingProvider(mail_servers.oauth, user)
    async with pool(mail_servers, user, provider, size=4, window=2) as smtp:
        await asyncio.wait_for(smtp.send_many([message(user, n) for n in range(8)]), GUARD)
        assert provider.calls == 1
        mail_servers.oauth.revoke(provider.issued[-1])
        for client in smtp.clients:  # the server drops them; reconnecting needs AUTH
            assert client._smtp is not None and client._smtp.transport is not None
            client._smtp.transport.close()
        await asyncio.sleep(0)
        results = await asyncio.wait_for(
            smtp.send_many([message(user, n) for n in range(8, 16)]), GUARD
        )
    assert all(isinstance(r, SendResult) for r in results), results
    assert provider.calls == 2  # four connections rejected the token: one refresh
    assert len(await subjects_in_inbox(mail_servers, user, 16)) == 16


async def test_a_connection_lost_mid_window_fails_only_that_window() -> None:
    # The first session is closed when its first BDAT arrives: the messages of that
    # window get the ConnectionLostError (accepted or not, nobody can tell), every
    # other message goes through, the lost connection is opened again.
    script = Script(close_on="BDAT", close_sessions=1)
    async with (
        ScriptedSmtp(script) as server,
        SmtpPool(
            "127.0.0.1",
            server.port,
            "from@example.test",
            "at-scripted",
            SecurityOptions.NONE,
            size=1,
            window=3,
            allow_insecure_auth=True,
            timeout=5.0,
        ) as smtp,
    ):
        items: list[Any] = [
            ("from@example.test", ["a@x.test"], b"Subject: %d\r\n\r\nx\r\n" % n) for n in range(7)
        ]
        results = await asyncio.wait_for(smtp.send_many(items), GUARD)
    assert [type(r).__name__ for r in results[:3]] == ["ConnectionLostError"] * 3
    assert all(isinstance(r, ConnectionLostError) for r in results[:3])
    assert all(isinstance(r, SendResult) for r in results[3:]), results
    assert len(server.sessions) == 2


async def test_connections_that_cannot_open_fail_every_message() -> None:
    async with SmtpPool(
        "127.0.0.1",
        1,
        "u@example.test",
        "at",
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        size=2,
        connect_timeout=5.0,
    ) as smtp:
        results = await asyncio.wait_for(
            smtp.send_many([("u@example.test", "a@x.test", b"x\r\n")] * 5), GUARD
        )
    assert len(results) == 5
    assert all(isinstance(r, MailConnectionError) for r in results), results


async def test_pool_arguments_and_use_after_close() -> None:
    with pytest.raises(ConfigurationError, match="size"):
        SmtpPool("127.0.0.1", 25, "u@example.test", "at", size=0)
    with pytest.raises(ConfigurationError, match="window"):
        SmtpPool("127.0.0.1", 25, "u@example.test", "at", window=0)
    p = SmtpPool("127.0.0.1", 25, "u@example.test", "at-secret-value", size=2)
    assert "at-secret-value" not in repr(p) and "size=2" in repr(p)
    await p.aclose()
    with pytest.raises(UsageError):
        await p.send_many([])
