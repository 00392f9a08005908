"""The secrets scan itself: it finds tokens raw and base64-encoded, and the IMAP,
SMTP and POP3 clients' DEBUG logs (aioimaplib's "Sending"/continuation lines
included) carry none while authenticating against the real servers."""

from __future__ import annotations

import logging
import uuid

import pytest

from mailoauth.errors import AuthenticationError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3 import Pop3Client
from mailoauth.sasl import create_mechanism
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.oauth_server import FakeOAuthServer, issued_secrets
from tests.conftest import find_secret, scan_records
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("mailoauth.test", logging.DEBUG, __file__, 1, message, args, None)


async def test_the_scan_finds_tokens_raw_and_in_sasl_base64() -> None:
    with FakeOAuthServer() as server:
        server.add_client("cid", "cs-äöü secret with spaces")
        token = server.issue_access_token("u@example.test")
        refresh = server.issue_refresh_token("u@example.test")
    secrets = issued_secrets()
    assert token in secrets and refresh in secrets
    for name in ("XOAUTH2", "OAUTHBEARER"):
        b64 = create_mechanism(name, "u@example.test", token, host="h", port=1)
        assert (
            find_secret(
                f"Sending : b'A1 AUTHENTICATE {name} {b64.initial_response_b64().decode()}'",
                secrets,
            )
            == "an access token"
        )
    assert find_secret(f"refresh with {refresh}!", secrets) == "a refresh token"
    assert find_secret("client said cs-äöü secret with spaces.", secrets) == (
        "a client secret or password"
    )
    assert find_secret("nothing to see: at-notissued", secrets) is None
    leaks = scan_records([record("token %s", token), record("fine")])
    assert leaks == ["an access token in a DEBUG record of logger 'mailoauth.test'"]


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_client_debug_logs_carry_no_token(
    mail_servers: MailServers, caplog: pytest.LogCaptureFixture, mechanism: str
) -> None:
    user = f"s{uuid.uuid4().hex[:10]}@example.test"
    token = mail_servers.token(user)
    ctx = mail_servers.client_context()
    dovecot, postfix = mail_servers.dovecot, mail_servers.postfix
    async with ImapClient(
        "localhost",
        dovecot.imap_port,
        user,
        token,
        SecurityOptions.SSL_EXPLICIT,
        ssl_context=ctx,
        mechanism=mechanism,
    ) as imap:
        await imap.select()
    async with SmtpClient(
        "localhost", postfix.submission_port, user, token, ssl_context=ctx, mechanism=mechanism
    ) as smtp:
        await smtp.noop()
    async with Pop3Client(
        "localhost",
        dovecot.pop3s_port,
        user,
        token,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=ctx,
        mechanism=mechanism,
    ) as pop:
        await pop.stat()
    records = caplog.get_records("call")
    sent = [r.getMessage() for r in records if r.name.startswith("aioimaplib")]
    assert any("AUTHENTICATE" in line for line in sent)  # aioimaplib did log the command
    assert scan_records(records) == []


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_rejected_token_debug_logs_carry_no_token(
    mail_servers: MailServers, caplog: pytest.LogCaptureFixture, mechanism: str
) -> None:
    # The error-challenge path: aioimaplib logs the pending AUTHENTICATE command with
    # %s when the "+ <challenge>" arrives; its str must not show the initial response.
    user = f"s{uuid.uuid4().hex[:10]}@example.test"
    token = mail_servers.token(user)
    mail_servers.oauth.revoke(token)
    with pytest.raises(AuthenticationError):
        async with ImapClient(
            "localhost",
            mail_servers.dovecot.imaps_port,
            user,
            token,
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=mail_servers.client_context(),
            mechanism=mechanism,
        ):
            pass  # fmt: skip
    records = caplog.get_records("call")
    assert any("continuation line" in r.getMessage() for r in records)
    assert scan_records(records) == []
