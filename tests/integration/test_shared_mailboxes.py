"""Shared and delegated mailboxes (issue 11, section 1), as Exchange Online does them:

- IMAP and POP3 open a shared mailbox with the SASL ``user=`` set to the shared
  mailbox's address and the *delegate's* token; the delegate needs FullAccess, and
  without it Exchange answers as to any bad token (``NO AUTHENTICATE failed.``);
- the basic-auth ``delegate\\shared`` form fails with OAuth: refused before connecting;
- SMTP "send as": authenticate as the delegate, MAIL FROM the shared address; without
  Send As, ``554 5.2.252 SendAsDenied`` after DATA, and the error names the fix.

Against the Office 365 personality of the sandbox (its :class:`Delegations`), the
poller and ``mailoauth check --mailbox``; and against Dovecot, whose oauth2 passdb lets
a token in only for the user it was issued to (``username_attribute``).
"""

from __future__ import annotations

import asyncio
import email.message
import importlib.util
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Literal

import pytest
import pytest_asyncio

from mailoauth import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ImapClient,
    Pop3Client,
    SecurityOptions,
    SmtpClient,
)
from mailoauth.cli import main
from mailoauth.poll import Mailbox, MailboxFailed, NewMessage, Poller
from mailoauth.testing.personality import Delegations, Personality
from mailoauth.testing.sandbox import MailSandbox
from tests.integration.conftest import MailServers

S = SecurityOptions
DELEGATE = "delegate@contoso.test"
SHARED = "shared@contoso.test"
OTHER = "other-shared@contoso.test"
WAIT = 10.0


@pytest_asyncio.fixture
async def o365() -> AsyncIterator[MailSandbox]:
    async with MailSandbox(personality=Personality.OFFICE365) as box:
        box.user(DELEGATE)
        box.shared_mailbox(SHARED, full_access=[DELEGATE])
        box.shared_mailbox(OTHER)  # the delegate has no right on this one
        box.store.deliver(SHARED, b"Subject: for the team\r\n\r\nhello\r\n")
        yield box


def delegate_token(box: MailSandbox) -> str:
    return box.oauth.issue_access_token(DELEGATE)


def message(sender: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "someone@contoso.test", "send as"
    msg.set_content("body")
    return msg


# -- the testing kit's model -----------------------------------------------------------


def test_delegations_model() -> None:
    rights = Delegations()
    assert rights.may_open("a@x.test", "A@X.test") and rights.may_send_as("a@x.test", "")
    assert not rights.may_open(DELEGATE, SHARED) and not rights.may_send_as(DELEGATE, SHARED)
    rights.grant_full_access(SHARED.upper(), DELEGATE)
    assert rights.may_open(DELEGATE, SHARED) and not rights.may_send_as(DELEGATE, SHARED)
    rights.grant_send_as(SHARED, DELEGATE)
    assert rights.may_send_as(DELEGATE.upper(), SHARED)
    assert not rights.may_open(SHARED, DELEGATE)  # rights are one way
    rights.revoke(SHARED, DELEGATE)
    assert not rights.may_open(DELEGATE, SHARED) and not rights.may_send_as(DELEGATE, SHARED)


# -- IMAP and POP3: user= the shared mailbox, the delegate's token ----------------------


@pytest.mark.asyncio
async def test_imap_opens_shared_mailbox_with_delegate_token(o365: MailSandbox) -> None:
    token = delegate_token(o365)
    async with ImapClient(
        o365.imap.host,
        o365.imap.tls_port,
        SHARED,
        token,
        S.SSL_IMPLICIT,
        ssl_context=o365.ssl_context,
    ) as imap:
        info = await imap.select("INBOX")
        assert info.exists == 1
        uids = await imap.uid_search("ALL")
        assert (await imap.fetch_message(uids[0]))["Subject"] == "for the team"


@pytest.mark.asyncio
async def test_pop3_opens_shared_mailbox_with_delegate_token(o365: MailSandbox) -> None:
    token = delegate_token(o365)
    async with Pop3Client(
        o365.pop3.host,
        o365.pop3.tls_port,
        SHARED,
        token,
        S.SSL_IMPLICIT,
        ssl_context=o365.ssl_context,
    ) as pop:
        assert (await pop.stat()).count == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_without_full_access_exchange_refuses(o365: MailSandbox, protocol: str) -> None:
    token = delegate_token(o365)
    cls: type[ImapClient] | type[Pop3Client] = ImapClient if protocol == "imap" else Pop3Client
    server = o365.imap if protocol == "imap" else o365.pop3
    with pytest.raises(AuthenticationError) as caught:
        async with cls(
            server.host,
            server.tls_port,
            OTHER,
            token,
            S.SSL_IMPLICIT,
            ssl_context=o365.ssl_context,
        ):
            pass
    reply = o365.personality.replies
    expected = reply.imap_auth_failed if protocol == "imap" else reply.pop3_auth_failed
    assert expected in str(caught.value.server_reply)
    # Granting FullAccess is what lets the same token in.
    o365.delegations.grant_full_access(OTHER, DELEGATE)
    async with cls(
        server.host,
        server.tls_port,
        OTHER,
        token,
        S.SSL_IMPLICIT,
        ssl_context=o365.ssl_context,
    ):
        pass


@pytest.mark.asyncio
async def test_gmail_personality_grants_nothing_by_default() -> None:
    async with MailSandbox(personality=Personality.GMAIL) as box:
        box.user(DELEGATE)
        box.store.add_user(SHARED)
        with pytest.raises(AuthenticationError):
            async with ImapClient(
                box.imap.host,
                box.imap.tls_port,
                SHARED,
                delegate_token(box),
                S.SSL_IMPLICIT,
                ssl_context=box.ssl_context,
            ):
                pass


# -- the basic-auth form ----------------------------------------------------------------


@pytest.mark.parametrize("cls", [SmtpClient, ImapClient, Pop3Client])
def test_basic_auth_alias_form_is_refused_before_connecting(
    cls: type[SmtpClient] | type[ImapClient] | type[Pop3Client],
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        cls("outlook.office365.com", 993, f"{DELEGATE}\\{SHARED}", "s3cr3t-t0ken")
    text = str(caught.value)
    assert f"username={SHARED!r}" in text and f"token of {DELEGATE!r}" in text
    assert "FullAccess" in text and "shared-mailbox-access" in text and "s3cr3t" not in text


def test_basic_auth_alias_form_is_refused_by_mailbox() -> None:
    with pytest.raises(ConfigurationError, match="basic-auth form"):
        Mailbox("imap", "outlook.office365.com", 993, f"CONTOSO\\{DELEGATE}\\shared", "tok")


# -- SMTP send as -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_smtp_send_as_with_and_without_the_right(o365: MailSandbox) -> None:
    token = delegate_token(o365)
    async with SmtpClient(
        o365.smtp.host,
        o365.smtp.tls_port,
        DELEGATE,
        token,
        S.SSL_IMPLICIT,
        ssl_context=o365.ssl_context,
    ) as smtp:
        # Its own address needs no right.
        await smtp.send_message(message(DELEGATE))
        with pytest.raises(CommandError) as caught:
            await smtp.send_message(message(SHARED))
        error = caught.value
        assert error.code == 554 and error.enhanced_code == "5.2.252"
        assert not error.retryable and error.command == "DATA"
        assert f"{DELEGATE} not allowed to send as {SHARED}" in error.reply
        assert "Add-RecipientPermission" in str(error) and "-AccessRights SendAs" in str(error)
        assert token not in str(error)
        o365.delegations.grant_send_as(SHARED, DELEGATE)
        await smtp.send_message(message(SHARED))
    sent = [(m.mail_from, m.username) for m in o365.smtp.messages]
    assert sent == [(DELEGATE, DELEGATE), (SHARED, DELEGATE)]


@pytest.mark.asyncio
async def test_rfc_personality_does_not_check_the_sender() -> None:
    async with MailSandbox(personality=Personality.RFC) as box:
        box.user(DELEGATE)
        async with SmtpClient(
            box.smtp.host,
            box.smtp.tls_port,
            DELEGATE,
            delegate_token(box),
            S.SSL_IMPLICIT,
            ssl_context=box.ssl_context,
        ) as smtp:
            await smtp.send_message(message(SHARED))
        assert box.smtp.messages[0].mail_from == SHARED


# -- the poller -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_poller_watches_shared_mailbox_with_delegate_token(o365: MailSandbox) -> None:
    token = delegate_token(o365)

    def watch(protocol: Literal["imap", "pop3"], port: int, address: str) -> Mailbox:
        return Mailbox(
            protocol, o365.host, port, address, token, S.SSL_IMPLICIT, ssl_context=o365.ssl_context
        )

    boxes = [
        watch("imap", o365.imap.tls_port, SHARED),
        watch("pop3", o365.pop3.tls_port, SHARED),
        watch("imap", o365.imap.tls_port, OTHER),  # no FullAccess on this one
    ]
    protocols = {box.key: box.protocol for box in boxes}
    seen: dict[str, str] = {}
    failed: list[MailboxFailed] = []
    async with Poller(boxes, start="all", interval=0.2, use_idle=False) as poller:
        async with asyncio.timeout(WAIT):
            async for event in poller:
                if isinstance(event, NewMessage):
                    seen[protocols[event.mailbox]] = str(event.message()["Subject"])
                else:
                    failed.append(event)
                if len(seen) == 2 and failed:
                    break
    assert seen == {"imap": "for the team", "pop3": "for the team"}
    assert [f.mailbox for f in failed] == [boxes[2].key]
    assert isinstance(failed[0].error, AuthenticationError)


# -- the command ------------------------------------------------------------------------


@pytest.fixture
def o365_sync() -> Iterator[MailSandbox]:
    with MailSandbox(personality=Personality.OFFICE365) as box:
        box.user(DELEGATE)
        box.shared_mailbox(SHARED, full_access=[DELEGATE])
        yield box


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_check_mailbox_opens_the_shared_mailbox(
    o365_sync: MailSandbox, capsys: pytest.CaptureFixture[str], protocol: str
) -> None:
    box = o365_sync
    token = delegate_token(box)
    ports = {"imap": box.imap.tls_port, "pop3": box.pop3.tls_port, "smtp": box.smtp.tls_port}
    port = ports[protocol]
    argv = [
        "check", protocol, "127.0.0.1", "--port", str(port), "--security", "ssl",
        "--cafile", str(box.ca.files.ca), "--timeout", "5",
        "--user", DELEGATE, "--mailbox", SHARED, "--token", token,
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    login = DELEGATE if protocol == "smtp" else SHARED
    assert f"authenticated as {login}" in out and token not in out
    fix = "Add-RecipientPermission" if protocol == "smtp" else "Add-MailboxPermission"
    assert fix in out


def test_check_mailbox_without_full_access_fails(
    o365_sync: MailSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    box = o365_sync
    box.delegations.revoke(SHARED, DELEGATE)
    argv = [
        "check", "imap", "127.0.0.1", "--port", str(box.imap.tls_port), "--security", "ssl",
        "--cafile", str(box.ca.files.ca), "--timeout", "5",
        "--user", DELEGATE, "--mailbox", SHARED, "--token", delegate_token(box),
    ]  # fmt: skip
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "NO AUTHENTICATE failed." in out and "FullAccess" in out


# -- Dovecot: the oauth2 passdb checks the token's user against the login user -----------


@pytest.mark.realserver
@pytest.mark.asyncio
async def test_dovecot_refuses_a_token_of_another_user(mail_servers: MailServers) -> None:
    # Dovecot's username_attribute makes the token's owner the only user it opens: a
    # delegate's token names the delegate, so logging in as another mailbox fails.
    token = mail_servers.token(DELEGATE)
    with pytest.raises(AuthenticationError):
        async with ImapClient(
            mail_servers.host,
            mail_servers.dovecot.imaps_port,
            SHARED,
            token,
            S.SSL_IMPLICIT,
            ssl_context=mail_servers.client_context(),
        ):
            pass
    async with ImapClient(
        mail_servers.host,
        mail_servers.dovecot.imaps_port,
        DELEGATE,
        token,
        S.SSL_IMPLICIT,
        ssl_context=mail_servers.client_context(),
    ) as imap:
        await imap.select("INBOX")


# -- the example in docs/guides/shared-mailboxes.md ------------------------------------


ROOT = Path(__file__).resolve().parents[2]


def load_example() -> ModuleType:
    """examples/shared_mailbox.py, checked to be the one the guide shows."""
    path = ROOT / "examples" / "shared_mailbox.py"
    guide = (ROOT / "docs" / "guides" / "shared-mailboxes.md").read_text()
    assert path.read_text().split('"""', 2)[2].strip() in guide
    spec = importlib.util.spec_from_file_location("example_shared_mailbox", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@pytest.mark.asyncio
async def test_example_runs_against_the_office365_sandbox(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = load_example()
    async with MailSandbox(personality=Personality.OFFICE365) as box:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            routes = box.routes()  # the hosts users type, routed to the sandbox
            routes.__enter__()
        try:
            user = box.user("me@contoso.com")
            box.shared_mailbox("support@contoso.com", full_access=[user.username])
            box.store.deliver("support@contoso.com", b"Subject: help\r\n\r\nplease\r\n")
            await example.main("app-id", user.username, user.refresh_token, "support@contoso.com")
            out = capsys.readouterr().out
            assert "support@contoso.com: 1 messages" in out
            assert "SendAsDenied" in out and "Add-RecipientPermission" in out
            box.delegations.grant_send_as("support@contoso.com", user.username)
            await example.main("app-id", user.username, user.refresh_token, "support@contoso.com")
            assert "sent as support@contoso.com" in capsys.readouterr().out
        finally:
            routes.__exit__(None, None, None)
