"""The real-server fixtures work, checked with the standard library only.

imaplib, poplib and smtplib with hand-built XOAUTH2 / OAUTHBEARER strings: nothing here
depends on mailoauth's own clients, so a failure points at the fixtures.
"""

from __future__ import annotations

import base64
import dataclasses
import imaplib
import json
import os
import poplib
import re
import shutil
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailoauth.testing.certs import TestCA
from mailoauth.testing.dovecot import DovecotServer, ServerStartError
from mailoauth.testing.oauth_server import FakeOAuthServer
from tests.integration import conftest
from tests.integration.conftest import MailServers

DELIVERY_TIMEOUT = 10.0


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str, host: str, port: int) -> bytes:
    return f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Sasl:
    """An imaplib authobject: sends ``response``, then answers an error challenge."""

    def __init__(self, response: bytes, abort_reply: bytes = b"") -> None:
        self.response = response
        self.abort_reply = abort_reply
        self.challenges: list[bytes] = []

    def __call__(self, challenge: bytes) -> bytes:
        self.challenges.append(challenge)
        return self.response if len(self.challenges) == 1 else self.abort_reply


def pop3_command(pop: poplib.POP3, line: str) -> bytes:
    pop.sock.sendall(line.encode() + b"\r\n")
    return pop.file.readline().rstrip(b"\r\n")


def imap_login(servers: MailServers, user: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(
        servers.host, servers.dovecot.imaps_port, ssl_context=servers.client_context()
    )
    imap.authenticate("XOAUTH2", Sasl(xoauth2(user, servers.token(user))))
    return imap


def test_imaps_xoauth2(mail_servers: MailServers) -> None:
    user = "imaps-xoauth2@example.test"
    imap = imaplib.IMAP4_SSL(
        mail_servers.host,
        mail_servers.dovecot.imaps_port,
        ssl_context=mail_servers.client_context(),
    )
    assert "AUTH=XOAUTH2" in imap.capabilities
    typ, _ = imap.authenticate("XOAUTH2", Sasl(xoauth2(user, mail_servers.token(user))))
    assert typ == "OK"
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()


def test_imaps_oauthbearer(mail_servers: MailServers) -> None:
    user = "imaps-bearer@example.test"
    host, port = mail_servers.host, mail_servers.dovecot.imaps_port
    imap = imaplib.IMAP4_SSL(host, port, ssl_context=mail_servers.client_context())
    assert "AUTH=OAUTHBEARER" in imap.capabilities
    auth = Sasl(oauthbearer(user, mail_servers.token(user), host, port))
    assert imap.authenticate("OAUTHBEARER", auth)[0] == "OK"
    imap.logout()


def test_imap_starttls(mail_servers: MailServers) -> None:
    user = "imap-starttls@example.test"
    imap = imaplib.IMAP4(mail_servers.host, mail_servers.dovecot.imap_port)
    assert "STARTTLS" in imap.capabilities
    imap.starttls(ssl_context=mail_servers.client_context())
    assert imap.authenticate("XOAUTH2", Sasl(xoauth2(user, mail_servers.token(user))))[0] == "OK"
    imap.logout()


def test_imap_revoked_token_gets_error_challenge_then_no(mail_servers: MailServers) -> None:
    user = "imap-revoked@example.test"
    token = mail_servers.token(user)
    mail_servers.oauth.revoke(token)
    imap = imaplib.IMAP4_SSL(
        mail_servers.host,
        mail_servers.dovecot.imaps_port,
        ssl_context=mail_servers.client_context(),
    )
    auth = Sasl(xoauth2(user, token))
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap.authenticate("XOAUTH2", auth)
    assert len(auth.challenges) == 2
    assert json.loads(auth.challenges[1])["status"] == "401"
    imap.logout()


def test_pop3s_xoauth2_and_direct_delivery(mail_servers: MailServers) -> None:
    user = "pop3s@example.test"
    msg = EmailMessage()
    msg["Subject"] = "dropped into the maildir"
    msg.set_content("no SMTP involved\n")
    path = mail_servers.dovecot.deliver(user, msg)
    assert path.parent == mail_servers.dovecot.maildir(user) / "new"
    pop = poplib.POP3_SSL(
        mail_servers.host, mail_servers.dovecot.pop3s_port, context=mail_servers.client_context()
    )
    assert "XOAUTH2" in pop.capa().get("SASL", [])
    reply = pop3_command(pop, "AUTH XOAUTH2 " + b64(xoauth2(user, mail_servers.token(user))))
    assert reply.startswith(b"+OK"), reply
    _, lines, _ = pop.retr(1)
    assert b"Subject: dropped into the maildir" in lines
    pop.quit()


def test_pop3_stls_and_revoked_token(mail_servers: MailServers) -> None:
    user = "pop3-stls@example.test"
    token = mail_servers.token(user)
    pop = poplib.POP3(mail_servers.host, mail_servers.dovecot.pop3_port)
    assert "STLS" in pop.capa()
    pop.stls(context=mail_servers.client_context())
    mail_servers.oauth.revoke(token)
    challenge = pop3_command(pop, "AUTH XOAUTH2")
    assert challenge == b"+ "  # two steps: the credentials follow the empty challenge
    error = pop3_command(pop, b64(xoauth2(user, token)))
    assert error.startswith(b"+ ")
    assert json.loads(base64.b64decode(error[2:]))["status"] == "401"
    assert pop3_command(pop, "") == b"-ERR [AUTH] Authentication failed."
    pop.quit()


def test_smtp_submission_delivers_to_imap(mail_servers: MailServers) -> None:
    user = "smtp-roundtrip@example.test"
    subject = f"round trip {time.time_ns()}"
    with smtplib.SMTP(mail_servers.host, mail_servers.postfix.submission_port) as smtp:
        smtp.starttls(context=mail_servers.client_context())
        smtp.ehlo()
        assert "XOAUTH2" in smtp.esmtp_features["auth"]
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + b64(xoauth2(user, mail_servers.token(user))))
        assert code == 235
        msg = EmailMessage()
        msg["From"] = user
        msg["To"] = user
        msg["Subject"] = subject
        msg.set_content("via Postfix and LMTP\n")
        smtp.send_message(msg)
    imap = imap_login(mail_servers, user)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    found: list[bytes] = []
    while not found and time.monotonic() < deadline:
        imap.select("INBOX")
        _, data = imap.search(None, "SUBJECT", f'"{subject}"')
        found = data[0].split()
        if not found:
            time.sleep(0.05)
    assert found, f"not delivered within {DELIVERY_TIMEOUT} s:\n{mail_servers.postfix.log_tail()}"
    imap.logout()


def test_smtps_revoked_token_gets_334_then_535(mail_servers: MailServers) -> None:
    user = "smtps-revoked@example.test"
    token = mail_servers.token(user)
    mail_servers.oauth.revoke(token)
    with smtplib.SMTP_SSL(
        mail_servers.host, mail_servers.postfix.smtps_port, context=mail_servers.client_context()
    ) as smtp:
        smtp.ehlo()
        code, challenge = smtp.docmd("AUTH", "XOAUTH2 " + b64(xoauth2(user, token)))
        assert code == 334
        assert json.loads(base64.b64decode(challenge))["status"] == "401"
        code, reply = smtp.docmd("")
        assert code == 535
        assert reply.startswith(b"5.7.8")


def test_no_starttls_listeners_do_not_offer_it(mail_servers: MailServers) -> None:
    dc, pf = mail_servers.dovecot, mail_servers.postfix
    with smtplib.SMTP(pf.host, pf.no_starttls_port) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert "XOAUTH2" in smtp.esmtp_features["auth"]
    assert dc.no_starttls_host is not None
    assert dc.imap_no_starttls_port is not None
    assert dc.pop3_no_starttls_port is not None
    imap = imaplib.IMAP4(dc.no_starttls_host, dc.imap_no_starttls_port)
    assert "STARTTLS" not in imap.capabilities
    assert "AUTH=XOAUTH2" in imap.capabilities
    imap.logout()
    pop = poplib.POP3(dc.no_starttls_host, dc.pop3_no_starttls_port)
    assert "STLS" not in pop.capa()
    pop.quit()
    # ...while the ordinary plain ports do offer it.
    with smtplib.SMTP(pf.host, pf.submission_port) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert "auth" not in smtp.esmtp_features  # AUTH only after STARTTLS


def test_second_dovecot_runs_alongside_and_stops_cleanly(
    mail_servers: MailServers, test_ca: TestCA, oauth_server: FakeOAuthServer
) -> None:
    with DovecotServer(oauth_server.introspection_url, test_ca.files) as other:
        pid = other.pid
        assert pid is not None
        assert other.imaps_port != mail_servers.dovecot.imaps_port
        user = "second@example.test"
        imap = imaplib.IMAP4_SSL(other.host, other.imaps_port, ssl_context=test_ca.client_context())
        assert (
            imap.authenticate(
                "XOAUTH2", Sasl(xoauth2(user, oauth_server.issue_access_token(user)))
            )[0]
            == "OK"
        )
        imap.logout()
        directory = other.directory
    assert not Path(f"/proc/{pid}").exists()
    assert not directory.exists()
    assert mail_servers.dovecot.running


def test_start_failure_reports_the_log(
    mail_servers: MailServers, test_ca: TestCA, oauth_server: FakeOAuthServer
) -> None:
    certs = dataclasses.replace(test_ca.files, cert=Path("/nonexistent/cert.pem"))
    server = DovecotServer(oauth_server.introspection_url, certs, no_starttls_host=None)
    with pytest.raises(ServerStartError, match=re.escape("/nonexistent/cert.pem")):
        server.start()
    assert server.pid is None
    server.stop()
    assert not os.path.exists(server.directory)


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_missing_servers_skip_locally_but_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="not installed: dovecot, postfix"):
        conftest.require_real_servers()
