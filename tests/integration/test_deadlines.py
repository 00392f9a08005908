"""Deadlines for whole replies and whole connects, a minimum rate for long transfers,
and POP3's maximum message size (issue 10, items 3 and 4).

Dripping servers send a byte at a time: with a fresh timeout per read they could hold a
client (and a poller's connection slot) for ever. Assertions are about what crossed the
wire (the client gave up before the server finished, it never sent the next command),
not about how fast anything ran; an outer guard only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest

from mailoauth._core.client_base import CONNECT_TIMEOUT_FACTOR, DEFAULT_MIN_RATE
from mailoauth.errors import ConfigurationError, LimitExceededError, MailTimeoutError
from mailoauth.imap.client import ImapClient
from mailoauth.poll import Mailbox, MailboxFailed, NewMessage, Poller
from mailoauth.pop3.client import DEFAULT_MAX_MESSAGE_SIZE, Pop3Client
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SmtpClient
from mailoauth.testing.faultproxy import Reply, ScriptedServer, drip, lines
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens.access_token import AccessToken

pytestmark = pytest.mark.asyncio

T = TypeVar("T")
GUARD = 20.0
LOCAL = "127.0.0.1"
TIMEOUT = 0.5
#: One byte every this many seconds: 20 bytes/s, far under DEFAULT_MIN_RATE.
DRIP = 0.05
GREETING = {
    "pop3": b"+OK POP3 server ready, a forty-byte greeting\r\n",
    "smtp": b"220 smtp.example.test ESMTP ready, forty bytes\r\n",
    "imap": b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n",
}


async def guarded(awaitable: Awaitable[T]) -> T:
    """Fail the test (instead of hanging it) if the client does not finish in time."""
    return await asyncio.wait_for(awaitable, GUARD)


def plain_client(cls: type[Any], port: int, **options: Any) -> Any:
    options.setdefault("timeout", TIMEOUT)
    return cls(
        LOCAL, port, "user@example.test", "t0k3n", SecurityOptions.NONE,
        allow_insecure_auth=True, **options,
    )  # fmt: skip


def pop3_answer(retr: Callable[[], Reply]) -> Callable[[bytes], Reply]:
    """A POP3 server that accepts any XOAUTH2 and answers RETR with ``retr()``."""

    def answer(line: bytes) -> Reply:
        verb = line.split()[0].upper() if line.split() else b""
        if verb == b"CAPA":
            return lines(b"+OK", b"SASL XOAUTH2", b"UIDL", b".")
        if verb == b"RETR":
            return retr()
        if verb == b"LIST":
            return lines(b"+OK", b"1 100000", b".")
        return b"+OK\r\n"

    return answer


# -- timeout bounds each reply as a whole ------------------------------------------------


@pytest.mark.parametrize("protocol", ["pop3", "smtp", "imap"])
async def test_dripped_greeting_is_bounded_by_the_timeout_as_a_whole(protocol: str) -> None:
    # 48 bytes at 20 bytes/s take 2.4 s; each byte comes well within TIMEOUT (0.5 s).
    greeting = GREETING[protocol]
    cls = {"pop3": Pop3Client, "smtp": SmtpClient, "imap": ImapClient}[protocol]
    async with ScriptedServer(lambda: drip(greeting, DRIP)) as server:
        client = plain_client(cls, server.port)
        with pytest.raises(MailTimeoutError, match="timed out"):
            await guarded(client.connect())
        await client.aclose()
    # The client gave up mid-greeting: it never sent a command.
    assert server.received == b""


async def test_pop3_dripped_status_line_is_bounded_by_the_timeout() -> None:
    def answer(line: bytes) -> Reply:
        if line.startswith(b"CAPA"):
            return drip(b"+OK here come the capabilities, slowly\r\nSASL XOAUTH2\r\n.\r\n", DRIP)
        return b"+OK\r\n"

    async with ScriptedServer(b"+OK hi\r\n", answer) as server:
        client = plain_client(Pop3Client, server.port)
        with pytest.raises(MailTimeoutError, match="the reply to CAPA"):
            await guarded(client.connect())
    assert b"AUTH" not in server.received


async def test_smtp_dripped_reply_is_bounded_by_the_timeout() -> None:
    def answer(line: bytes) -> Reply:
        if line.upper().startswith(b"EHLO"):
            return drip(b"250-smtp.example.test at your service\r\n250 AUTH XOAUTH2\r\n", DRIP)
        return b"250 OK\r\n"

    async with ScriptedServer(GREETING["smtp"], answer) as server:
        client = plain_client(SmtpClient, server.port)
        with pytest.raises(MailTimeoutError):
            await guarded(client.connect())
    assert b"AUTH" not in server.received


# -- a long transfer is bounded by a minimum rate ----------------------------------------


async def test_pop3_retr_dripped_for_ever_fails_under_the_minimum_rate() -> None:
    def retr() -> Reply:
        return drip(b"x", DRIP, prefix=b"+OK message follows\r\n", forever=True)

    async with ScriptedServer(b"+OK hi\r\n", pop3_answer(retr)) as server:
        client = plain_client(Pop3Client, server.port)
        await guarded(client.connect())
        with pytest.raises(MailTimeoutError, match=r"too slowly .*min_rate=1024"):
            await guarded(client.retrieve(1))
        await client.aclose()
    assert b"QUIT" not in server.received  # abandoned: nothing would be deleted


async def test_pop3_iter_message_dripped_for_ever_fails_too() -> None:
    def retr() -> Reply:
        return drip(b"y", DRIP, prefix=b"+OK\r\n", forever=True)

    async with ScriptedServer(b"+OK hi\r\n", pop3_answer(retr)) as server:
        client = plain_client(Pop3Client, server.port)
        await guarded(client.connect())
        received = 0

        async def read_all() -> None:
            nonlocal received
            async for chunk in client.iter_message(1):
                received += len(chunk)

        with pytest.raises(MailTimeoutError, match="too slowly"):
            await guarded(read_all())
        await client.aclose()
    assert received > 0  # bytes did come, just under the minimum rate


async def test_pop3_slow_transfer_above_min_rate_outlasts_the_timeout() -> None:
    body = b"z" * 40  # 40 bytes at 20 bytes/s: 2 s, four times the timeout
    message = body + b"\r\n.\r\n"

    def retr() -> Reply:
        return drip(message, DRIP, prefix=b"+OK\r\n")

    async with ScriptedServer(b"+OK hi\r\n", pop3_answer(retr)) as server:
        # 10 bytes/s is under the server's 20 bytes/s: the transfer may go on.
        client = plain_client(Pop3Client, server.port, min_rate=10)
        await guarded(client.connect())
        assert await guarded(client.retrieve(1)) == body + b"\r\n"
        await client.aclose()


async def test_pop3_time_the_caller_spends_between_chunks_is_not_the_servers() -> None:
    big = b"m" * 200_000 + b"\r\n"

    def retr() -> Reply:
        return b"+OK\r\n" + big + b".\r\n"

    async with ScriptedServer(b"+OK hi\r\n", pop3_answer(retr)) as server:
        client = plain_client(Pop3Client, server.port)
        await guarded(client.connect())
        got = bytearray()
        async for chunk in client.iter_message(1):
            got += chunk
            await asyncio.sleep(TIMEOUT / 2)  # a slow consumer, more than TIMEOUT in all
        assert bytes(got) == big
        await client.aclose()


def smtp_answer(final: Callable[[], Reply]) -> Callable[[bytes], Reply]:
    """An SMTP server that accepts any XOAUTH2 and answers the final dot with ``final()``."""

    def answer(line: bytes) -> Reply:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return b"250-smtp.example.test\r\n250 AUTH XOAUTH2\r\n"
        if verb == b"AUTH":
            return b"235 2.7.0 accepted\r\n"
        if verb in (b"MAIL", b"RCPT", b"QUIT", b"RSET", b"NOOP"):
            return b"250 2.0.0 OK\r\n" if verb != b"QUIT" else b"221 bye\r\n"
        if verb == b"DATA":
            return b"354 go ahead\r\n"
        if line == b".\r\n":
            return final()
        return None  # a line of the message

    return answer


async def test_smtp_wait_for_the_data_reply_grows_with_the_message() -> None:
    # The reply to the final dot comes only once the whole message is through: on a
    # slow link that is long after one reply's timeout. Here the server takes 1 s, twice
    # the timeout; with min_rate=10,000 a 10 kB message may take 0.5 + 1 = 1.5 s.
    async def late_250() -> AsyncIterator[bytes]:
        await asyncio.sleep(2 * TIMEOUT)
        yield b"250 2.0.0 queued\r\n"

    body = b"Subject: slow link\r\n\r\n" + b"line of text\r\n" * 800
    assert len(body) > 10_000
    async with ScriptedServer(GREETING["smtp"], smtp_answer(late_250)) as server:
        async with plain_client(SmtpClient, server.port, min_rate=10_000) as client:
            result = await guarded(client.sendmail("a@example.test", ["b@example.test"], body))
        assert "queued" in result.data_reply
        async with plain_client(SmtpClient, server.port, min_rate=1e9) as client:
            with pytest.raises(MailTimeoutError):
                await guarded(client.sendmail("a@example.test", ["b@example.test"], body))


# -- connect() is bounded end to end -----------------------------------------------------


class StuckProvider:
    """A token provider whose endpoint never answers."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3"])
async def test_connect_deadline_covers_the_token_fetch(
    mailoauth_sandbox: MailSandbox, protocol: str
) -> None:
    box = mailoauth_sandbox
    user = box.user(f"deadline-{protocol}@example.test")
    server = getattr(box, protocol)
    cls = {"smtp": SmtpClient, "imap": ImapClient, "pop3": Pop3Client}[protocol]
    provider = StuckProvider()
    client = cls(
        box.host, server.tls_port, user.username, provider, SecurityOptions.SSL_IMPLICIT,
        ssl_context=box.ssl_context, timeout=5.0, connect_timeout=1.0,
    )  # fmt: skip
    with pytest.raises(MailTimeoutError, match=r"connect_timeout=1s .*access token"):
        await guarded(client.connect())
    assert provider.calls == 1  # it got as far as asking for the token
    await client.aclose()


async def test_connect_deadline_covers_many_slow_replies() -> None:
    # Every reply comes inside the timeout (0.4 s of 0.5 s), so only the whole-connect
    # deadline can stop a server that keeps the client going one slow reply after
    # another: greeting, CAPA, AUTH and CAPA take 1.6 s, over connect_timeout=1.
    def answer(line: bytes) -> Reply:
        async def slow() -> AsyncIterator[bytes]:
            await asyncio.sleep(0.4)
            if line.startswith(b"CAPA"):
                yield lines(b"+OK", b"SASL XOAUTH2", b".")
            else:
                yield b"+OK\r\n"

        return slow()

    async def greeting() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.4)
        yield b"+OK hi\r\n"

    async with ScriptedServer(greeting, answer) as server:
        client = plain_client(Pop3Client, server.port, timeout=0.5, connect_timeout=1.0)
        with pytest.raises(MailTimeoutError, match="connect_timeout=1s"):
            await guarded(client.connect())
    assert b"CAPA" in server.received  # the greeting came in time: a later reply was cut


async def test_deadline_options_are_checked_and_default_sensibly() -> None:
    client = Pop3Client(LOCAL, 995, "u@example.test", "t", timeout=7.0)
    assert client.connect_timeout == CONNECT_TIMEOUT_FACTOR * 7.0
    assert client.min_rate == DEFAULT_MIN_RATE == 1024.0
    assert client.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 200 * 1024 * 1024
    make = functools.partial(Pop3Client, LOCAL, 995, "u@example.test", "t")
    for bad in ({"connect_timeout": 0}, {"min_rate": 0}, {"min_rate": float("inf")}):
        with pytest.raises(ConfigurationError):
            make(**bad)
    sizes: list[Any] = [0, -1, True, 1.5]
    for size in sizes:
        with pytest.raises(ConfigurationError, match="max_message_size"):
            make(max_message_size=size)
    for cls in (SmtpClient, ImapClient):
        other = cls(LOCAL, 993, "u@example.test", "t", min_rate=5, connect_timeout=3)
        assert (other.min_rate, other.connect_timeout) == (5, 3)


# -- a poller is not starved by dripping mailboxes ---------------------------------------


async def test_poller_with_two_dripping_mailboxes_still_serves_a_healthy_one(
    mailoauth_sandbox: MailSandbox,
) -> None:
    box = mailoauth_sandbox
    user = box.user("healthy@example.test")
    box.store.deliver(user.username, b"Subject: hello\r\n\r\nstill served\r\n")
    endless_greeting = functools.partial(drip, b"+OK slow", DRIP, forever=True)
    async with ScriptedServer(endless_greeting) as slow1, ScriptedServer(endless_greeting) as slow2:
        dripping = [
            Mailbox("pop3", LOCAL, server.port, f"drip{n}@example.test", "t0k3n",
                    SecurityOptions.NONE, allow_insecure_auth=True, timeout=TIMEOUT)
            for n, server in enumerate((slow1, slow2))
        ]  # fmt: skip
        healthy = Mailbox(
            "pop3", box.host, box.pop3.tls_port, user.username, user.access_token(),
            SecurityOptions.SSL_IMPLICIT, ssl_context=box.ssl_context, timeout=5.0,
        )  # fmt: skip
        failures: list[MailboxFailed] = []
        async with Poller(dripping, max_connections=2, start="all", interval=60.0) as poller:
            # Both slots are taken by the dripping servers before the healthy one comes.
            for _ in range(200):
                if slow1.connections and slow2.connections:
                    break
                await asyncio.sleep(0.01)
            assert slow1.connections and slow2.connections
            poller.add(healthy)

            async def first_message() -> NewMessage:
                async for event in poller:
                    if isinstance(event, NewMessage):
                        return event
                    failures.append(event)
                raise AssertionError("the poller stopped")

            event = await guarded(first_message())
    assert event.mailbox == healthy.key and b"still served" in event.raw
    assert failures and all(isinstance(f.error, MailTimeoutError) for f in failures)
    assert {f.mailbox for f in failures} <= {m.key for m in dripping}


# -- POP3 maximum message size -------------------------------------------------------------


async def pop3_with(box: MailSandbox, *bodies: bytes, **options: Any) -> Pop3Client:
    user = box.user(f"size{len(box.store.users())}@example.test")
    for body in bodies:
        box.store.deliver(user.username, body)
    client = Pop3Client(
        box.host, box.pop3.tls_port, user.username, user.access_token(),
        SecurityOptions.SSL_IMPLICIT, ssl_context=box.ssl_context, **options,
    )  # fmt: skip
    await guarded(client.connect())
    return client


def message(size: int, tag: bytes) -> bytes:
    head = b"Subject: " + tag + b"\r\n\r\n"
    return head + b"b" * (size - len(head) - 2) + b"\r\n"


async def test_pop3_message_over_the_limit_is_refused_before_retr_when_listed(
    mailoauth_sandbox: MailSandbox,
) -> None:
    small, big = message(1000, b"small"), message(20_000, b"big")
    client = await pop3_with(mailoauth_sandbox, small, big, small, max_message_size=10_000)
    sizes = await client.list()
    assert sizes[2] > 10_000
    with pytest.raises(LimitExceededError, match=r"max_message_size .*iter_message\(\)"):
        await client.retrieve(2)
    await client.noop()  # nothing was asked for: the session goes on
    got = []
    with pytest.raises(LimitExceededError, match="message 2"):
        async for number, data in client.retrieve_many([1, 2, 3]):
            got.append((number, data))
    assert got == [(1, small)]  # the messages before it were yielded
    streamed = b"".join([chunk async for chunk in client.iter_message(2)])
    assert streamed == big  # the streaming API takes any size
    await client.aclose()


async def test_pop3_message_over_the_limit_is_cut_off_while_reading(
    mailoauth_sandbox: MailSandbox,
) -> None:
    big = message(300_000, b"big")
    client = await pop3_with(mailoauth_sandbox, big, big, max_message_size=100_000)
    # No LIST: the size is unknown before RETR, and bounded while reading.
    with pytest.raises(LimitExceededError, match=r"closed without QUIT"):
        await client.retrieve(1)
    await client.aclose()
    client = await pop3_with(mailoauth_sandbox, big, max_message_size=100_000)
    with pytest.raises(LimitExceededError, match="message 1"):
        async for _ in client.retrieve_many([1]):
            pass
    await client.aclose()
    client = await pop3_with(mailoauth_sandbox, big, max_message_size=100_000)
    with pytest.raises(LimitExceededError):
        await client.top(1, 100_000)
    await client.aclose()


# -- IMAP: a long response at min_rate outlasts the timeout, a drip does not -------------

IMAP_GREETING = b"* OK ready\r\n"


def imap_answer(noop: Callable[[bytes], Reply]) -> Callable[[bytes], Reply]:
    """An IMAP server that accepts any XOAUTH2 and answers NOOP with ``noop(tag)``."""

    def answer(line: bytes) -> Reply:
        tag, _, rest = line.strip().partition(b" ")
        command = rest.split(b" ")[0].upper()
        if command == b"NOOP":
            return noop(tag)
        if command == b"LOGOUT":
            return b"* BYE bye\r\n" + tag + b" OK done\r\n"
        if command == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n" + tag + b" OK done\r\n"
        return tag + b" OK done\r\n"

    return answer


async def test_imap_long_response_above_min_rate_outlasts_the_timeout() -> None:
    # 15 x 200 bytes, one every 0.1 s: 2 kB/s for 1.5 s, three times the timeout.
    def noop(tag: bytes) -> Reply:
        async def steady() -> AsyncIterator[bytes]:
            for _ in range(15):
                yield b"* 1 EXISTS\r\n" * 16 + b"* OK padding..\r\n"
                await asyncio.sleep(0.1)
            yield tag + b" OK NOOP done\r\n"

        return steady()

    async with ScriptedServer(IMAP_GREETING, imap_answer(noop)) as server:
        client = plain_client(ImapClient, server.port)
        await guarded(client.connect())
        await guarded(client.noop())
        await client.aclose()


async def test_imap_response_dripped_for_ever_fails_under_the_minimum_rate() -> None:
    def noop(tag: bytes) -> Reply:
        return drip(b"* 1 EXISTS\r\n", DRIP, forever=True)

    async with ScriptedServer(IMAP_GREETING, imap_answer(noop)) as server:
        client = plain_client(ImapClient, server.port)
        await guarded(client.connect())
        with pytest.raises(MailTimeoutError):
            await guarded(client.noop())
        await client.aclose()
