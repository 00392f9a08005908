"""Structured errors from real exchanges: CommandError's codes, host and port set at
every raise site, AuthenticationError's host and port, and the misuse rule (UsageError)
for all three clients, against the sandbox and, where cheap, Dovecot and Postfix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mailoauth import ImapClient, Pop3Client, SecurityOptions, SmtpClient
from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    MailConnectionError,
    UsageError,
)
from mailoauth.poll.backoff import is_permanent
from mailoauth.testing.sandbox import MailSandbox
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

S = SecurityOptions.SSL_IMPLICIT
USER = "erin@example.test"


@pytest_asyncio.fixture
async def box() -> AsyncIterator[MailSandbox]:
    async with MailSandbox() as sandbox:
        yield sandbox


def imap(box: MailSandbox, token: str | None = None) -> ImapClient:
    token = token or box.oauth.issue_access_token(USER)
    return ImapClient(box.imap.host, box.imap.tls_port, USER, token, S, ssl_context=box.ssl_context)


def pop3(box: MailSandbox) -> Pop3Client:
    token = box.oauth.issue_access_token(USER)
    return Pop3Client(box.pop3.host, box.pop3.tls_port, USER, token, S, ssl_context=box.ssl_context)


def smtp(box: MailSandbox) -> SmtpClient:
    token = box.oauth.issue_access_token(USER)
    return SmtpClient(box.smtp.host, box.smtp.tls_port, USER, token, S, ssl_context=box.ssl_context)


# -- the misuse rule, the same for the three clients ---------------------------------


async def test_commands_after_aclose_are_usage_errors_until_connect(box: MailSandbox) -> None:
    client = imap(box)
    async with client:
        await client.select()
    with pytest.raises(UsageError, match="connect"):
        await client.select()
    await client.connect()  # open again: usable again
    assert (await client.select()).exists >= 0
    await client.aclose()

    pop = pop3(box)
    async with pop:
        await pop.stat()
    with pytest.raises(UsageError, match="connect"):
        await pop.stat()

    sender = smtp(box)
    async with sender:
        await sender.noop()
    with pytest.raises(UsageError, match="connect"):
        await sender.noop()


async def test_pop3_left_on_an_error_is_closed_for_the_caller(box: MailSandbox) -> None:
    pop = pop3(box)
    with pytest.raises(KeyError):
        async with pop:
            raise KeyError("the caller's own failure")
    with pytest.raises(UsageError):
        await pop.stat()


async def test_imap_message_command_before_select_is_a_usage_error(box: MailSandbox) -> None:
    async with imap(box) as client:
        for call in (client.uid_search("ALL"), client.fetch_raw([1]), client.expunge()):
            with pytest.raises(UsageError, match=r"select\(\)") as info:
                await call
            assert isinstance(info.value, ConfigurationError)  # deprecated: what it was
        await client.select()
        assert await client.uid_search("ALL") == []


async def test_pop3_session_lost_mid_way_stays_a_connection_error(box: MailSandbox) -> None:
    # Not a misuse: the caller did open the session; the network took it away.
    pop = pop3(box)
    await pop.connect()
    assert pop._conn is not None
    await pop._conn.aclose()
    with pytest.raises(ConnectionLostError):
        await pop.stat()
    await pop.aclose()


async def test_smtp_send_before_connect_warns_and_still_sends(box: MailSandbox) -> None:
    sender = smtp(box)
    with pytest.warns(DeprecationWarning, match="UsageError") as warned:
        result = await sender.sendmail(USER, [USER], b"Subject: implicit\r\n\r\nhi\r\n")
    assert result.refused == {}
    assert warned[0].filename == __file__  # points at the caller's line
    await sender.noop()  # open now
    await sender.aclose()


async def test_smtp_send_before_connect_to_a_dead_port_warns_then_fails() -> None:
    sender = SmtpClient("127.0.0.1", 1, USER, "at", S, timeout=5.0)
    with pytest.warns(DeprecationWarning), pytest.raises(MailConnectionError):
        await sender.sendmail(USER, [USER], b"Subject: x\r\n\r\nx\r\n")
    await sender.aclose()


# -- CommandError and AuthenticationError fields at the raise sites -------------------


async def test_imap_refusal_fields_from_the_sandbox(box: MailSandbox) -> None:
    async with imap(box) as client:
        with pytest.raises(CommandError) as info:
            await client.select("No/Such/Folder")
    exc = info.value
    assert exc.command == "SELECT" and exc.response_code == "NONEXISTENT"
    assert (exc.host, exc.port) == (box.imap.host, box.imap.tls_port)
    assert exc.code is None and exc.enhanced_code is None
    assert not exc.retryable and is_permanent(exc)


async def test_pop3_refusal_fields_from_the_sandbox(box: MailSandbox) -> None:
    async with pop3(box) as pop:
        with pytest.raises(CommandError) as info:
            await pop.retrieve(99)
    exc = info.value
    assert exc.command == "RETR" and exc.reply.startswith("-ERR")
    assert (exc.host, exc.port) == (box.pop3.host, box.pop3.tls_port)
    assert exc.response_code is None and exc.retryable


async def test_authentication_error_fields_from_the_sandbox(box: MailSandbox) -> None:
    wrong = box.oauth.issue_access_token("mallory@example.test")
    with pytest.raises(AuthenticationError) as info:
        async with imap(box, wrong):
            pass
    exc = info.value
    assert (exc.host, exc.port) == (box.imap.host, box.imap.tls_port)
    assert exc.mechanism in ("OAUTHBEARER", "XOAUTH2")
    assert not exc.retryable and not exc.temporary


def dovecot_user() -> str:
    return f"e{uuid.uuid4().hex[:10]}@example.test"


async def test_fields_from_dovecot_imap_and_pop3(mail_servers: MailServers) -> None:
    user = dovecot_user()
    ctx = mail_servers.client_context()
    port = mail_servers.dovecot.imaps_port
    async with ImapClient(
        "localhost", port, user, mail_servers.token(user), S, ssl_context=ctx
    ) as client:
        with pytest.raises(CommandError) as imap_info:
            await client.examine("No-Such-Folder")
    exc = imap_info.value
    assert exc.command == "EXAMINE" and exc.reply.startswith("NO ")
    assert (exc.host, exc.port) == ("localhost", port)
    # Dovecot 2.3 answers "NO Mailbox doesn't exist: ..." without [NONEXISTENT]
    # (observed): no code, so the refusal counts as retryable.
    assert exc.response_code is None and exc.retryable

    pop_port = mail_servers.dovecot.pop3s_port
    async with Pop3Client(
        "localhost", pop_port, user, mail_servers.token(user), S, ssl_context=ctx
    ) as pop:
        with pytest.raises(CommandError) as pop_info:
            await pop.retrieve(99)
    assert pop_info.value.command == "RETR"
    assert (pop_info.value.host, pop_info.value.port) == ("localhost", pop_port)


async def test_fields_from_postfix_smtp(mail_servers: MailServers) -> None:
    user = dovecot_user()
    port = mail_servers.postfix.submission_port
    async with SmtpClient(
        "localhost",
        port,
        user,
        mail_servers.token(user),
        SecurityOptions.SSL_EXPLICIT,
        ssl_context=mail_servers.client_context(),
    ) as sender:
        with pytest.raises(CommandError) as info:
            await sender.sendmail(user, ["no-domain@"], b"Subject: x\r\n\r\nx\r\n")
    exc = info.value
    assert exc.code is not None and 500 <= exc.code < 600, exc.reply
    assert exc.enhanced_code is not None and exc.enhanced_code.startswith("5."), exc.reply
    assert (exc.host, exc.port) == ("localhost", port)
    assert not exc.retryable
