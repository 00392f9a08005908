"""The test SMTP/IMAP/POP3 servers, driven by the stdlib clients over TLS.

Servers run on a background loop (``with MailSandbox(...)``) so that the blocking
stdlib clients can be called directly; one test runs them on the test's own loop.
The OAuth server and CA are shared by the module: starting and stopping an
``http.server`` costs up to half a second each time.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailoauth.testing.certs import TestCA
from mailoauth.testing.clock import FakeClock
from mailoauth.testing.imap_server import TestImapServer
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.personality import Personality
from mailoauth.testing.pop3_server import MAX_LINE_LENGTH, TestPop3Server
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.testing.smtp_server import TestSmtpServer

HOST = "127.0.0.1"
ALL = list(Personality)
MESSAGE = b"From: bob@example.test\r\nSubject: Hello\r\n\r\nfirst line\r\n.dotted line\r\n"


@pytest.fixture(scope="module")
def oauth() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer() as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> Iterator[TestCA]:
    authority = TestCA()
    yield authority
    authority.cleanup()


def make_sandbox(
    oauth: FakeOAuthServer, ca: TestCA, personality: Personality = Personality.RFC
) -> MailSandbox:
    return MailSandbox(personality, oauth=oauth, ca=ca)


_counter = iter(range(1_000_000))


def new_user() -> str:
    return f"user{next(_counter)}@example.test"


def xoauth2(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user: str, token: str) -> str:
    name = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={name},\x01host={HOST}\x01port=1\x01auth=Bearer {token}\x01\x01"


def responder(text: str) -> Callable[[bytes], bytes]:
    """An imaplib authobject: the SASL message first, an empty answer to a challenge."""
    return lambda challenge: b"" if challenge else text.encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def challenge_json(line: str, prefix: str) -> dict[str, str]:
    assert line.startswith(prefix)
    decoded: dict[str, str] = json.loads(base64.b64decode(line[len(prefix) :]))
    return decoded


class LineClient:
    """A raw line-based client, to see the servers' exact bytes."""

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        sock = socket.create_connection((HOST, port), timeout=5)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=HOST)
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# -- SMTP ------------------------------------------------------------------------------


@pytest.mark.parametrize("personality", ALL)
def test_smtp_starttls_auth_both_mechanisms_and_delivery(
    oauth: FakeOAuthServer, ca: TestCA, personality: Personality
) -> None:
    with make_sandbox(oauth, ca, personality) as sandbox:
        sender, rcpt = sandbox.user(new_user()), new_user()
        offered = personality.replies.mechanisms
        builds = (("XOAUTH2", xoauth2), ("OAUTHBEARER", oauthbearer))
        for mechanism, build in [(m, b) for m, b in builds if m in offered]:
            token = sender.access_token()
            with smtplib.SMTP(HOST, sandbox.smtp.starttls_port, timeout=5) as smtp:
                smtp.starttls(context=sandbox.ssl_context)
                smtp.ehlo()
                assert set(smtp.esmtp_features["auth"].split()) == set(offered)
                code, _ = smtp.auth(
                    mechanism, lambda c=None, b=build, t=token: b(sender.username, t)
                )
                assert code == 235
                smtp.sendmail(sender.username, [rcpt], MESSAGE)
        inbox = sandbox.store.messages(rcpt)
        assert [m.data for m in inbox] == [MESSAGE] * len(offered)
        assert [m.username for m in sandbox.smtp.messages] == [sender.username] * len(offered)


@pytest.mark.parametrize("personality", ALL)
def test_smtp_rejected_token_replies(
    oauth: FakeOAuthServer, ca: TestCA, personality: Personality
) -> None:
    with make_sandbox(oauth, ca, personality) as sandbox:
        user = sandbox.user(new_user()).username
        with smtplib.SMTP_SSL(
            HOST, sandbox.smtp.tls_port, context=sandbox.ssl_context, timeout=5
        ) as smtp:
            smtp.ehlo()
            code, reply = smtp.docmd("AUTH", "XOAUTH2 " + b64(xoauth2(user, "at-bogus")))
            if personality is Personality.OFFICE365:
                assert (code, reply) == (535, b"5.7.3 Authentication unsuccessful")
                return
            assert code == 334
            challenge = json.loads(base64.b64decode(reply))
            code, reply = smtp.docmd("")
        assert code == 535
        if personality is Personality.GMAIL:
            assert challenge == {
                "status": "400",
                "schemes": "Bearer",
                "scope": "https://mail.google.com/",
            }
            assert reply.startswith(b"5.7.8 Username and Password not accepted.")
            assert b"BadCredentials" in reply
        else:
            assert challenge == {"status": "401", "schemes": "bearer", "scope": "mail"}
            assert reply == b"5.7.8 Error: authentication failed: (reason unavailable)"


def test_smtp_oauthbearer_rfc_challenge_and_cancel(oauth: FakeOAuthServer, ca: TestCA) -> None:
    with (
        make_sandbox(oauth, ca) as sandbox,
        smtplib.SMTP_SSL(
            HOST, sandbox.smtp.tls_port, context=sandbox.ssl_context, timeout=5
        ) as smtp,
    ):
        user = sandbox.user(new_user()).username
        smtp.ehlo()
        code, reply = smtp.docmd("AUTH", "OAUTHBEARER " + b64(oauthbearer(user, "x")))
        assert code == 334
        assert json.loads(base64.b64decode(reply))["status"] == "invalid_token"
        assert smtp.docmd("AQ==")[0] == 535
        # two-step, cancelled
        assert smtp.docmd("AUTH", "XOAUTH2") == (334, b"")
        assert smtp.docmd("*")[0] == 501


def test_smtp_policy_tls_and_auth_required(oauth: FakeOAuthServer, ca: TestCA) -> None:
    with make_sandbox(oauth, ca) as sandbox:
        user = sandbox.user(new_user())
        with smtplib.SMTP(HOST, sandbox.smtp.starttls_port, timeout=5) as smtp:
            smtp.ehlo()
            assert "auth" not in smtp.esmtp_features
            assert smtp.docmd("AUTH", "XOAUTH2")[0] == 530
            smtp.starttls(context=sandbox.ssl_context)
            smtp.ehlo()
            assert smtp.docmd("MAIL", "FROM:<a@example.test>")[0] == 530
            sandbox.smtp.fail_next()
            token = user.access_token()
            ir = b64(xoauth2(user.username, token))
            assert smtp.docmd("AUTH", "XOAUTH2 " + ir)[0] == 334  # scripted failure
            assert smtp.docmd("")[0] == 535
            assert smtp.docmd("AUTH", "XOAUTH2 " + ir)[0] == 235


# -- IMAP ------------------------------------------------------------------------------


@pytest.mark.parametrize("personality", ALL)
def test_imap_authenticate_both_mechanisms(
    oauth: FakeOAuthServer, ca: TestCA, personality: Personality
) -> None:
    with make_sandbox(oauth, ca, personality) as sandbox:
        user = sandbox.user(new_user())
        offered = personality.replies.mechanisms
        for build in (xoauth2, oauthbearer):
            mechanism = "XOAUTH2" if build is xoauth2 else "OAUTHBEARER"
            imap = imaplib.IMAP4_SSL(
                HOST, sandbox.imap.tls_port, ssl_context=sandbox.ssl_context, timeout=5
            )
            auth_caps = {c for c in imap.capabilities if c.startswith("AUTH=")}
            assert auth_caps == {f"AUTH={m}" for m in offered}
            assert {"SASL-IR", "IDLE"} <= set(imap.capabilities)
            if mechanism not in offered:  # Office 365: XOAUTH2 only
                with pytest.raises(imaplib.IMAP4.error, match="Unsupported"):
                    imap.authenticate(mechanism, responder(build(user.username, "x")))
                imap.logout()
                continue
            token = user.access_token()
            typ, _ = imap.authenticate(mechanism, responder(build(user.username, token)))
            assert typ == "OK"
            assert imap.select("INBOX")[0] == "OK"
            imap.logout()
        # SASL-IR on the STARTTLS port
        plain = imaplib.IMAP4(HOST, sandbox.imap.starttls_port, timeout=5)
        assert "STARTTLS" in plain.capabilities and "AUTH=XOAUTH2" not in plain.capabilities
        plain.starttls(ssl_context=sandbox.ssl_context)
        assert "AUTH=XOAUTH2" in plain.capabilities
        ir = b64(xoauth2(user.username, user.access_token()))
        assert plain._simple_command("AUTHENTICATE", "XOAUTH2", ir)[0] == "OK"
        plain.logout()


@pytest.mark.parametrize("personality", ALL)
def test_imap_rejected_token_replies(
    oauth: FakeOAuthServer, ca: TestCA, personality: Personality
) -> None:
    with make_sandbox(oauth, ca, personality) as sandbox:
        user = sandbox.user(new_user()).username
        client = LineClient(sandbox.imap.tls_port, sandbox.ssl_context)
        client.line()
        client.send("a1 AUTHENTICATE XOAUTH2 " + b64(xoauth2(user, "at-bogus")))
        if personality is Personality.OFFICE365:
            assert client.line() == "a1 NO AUTHENTICATE failed."
        else:
            challenge = challenge_json(client.line(), "+ ")
            client.send("")
            if personality is Personality.GMAIL:
                assert challenge["status"] == "400"
                assert challenge["scope"] == "https://mail.google.com/"
                assert client.line() == "a1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
            else:
                assert challenge == {"status": "401", "schemes": "bearer", "scope": "mail"}
                assert client.line() == "a1 NO [AUTHENTICATIONFAILED] Authentication failed."
            # OAUTHBEARER two-step, then cancel the error challenge
            client.send("a2 AUTHENTICATE OAUTHBEARER")
            assert client.line() == "+ "
            client.send(b64(oauthbearer(user, "at-bogus")))
            challenge = challenge_json(client.line(), "+ ")
            if personality is Personality.RFC:
                assert challenge["status"] == "invalid_token"
            client.send("*")
            assert client.line().startswith("a2 BAD ")
        client.close()


def test_imap_mailbox_operations(oauth: FakeOAuthServer, ca: TestCA) -> None:
    with make_sandbox(oauth, ca) as sandbox:
        user = sandbox.user(new_user(), mailboxes=["Archive"])
        sandbox.store.deliver(user.username, MESSAGE)
        sandbox.store.deliver(
            user.username, b"From: carol@example.test\r\nSubject: Two\r\n\r\nx\r\n"
        )
        imap = imaplib.IMAP4_SSL(
            HOST, sandbox.imap.tls_port, ssl_context=sandbox.ssl_context, timeout=5
        )
        token = user.access_token()
        imap.authenticate("XOAUTH2", lambda _c: xoauth2(user.username, token).encode())
        typ, data = imap.list()
        assert typ == "OK" and len(data) == 2
        assert imap.select("INBOX") == ("OK", [b"2"])
        assert imap.uid("SEARCH", "UNSEEN") == ("OK", [b"1 2"])
        assert imap.uid("SEARCH", "FROM", "carol") == ("OK", [b"2"])
        typ, data = imap.uid("FETCH", "1", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])")
        assert typ == "OK"
        first = data[0]
        assert isinstance(first, tuple)
        assert b"RFC822.SIZE %d" % len(MESSAGE) in first[0]
        assert first[1] == b"From: bob@example.test\r\nSubject: Hello\r\n\r\n"
        typ, data = imap.uid("FETCH", "1", "(BODY[])")
        assert data[0][1] == MESSAGE  # type: ignore[index]
        assert imap.uid("SEARCH", "SEEN") == ("OK", [b"1"])
        assert imap.append("Archive", "(\\Flagged)", None, b"Subject: a\r\n\r\nb\r\n")[0] == "OK"
        assert imap.uid("COPY", "1", "Archive")[0] == "OK"
        assert imap.uid("STORE", "2", "+FLAGS.SILENT", "(\\Deleted)") == ("OK", [None])
        assert imap.uid("MOVE", "1", "Archive")[0] == "OK"
        assert imap.expunge()[0] == "OK"
        assert imap.status("Archive", "(MESSAGES UNSEEN)") == (
            "OK",
            [b'"Archive" (MESSAGES 3 UNSEEN 1)'],
        )
        with pytest.raises(imaplib.IMAP4.error, match="unsupported SEARCH key"):
            imap.uid("SEARCH", "BOGUS")
        imap.close()
        imap.logout()
        assert sandbox.store.messages(user.username) == []
        assert len(sandbox.store.messages(user.username, "Archive")) == 3


def test_imap_idle_gets_exists_after_smtp_delivery(oauth: FakeOAuthServer, ca: TestCA) -> None:
    with make_sandbox(oauth, ca) as sandbox:
        user = sandbox.user(new_user())
        client = LineClient(sandbox.imap.tls_port, sandbox.ssl_context)
        client.line()
        client.send("a1 AUTHENTICATE XOAUTH2 " + b64(xoauth2(user.username, user.access_token())))
        assert client.line() == "a1 OK Logged in"
        client.send("a2 SELECT INBOX")
        while not (line := client.line()).startswith("a2 "):
            pass
        assert line.startswith("a2 OK [READ-WRITE]")
        client.send("a3 IDLE")
        assert client.line() == "+ idling"
        with smtplib.SMTP_SSL(
            HOST, sandbox.smtp.tls_port, context=sandbox.ssl_context, timeout=5
        ) as smtp:
            smtp.ehlo()
            token = user.access_token()
            smtp.auth("XOAUTH2", lambda c=None: xoauth2(user.username, token))
            smtp.sendmail(user.username, [user.username], MESSAGE)
        assert client.line() == "* 1 EXISTS"
        client.send("DONE")
        assert client.line() == "a3 OK IDLE terminated."
        client.close()


@pytest.fixture
def clock(oauth: FakeOAuthServer) -> Iterator[FakeClock]:
    """The OAuth server's clock for one test (token lifetimes, so the servers' checks)."""
    fake = FakeClock()
    oauth.clock = fake.time
    try:
        yield fake
    finally:
        oauth.clock = time.time


def test_imap_office365_bye_after_token_expiry(
    oauth: FakeOAuthServer, ca: TestCA, clock: FakeClock
) -> None:
    with make_sandbox(oauth, ca, Personality.OFFICE365) as sandbox:
        user = sandbox.user(new_user())
        client = LineClient(sandbox.imap.tls_port, sandbox.ssl_context)
        client.line()
        token = user.access_token(lifetime=3600)
        client.send("a1 AUTHENTICATE XOAUTH2 " + b64(xoauth2(user.username, token)))
        assert client.line() == "a1 OK AUTHENTICATE completed."
        client.send("a2 NOOP")
        assert client.line() == "a2 OK NOOP completed."
        clock.advance(3601)
        client.send("a3 NOOP")
        assert client.line() == "* BYE Session invalidated - AccessTokenExpired"
        assert client.line() == ""  # closed
        client.close()


def test_imap_limits_and_policy(oauth: FakeOAuthServer, ca: TestCA) -> None:
    with make_sandbox(oauth, ca) as sandbox:
        plain = LineClient(sandbox.imap.starttls_port, None)
        plain.line()
        plain.send("a1 AUTHENTICATE XOAUTH2 " + b64(xoauth2("u@example.test", "t")))
        assert plain.line().startswith("a1 NO [PRIVACYREQUIRED]")
        plain.send("a2 LOGIN u p")
        assert plain.line().startswith("a2 NO")
        plain.send("a3 SELECT INBOX")
        assert plain.line().startswith("a3 BAD")
        plain.send("a4 " + "x" * 20000)
        assert plain.line() == "* BYE Command line too long."
        assert plain.line() == ""
        plain.close()


# -- POP3 ------------------------------------------------------------------------------


def pop3_auth(pop: poplib.POP3, mechanism: str, response: str, *, two_step: bool) -> bytes:
    """AUTH through poplib's internals (it has no AUTH of its own)."""
    raw: Any = pop
    if not two_step:
        return bytes(raw._shortcmd(f"AUTH {mechanism} {b64(response)}"))
    raw._putcmd(f"AUTH {mechanism}")
    assert raw._getline()[0] == b"+ "
    return bytes(raw._shortcmd(b64(response)))


@pytest.mark.parametrize("personality", ALL)
def test_pop3_auth_both_mechanisms_and_commands(
    oauth: FakeOAuthServer, ca: TestCA, personality: Personality
) -> None:
    with make_sandbox(oauth, ca, personality) as sandbox:
        user = sandbox.user(new_user())
        sandbox.store.deliver(user.username, MESSAGE)
        expected_ok = personality.replies.pop3_auth_ok.encode()
        for mechanism, build, two_step in (
            ("XOAUTH2", xoauth2, False),
            ("OAUTHBEARER", oauthbearer, True),
        ):
            pop = poplib.POP3_SSL(
                HOST, sandbox.pop3.tls_port, context=sandbox.ssl_context, timeout=5
            )
            caps = pop.capa()
            assert caps["SASL"] == list(personality.replies.mechanisms)
            if mechanism not in personality.replies.mechanisms:  # Office 365
                with pytest.raises(poplib.error_proto, match="Unsupported"):
                    pop3_auth(pop, mechanism, "x", two_step=False)
                pop.quit()
                continue
            assert {"PIPELINING", "UIDL", "TOP", "RESP-CODES", "AUTH-RESP-CODE"} <= set(caps)
            response = build(user.username, user.access_token())
            assert pop3_auth(pop, mechanism, response, two_step=two_step) == expected_ok
            assert pop.stat() == (1, len(MESSAGE))
            assert pop.uidl()[1] == [b"1 1"]
            _, lines, _ = pop.retr(1)
            assert b"\r\n".join(lines) + b"\r\n" == MESSAGE  # dot-unstuffed by poplib
            _, top, _ = pop.top(1, 1)
            assert top == [b"From: bob@example.test", b"Subject: Hello", b"", b"first line"]
            pop.quit()
        # STLS on the plain port
        plain = poplib.POP3(HOST, sandbox.pop3.starttls_port, timeout=5)
        assert "STLS" in plain.capa() and "SASL" not in plain.capa()
        plain.stls(context=sandbox.ssl_context)
        response = xoauth2(user.username, user.access_token())
        assert pop3_auth(plain, "XOAUTH2", response, two_step=False) == expected_ok
        plain.quit()


@pytest.mark.parametrize("personality", ALL)
def test_pop3_rejected_token_replies(
    oauth: FakeOAuthServer, ca: TestCA, personality: Personality
) -> None:
    with make_sandbox(oauth, ca, personality) as sandbox:
        user = sandbox.user(new_user()).username
        client = LineClient(sandbox.pop3.tls_port, sandbox.ssl_context)
        assert client.line() == personality.replies.pop3_greeting
        client.send("AUTH XOAUTH2 " + b64(xoauth2(user, "at-bogus")))
        if personality is Personality.OFFICE365:
            expected = "-ERR Authentication failure: unknown user name or bad password."
            assert client.line() == expected
        else:
            challenge = challenge_json(client.line(), "+ ")
            assert challenge["status"] == ("400" if personality is Personality.GMAIL else "401")
            client.send("")
            expected = (
                "-ERR [AUTH] Invalid credentials."
                if personality is Personality.GMAIL
                else "-ERR [AUTH] Authentication failed."
            )
            assert client.line() == expected
        client.send("USER x")
        assert client.line().startswith("-ERR")
        client.close()


def test_pop3_dele_applies_only_at_quit(oauth: FakeOAuthServer, ca: TestCA) -> None:
    with make_sandbox(oauth, ca) as sandbox:
        user = sandbox.user(new_user())
        for _ in range(3):
            sandbox.store.deliver(user.username, MESSAGE)

        def login() -> poplib.POP3_SSL:
            pop = poplib.POP3_SSL(
                HOST, sandbox.pop3.tls_port, context=sandbox.ssl_context, timeout=5
            )
            pop3_auth(pop, "XOAUTH2", xoauth2(user.username, user.access_token()), two_step=False)
            return pop

        pop = login()
        pop.dele(1)
        assert pop.stat()[0] == 2
        with pytest.raises(poplib.error_proto):
            pop.retr(1)
        pop.rset()
        pop.dele(2)
        pop.close()  # dropped without QUIT: nothing is deleted
        time.sleep(0.05)
        assert len(sandbox.store.messages(user.username)) == 3
        pop = login()
        pop.dele(2)
        assert len(sandbox.store.messages(user.username)) == 3
        pop.quit()
        assert [m.uid for m in sandbox.store.messages(user.username)] == [1, 3]


def test_pop3_pipelined_commands_answered_in_order(oauth: FakeOAuthServer, ca: TestCA) -> None:
    with make_sandbox(oauth, ca) as sandbox:
        user = sandbox.user(new_user())
        sandbox.store.deliver(user.username, MESSAGE)
        client = LineClient(sandbox.pop3.tls_port, sandbox.ssl_context)
        client.line()
        ir = b64(xoauth2(user.username, user.access_token()))
        client.sock.sendall(f"AUTH XOAUTH2 {ir}\r\nSTAT\r\nLIST 1\r\nNOOP\r\nQUIT\r\n".encode())
        replies = [client.line() for _ in range(5)]
        size = len(MESSAGE)
        assert replies == [
            "+OK Logged in.",
            f"+OK 1 {size}",
            f"+OK 1 {size}",
            "+OK",
            "+OK Logging out, 0 messages deleted.",
        ]
        client.close()


# -- on the test's own loop, and the validator seam ------------------------------------


@pytest.mark.asyncio
async def test_sandbox_on_running_loop(oauth: FakeOAuthServer, ca: TestCA) -> None:
    async with MailSandbox(Personality.GMAIL, oauth=oauth, ca=ca) as sandbox:
        user = sandbox.user(new_user())

        def send_and_read() -> bytes:
            with smtplib.SMTP(HOST, sandbox.smtp.starttls_port, timeout=5) as smtp:
                smtp.starttls(context=sandbox.ssl_context)
                smtp.ehlo()
                token = user.access_token()
                smtp.auth("XOAUTH2", lambda c=None: xoauth2(user.username, token))
                smtp.sendmail(user.username, [user.username], MESSAGE)
            imap = imaplib.IMAP4_SSL(
                HOST, sandbox.imap.tls_port, ssl_context=sandbox.ssl_context, timeout=5
            )
            token = user.access_token()
            imap.authenticate("XOAUTH2", lambda _c: xoauth2(user.username, token).encode())
            imap.select()
            _, data = imap.uid("FETCH", "1", "(BODY.PEEK[])")
            imap.logout()
            body = data[0]
            assert isinstance(body, tuple)
            return bytes(body[1])

        assert await asyncio.to_thread(send_and_read) == MESSAGE
        assert "IMAP" in sandbox.describe()


def test_custom_validator_on_plain_port() -> None:
    seen: list[tuple[str, str]] = []

    def validate(username: str, token: str) -> bool:
        seen.append((username, token))
        return token == "letmein"

    with TestImapServer(validator=validate) as server:
        imap = imaplib.IMAP4(HOST, server.port, timeout=5)
        assert "AUTH=XOAUTH2" in imap.capabilities
        typ, _ = imap.authenticate("XOAUTH2", lambda _c: xoauth2("a,b=c", "letmein").encode())
        assert typ == "OK"
        imap.logout()
        imap = imaplib.IMAP4(HOST, server.port, timeout=5)
        typ, _ = imap.authenticate(
            "OAUTHBEARER", lambda _c: oauthbearer("a,b=c", "letmein").encode()
        )
        assert typ == "OK"
        imap.logout()
    assert seen == [("a,b=c", "letmein"), ("a,b=c", "letmein")]


def test_line_limits_and_long_tokens() -> None:
    """A Microsoft-sized token fits a 334/+ answer; over the limits the servers
    refuse (SMTP: the 512-octet AUTH line) or close (POP3: MAX_LINE_LENGTH)."""
    long_token = "t" * 3000

    def validate(username: str, token: str) -> bool:
        return token == long_token

    with (
        TestSmtpServer(validator=validate) as smtp_server,
        smtplib.SMTP(HOST, smtp_server.port, timeout=5) as smtp,
    ):
        smtp.ehlo()
        response = b64(xoauth2("u@example.test", long_token))
        assert smtp.docmd("AUTH", "XOAUTH2 " + response)[0] == 500  # over 512 octets
        assert smtp.docmd("AUTH", "XOAUTH2") == (334, b"")
        assert smtp.docmd(response)[0] == 235

    with TestPop3Server(validator=validate) as pop_server:
        client = LineClient(pop_server.port, None)
        client.line()
        client.send("AUTH XOAUTH2")
        assert client.line() == "+ "
        client.send(b64(xoauth2("u@example.test", long_token)))
        assert client.line() == "+OK Logged in."
        client.send("NOOP " + "x" * MAX_LINE_LENGTH)
        assert client.line() == "-ERR Line too long."
        assert client.line() == ""
        client.close()
