"""``mailoauth demo``: the whole story on loopback, in a few seconds.

Starts the sandbox (fake OAuth server, test CA, SMTP/IMAP/POP3 servers) in this
process, then: get a token, send over SMTP, read over IMAP and POP3, let a token expire
and watch the refresh, revoke one and watch the retry, and poll several mailboxes at
once. No account and no network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import email.message
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio

from mailoauth.cli.output import Printer, Timer, redact, relative_time
from mailoauth.errors import ConfigurationError
from mailoauth.imap.client import ImapClient
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.tokens.access_token import utcnow
from mailoauth.tokens.grants import RefreshTokenGrant
from mailoauth.tokens.oauth2 import OAuth2TokenProvider

if TYPE_CHECKING:
    from mailoauth.testing.sandbox import MailSandbox

__all__ = ["add_parser", "run"]

PERSONALITIES = ("gmail", "office365", "rfc")
#: Lifetime of the tokens in the "let it expire" step (seconds).
SHORT_LIFETIME = 2
#: Mailboxes polled at once in the last step.
POLLED_MAILBOXES = 5
POLL_INTERVAL = 0.2
#: The poll step gives up after this many seconds.
POLL_DEADLINE = 10.0
DEMO_CLIENT_ID = "mailoauth-demo"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole story against an in-process sandbox (no account needed)",
        description=(
            "Start a fake OAuth server and SMTP/IMAP/POP3 test servers on 127.0.0.1 in "
            "this process, then get a token, send a message over SMTP, read it over IMAP "
            "and POP3, let a token expire and watch the refresh, revoke one and watch "
            "the retry, and poll several mailboxes at once. No network, no account; "
            "finishes in seconds."
        ),
    )
    parser.add_argument(
        "--personality",
        choices=PERSONALITIES,
        default="gmail",
        help="which provider the test servers imitate (how they reject a token); default: gmail",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(demo(args.personality, Printer()))


class _StepLog(logging.Handler):
    """Shows the library's own DEBUG lines about rejections and refreshes, live."""

    def __init__(self, out: Printer) -> None:
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == "mailoauth.auth" or message.startswith("refreshing access token"):
            self.out.detail(f"log {record.name}: {message}")


@contextmanager
def _library_log(out: Printer) -> Iterator[None]:
    handler = _StepLog(out)
    loggers = [logging.getLogger(name) for name in ("mailoauth.auth", "mailoauth.tokens")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.DEBUG:
            lg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _message(sender: str, to: str, subject: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(f"{subject}\n\nSent by mailoauth demo over SMTP with an OAuth token.\n")
    return msg


async def demo(personality_name: str, out: Printer) -> int:
    """Run the demo, printing a transcript to ``out``; returns the exit status."""
    try:
        from mailoauth.testing.personality import Personality
        from mailoauth.testing.sandbox import MailSandbox
    except ImportError as exc:  # the sandbox extra is not installed
        raise ConfigurationError(
            f"the demo runs an in-process sandbox, which needs the sandbox extra "
            f"({exc.name} is not installed): pip install 'mailoauth[sandbox]'"
        ) from exc
    total = Timer()
    out.line(
        "mailoauth demo: real SMTP, IMAP and POP3 clients with OAuth 2.0 against an "
        "in-process sandbox on 127.0.0.1 (no account, no network)."
    )
    out.heading(f"Sandbox (servers imitate {personality_name})")
    timer = Timer()
    async with MailSandbox(personality=Personality(personality_name)) as sb:
        out.ok("START", "fake OAuth server, test CA, SMTP, IMAP and POP3 servers", timer)
        for line in sb.describe().splitlines():
            out.detail(" ".join(line.split()))
        await _story(sb, out)
    out.line()
    out.ok("DONE", f"every step passed in {total.ms / 1000:.1f} s")
    return 0


def _provider(sb: MailSandbox, username: str) -> OAuth2TokenProvider:
    user = sb.user(username)
    return OAuth2TokenProvider(
        sb.oauth.token_url, RefreshTokenGrant(user.refresh_token), client_id=DEMO_CLIENT_ID
    )


async def _story(sb: MailSandbox, out: Printer) -> None:
    alice, bob = "alice@example.test", "bob@example.test"
    alice_tokens, bob_tokens = _provider(sb, alice), _provider(sb, bob)
    out.ok("USERS", f"{alice} and {bob}, each with a refresh token from the OAuth server")
    ctx = sb.ssl_context
    S = SecurityOptions
    try:
        out.heading("1. Get an access token")
        timer = Timer()
        token = await bob_tokens.get_access_token()
        expiry = (
            relative_time((token.expires_at - utcnow()).total_seconds())
            if token.expires_at
            else "unknown"
        )
        out.ok(
            "TOKEN",
            f"refresh_token grant at {sb.oauth.token_url}: access token {redact(token.value)} "
            f"(expires {expiry})",
            timer,
        )

        out.heading("2. Send it over SMTP, read it over IMAP and POP3")
        subject = "Hello from mailoauth"
        timer = Timer()
        async with SmtpClient(
            sb.smtp.host,
            sb.smtp.starttls_port,
            alice,
            alice_tokens,
            S.SSL_EXPLICIT,
            ssl_context=ctx,
        ) as smtp:
            await smtp.send_message(_message(alice, bob, subject))
            mech = smtp.mechanism_used
        out.ok("SMTP", f"sent {subject!r} {alice} → {bob} over STARTTLS ({mech})", timer)

        timer = Timer()
        async with ImapClient(
            sb.imap.host,
            sb.imap.tls_port,
            bob,
            bob_tokens,
            S.SSL_IMPLICIT,
            ssl_context=ctx,
            mechanism="XOAUTH2",
        ) as imap:
            info = await imap.select()
            uids = await imap.uid_search("ALL")
            read = await imap.fetch_message(uids[-1])
            mech = imap.mechanism_used
        out.ok(
            "IMAP",
            f"{bob}'s INBOX has {info.exists} message; read {read['Subject']!r} over "
            f"implicit TLS ({mech})",
            timer,
        )

        timer = Timer()
        async with Pop3Client(
            sb.pop3.host,
            sb.pop3.starttls_port,
            bob,
            bob_tokens,
            S.SSL_EXPLICIT,
            ssl_context=ctx,
        ) as pop:
            stat = await pop.stat()
            popped = await pop.retrieve_message(stat.count)
            mech = pop.mechanism_used
        out.ok(
            "POP3",
            f"{stat.count} message ({stat.size} bytes); retrieved {popped['Subject']!r} over "
            f"STLS ({mech})",
            timer,
        )
        out.detail(
            f"one token per user, shared by that user's sessions (alice's: SMTP; bob's: "
            f"IMAP and POP3): {sb.oauth.stats.token_requests} token requests so far"
        )
        await _expiry(sb, out, bob)
        await _revoke(sb, out, bob, bob_tokens)
        await _poll(sb, out, alice_tokens, alice)
    finally:
        await alice_tokens.aclose()
        await bob_tokens.aclose()


async def _expiry(sb: MailSandbox, out: Printer, bob: str) -> None:
    out.heading("3. Let the token expire and watch the refresh")
    sb.oauth.access_token_lifetime = SHORT_LIFETIME
    short = _provider(sb, bob)
    try:
        first = await short.get_access_token()
        out.detail(
            f"the OAuth server now issues {SHORT_LIFETIME}-second tokens: got {redact(first.value)}"
        )
        await asyncio.sleep(0)
        with out.waiting(f"waiting {SHORT_LIFETIME + 0.1:g} s for it to expire"):
            await asyncio.sleep(SHORT_LIFETIME + 0.1)
        before = sb.oauth.stats.token_requests
        timer = Timer()
        with _library_log(out):
            async with ImapClient(
                sb.imap.host,
                sb.imap.tls_port,
                bob,
                short,
                SecurityOptions.SSL_IMPLICIT,
                ssl_context=sb.ssl_context,
            ) as imap:
                await imap.select()
        after = short.token_manager.cached_token
        assert after is not None
        out.ok(
            "IMAP",
            f"connected with a new token {redact(after.value)}: the client saw "
            f"{redact(first.value)} had expired and refreshed before AUTHENTICATE (token "
            f"requests {before} → {sb.oauth.stats.token_requests})",
            timer,
        )
    finally:
        sb.oauth.access_token_lifetime = 3600.0
        await short.aclose()


async def _revoke(sb: MailSandbox, out: Printer, bob: str, tokens: OAuth2TokenProvider) -> None:
    out.heading("4. Revoke the token and watch the retry")
    cached = tokens.token_manager.cached_token
    assert cached is not None
    sb.oauth.revoke(cached.value)
    out.detail(
        f"revoked {redact(cached.value)} at the OAuth server; the client still holds it "
        f"and believes it fresh"
    )
    before = sb.oauth.stats.token_requests
    timer = Timer()
    with _library_log(out):
        async with Pop3Client(
            sb.pop3.host,
            sb.pop3.tls_port,
            bob,
            tokens,
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=sb.ssl_context,
        ) as pop:
            stat = await pop.stat()
    out.ok(
        "RETRY",
        f"POP3 rejected → refreshed → retried → OK, {stat.count} message (token requests "
        f"{before} → {sb.oauth.stats.token_requests})",
        timer,
    )


async def _poll(
    sb: MailSandbox, out: Printer, sender_tokens: OAuth2TokenProvider, sender: str
) -> None:
    from mailoauth.poll import Mailbox, MailboxFailed, NewMessage, Poller

    out.heading(f"5. Poll {POLLED_MAILBOXES} mailboxes at once with the Poller")
    names = [f"user{i}@example.test" for i in range(1, POLLED_MAILBOXES + 1)]
    providers = {name: _provider(sb, name) for name in names}
    # The last mailbox is a POP3 maildrop (polled by UIDL), the others IMAP (IDLE).
    mailboxes = [
        Mailbox(
            "pop3" if name == names[-1] else "imap",
            sb.host,
            sb.pop3.tls_port if name == names[-1] else sb.imap.tls_port,
            name,
            providers[name],
            SecurityOptions.SSL_IMPLICIT,
            ssl_context=sb.ssl_context,
            key=name + (" (POP3)" if name == names[-1] else " (IMAP)"),
        )
        for name in names
    ]
    started = Timer()
    try:
        # start="all": the mailboxes are empty now, so everything in them will be new.
        async with Poller(mailboxes, start="all", interval=POLL_INTERVAL) as poller:
            timer = Timer()
            async with SmtpClient(
                sb.smtp.host,
                sb.smtp.tls_port,
                sender,
                sender_tokens,
                SecurityOptions.SSL_IMPLICIT,
                ssl_context=sb.ssl_context,
            ) as smtp:
                for i, name in enumerate(names, 1):
                    await smtp.send_message(_message(sender, name, f"Report #{i}"))
            out.ok("SMTP", f"delivered one message to each of {len(names)} mailboxes", timer)
            seen = 0
            with anyio.fail_after(POLL_DEADLINE):
                async for event in poller:
                    if isinstance(event, NewMessage):
                        seen += 1
                        where = f"UID {event.uid}" if event.uid is not None else "UIDL"
                        out.ok(
                            "POLL",
                            f"{event.mailbox}: new message {event.message()['Subject']!r} "
                            f"({where}) at +{started.text()}",
                        )
                    elif isinstance(event, MailboxFailed):
                        out.fail("POLL", f"{event.mailbox}: {event.error}")
                        if event.permanent:
                            raise event.error
                    if seen == len(names):
                        break
        out.detail(
            f"{len(names)} mailboxes watched from one event loop: IMAP with IDLE, POP3 by "
            f"UIDL every {POLL_INTERVAL:g} s; one stream of events"
        )
    finally:
        for provider in providers.values():
            await provider.aclose()
