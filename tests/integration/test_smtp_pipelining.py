"""SmtpClient with PIPELINING (RFC 2920) and CHUNKING (RFC 3030).

Against a scripted server (tests/integration/smtp_script.py) that only answers a
pipelined group once all of it has arrived, and against real Postfix, which offers
both. Results must be exactly those of the one-command-at-a-time path.
"""

from __future__ import annotations

import asyncio
import email.message
import uuid
from typing import Any

import pytest

from mailoauth.errors import (
    CommandError,
    ConnectionLostError,
    MailTimeoutError,
    ProtocolError,
)
from mailoauth.imap.client import ImapClient
from mailoauth.security import SecurityOptions
from mailoauth.smtp import SendResult, SmtpClient, SmtpPool
from mailoauth.smtp.client import GROUP_LIMIT
from mailoauth.smtp.replies import MAX_REPLY_LENGTH
from tests.integration.conftest import MailServers
from tests.integration.smtp_script import Script, ScriptedSmtp

pytestmark = pytest.mark.asyncio

SENDER = "from@example.test"
BODY = b"Subject: hi\r\n\r\nfirst\r\n.starts with a dot\r\n..two dots\r\nlast\r\n"
#: Bounds every test against a hang; no test asserts a duration.
GUARD = 20.0


def client(server: ScriptedSmtp, **options: Any) -> SmtpClient:
    return SmtpClient(
        "127.0.0.1",
        server.port,
        SENDER,
        "at-scripted",
        SecurityOptions.NONE,
        allow_insecure_auth=True,
        timeout=options.pop("timeout", 5.0),
        **options,
    )


def refuse(*addresses: str, reply: bytes = b"550 5.1.1 no such user") -> Any:
    return lambda arg: reply if any(a in arg for a in addresses) else None


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_pipelined_send_reports_each_refused_recipient(chunking: bool) -> None:
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)
    script = Script(extensions=extensions, rcpt=refuse("b@x.test"), hold_replies=True)
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        result = await asyncio.wait_for(
            smtp.sendmail(SENDER, ["a@x.test", "b@x.test", "c@x.test"], BODY), GUARD
        )
    assert set(result.refused) == {"b@x.test"}
    assert result.refused["b@x.test"].code == 550
    assert result.data_reply == "2.0.0 queued as SCRIPTED"
    session = server.sessions[-1]
    assert session.pipelined
    verbs = [c.split()[0] for c in session.commands]
    assert verbs[-6:] == ["MAIL", "RCPT", "RCPT", "RCPT", "BDAT" if chunking else "DATA", "QUIT"]
    assert session.bodies == [BODY]  # dot-stuffing undone by the server, or none at all


@pytest.mark.parametrize("pipelining", [True, False])
async def test_send_message_options_match_the_unpipelined_path(pipelining: bool) -> None:
    script = Script(extensions=("PIPELINING", "CHUNKING", "8BITMIME", "SMTPUTF8", "SIZE 99999"))
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, "jörg@x.test", "grüße"
    msg["Bcc"] = "hidden@x.test"
    msg.set_content("grüße\n")
    async with ScriptedSmtp(script) as server, client(server, pipelining=pipelining) as smtp:
        await asyncio.wait_for(smtp.send_message(msg), GUARD)
    session = server.sessions[-1]
    mail = next(c for c in session.commands if c.startswith("MAIL"))
    assert mail.upper().endswith("SMTPUTF8 BODY=8BITMIME")
    assert mail.upper().startswith(f"MAIL FROM:<{SENDER.upper()}> SIZE=")
    rcpts = [c for c in session.commands if c.startswith("RCPT")]
    assert rcpts == ["RCPT TO:<jörg@x.test>", "RCPT TO:<hidden@x.test>"]
    assert b"hidden@x.test" not in session.bodies[0]


async def test_non_ascii_address_without_smtputf8_is_refused_before_sending() -> None:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, "jörg@x.test", "x"
    msg.set_content("x\n")
    async with ScriptedSmtp(Script()) as server, client(server) as smtp:
        with pytest.raises(ProtocolError, match="SMTPUTF8"):
            await asyncio.wait_for(smtp.send_message(msg), GUARD)
        assert not any(c.startswith("MAIL") for c in server.sessions[-1].commands)
        assert smtp.connected


async def test_lf_only_message_goes_out_with_crlf_and_its_size() -> None:
    script = Script(hold_replies=True)
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], b"Subject: x\n\nbody"), GUARD)
    session = server.sessions[-1]
    assert session.bodies == [b"Subject: x\r\n\r\nbody\r\n"]
    mail = next(c for c in session.commands if c.startswith("MAIL"))
    assert mail == "MAIL FROM:<from@example.test> SIZE=20"
    assert "BDAT 20 LAST" in session.commands


async def test_a_large_message_waits_for_its_envelope_replies() -> None:
    # Over GROUP_LIMIT the message goes after the envelope's replies: a server that
    # answers a long group in parts would otherwise leave its last reply waiting for a
    # delayed ACK. A small one goes in the same write as its envelope.
    large = b"Subject: large\r\n\r\n" + b"x" * GROUP_LIMIT + b"\r\n"
    async with ScriptedSmtp(Script()) as server, client(server) as smtp:
        for message in (BODY, large):
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], message), GUARD)
    session = server.sessions[-1]
    rcpts = [n for n, c in enumerate(session.commands) if c.startswith("RCPT")]
    assert [session.followed[n] for n in rcpts] == [True, False]
    assert session.bodies == [BODY, large]


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_every_recipient_refused_raises_as_before_and_resets(chunking: bool) -> None:
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)
    script = Script(extensions=extensions, rcpt=refuse("@x.test", reply=b"450 4.2.0 busy"))
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        with pytest.raises(CommandError) as info:
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test", "b@x.test"], BODY), GUARD)
        assert info.value.command == "RCPT" and info.value.code == 450
        assert info.value.enhanced_code == "4.2.0" and info.value.retryable
        assert "refused every recipient" in str(info.value)
        assert server.sessions[-1].commands[-1] == "RSET"
        script.rcpt = lambda arg: None
        result = await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
    assert result.refused == {}
    # DATA: the refused message was never sent; BDAT: its chunk was, and discarded.
    assert server.sessions[-1].bodies == ([BODY, BODY] if chunking else [BODY])


async def test_data_accepted_without_recipients_ends_the_empty_message() -> None:
    # A server that answers 354 to a pipelined DATA although every RCPT failed: the
    # client must send the lone dot (RFC 2920 §3.1), not the message.
    script = Script(
        extensions=("PIPELINING",),
        rcpt=refuse("a@x.test"),
        data_start=lambda accepted: b"354 go ahead anyway",
    )
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        with pytest.raises(CommandError) as info:
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
        assert info.value.command == "RCPT"
        assert server.sessions[-1].bodies == [b""]
        await asyncio.wait_for(smtp.noop(), GUARD)  # the session is still in step


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_mail_from_refused(chunking: bool) -> None:
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)
    script = Script(extensions=extensions, mail=lambda arg: b"553 5.7.1 sender not owned")
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        with pytest.raises(CommandError) as info:
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
        assert (info.value.command, info.value.code) == ("MAIL", 553)
        assert not info.value.retryable
        assert "553 5.7.1 sender not owned" in str(info.value)
        assert server.sessions[-1].commands[-1] == "RSET"
        assert smtp.connected


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_message_refused_after_recipients_accepted(chunking: bool) -> None:
    extensions = ("PIPELINING", "CHUNKING") if chunking else ("PIPELINING",)
    script = Script(extensions=extensions, data_end=lambda body: b"554 5.6.0 content rejected")
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        with pytest.raises(CommandError) as info:
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
        assert (info.value.command, info.value.code) == ("DATA", 554)
        assert info.value.enhanced_code == "5.6.0"
        assert server.sessions[-1].commands[-1] == "RSET"


async def test_data_refused_before_the_message_is_sent() -> None:
    script = Script(extensions=("PIPELINING",), data_start=lambda n: b"452 4.3.1 no space")
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        with pytest.raises(CommandError) as info:
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
    assert (info.value.command, info.value.code) == ("DATA", 452)
    assert server.sessions[-1].bodies == []


async def test_server_without_pipelining_gets_one_command_at_a_time() -> None:
    script = Script(extensions=("CHUNKING", "8BITMIME"), rcpt=refuse("b@x.test"))
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        result = await asyncio.wait_for(
            smtp.sendmail(SENDER, ["a@x.test", "b@x.test"], BODY), GUARD
        )
    assert set(result.refused) == {"b@x.test"}
    session = server.sessions[-1]
    assert not session.pipelined
    assert "DATA" in session.commands  # aiosmtplib's path: no BDAT
    assert session.bodies == [BODY]


async def test_pipelining_can_be_turned_off() -> None:
    async with ScriptedSmtp(Script()) as server, client(server, pipelining=False) as smtp:
        await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
    assert not server.sessions[-1].pipelined


@pytest.mark.parametrize("verb", ["RCPT", "BDAT"])
async def test_server_closing_mid_pipeline_raises_and_reconnects(verb: str) -> None:
    script = Script(close_on=verb)
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        with pytest.raises(ConnectionLostError) as info:
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
        assert "closed the connection" in str(info.value)
        assert not smtp.connected
        script.close_on = None
        result = await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
    assert result.refused == {} and len(server.sessions) == 2


async def test_silent_server_times_out_and_the_connection_is_closed() -> None:
    script = Script(silent_on="BDAT")
    async with ScriptedSmtp(script) as server, client(server, timeout=2.0) as smtp:
        with pytest.raises(MailTimeoutError):
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
        assert not smtp.connected


async def test_an_endless_reply_is_refused_with_bounded_memory() -> None:
    huge = b"250-" + b"x" * 1000 + b"\r\n"
    script = Script(rcpt=lambda arg: huge * (MAX_REPLY_LENGTH // len(huge) + 2) + b"250 ok")
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        with pytest.raises(ProtocolError, match="too long"):
            await asyncio.wait_for(smtp.sendmail(SENDER, ["a@x.test"], BODY), GUARD)
        assert not smtp.connected


async def test_send_many_pipelines_messages_and_reports_each() -> None:
    script = Script(rcpt=refuse("bad@x.test"), hold_replies=True)
    messages: list[Any] = [
        (SENDER, ["a@x.test"], b"Subject: 1\r\n\r\n1\r\n"),
        (SENDER, ["bad@x.test"], b"Subject: 2\r\n\r\n2\r\n"),
        (SENDER, ["a@x.test", "bad@x.test"], b"Subject: 3\r\n\r\n3\r\n"),
        (SENDER, ["evil\r\n@x.test"], b"Subject: 4\r\n\r\n4\r\n"),
        (SENDER, ["a@x.test"], b"Subject: 5\r\n\r\n5\r\n"),
    ]
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        results = await asyncio.wait_for(smtp.send_many(messages, window=4), GUARD)
    assert isinstance(results[0], SendResult) and results[0].refused == {}
    assert isinstance(results[1], CommandError) and results[1].command == "RCPT"
    assert isinstance(results[2], SendResult) and set(results[2].refused) == {"bad@x.test"}
    assert type(results[3]).__name__ == "ConfigurationError"
    assert isinstance(results[4], SendResult)
    session = server.sessions[-1]
    assert session.bodies == [
        b"Subject: 1\r\n\r\n1\r\n",
        b"Subject: 2\r\n\r\n2\r\n",
        b"Subject: 3\r\n\r\n3\r\n",
        b"Subject: 5\r\n\r\n5\r\n",
    ]
    # Each message of a window after the first starts with RSET: a refused one
    # cannot leave the next one in its transaction.
    assert session.commands.count("RSET") >= 2


# -- real Postfix --------------------------------------------------------------------


def submission(servers: MailServers, user: str, **options: Any) -> SmtpClient:
    return SmtpClient(
        "localhost",
        servers.postfix.submission_port,
        user,
        servers.token(user),
        ssl_context=servers.client_context(),
        **options,
    )


def new_user() -> str:
    return f"p{uuid.uuid4().hex[:10]}@example.test"


async def test_postfix_offers_pipelining_and_chunking(mail_servers: MailServers) -> None:
    user = new_user()
    async with submission(mail_servers, user) as smtp:
        assert smtp._smtp is not None
        assert smtp._smtp.supports_extension("pipelining")
        assert smtp._smtp.supports_extension("chunking")


async def test_postfix_pipelined_send_with_a_refused_recipient(mail_servers: MailServers) -> None:
    # Postfix takes at most smtpd_recipient_limit (1,000) recipients per message and
    # refuses the rest with 452 4.5.3: a real mixed result.
    user = new_user()
    others = [f"sink{n}@discard.test" for n in range(1000)]
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, user, "mixed"
    msg.set_content("one local recipient, 1,000 discarded, one refused\n.dot\n")
    async with submission(mail_servers, user) as smtp:
        result = await asyncio.wait_for(
            smtp.send_message(msg, recipients=[user, *others]), GUARD * 3
        )
    assert list(result.refused) == [others[-1]]
    reply = result.refused[others[-1]]
    assert reply.code == 452 and "4.5.3" in reply.message
    async with ImapClient(
        "localhost",
        mail_servers.dovecot.imaps_port,
        user,
        mail_servers.token(user),
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=mail_servers.client_context(),
    ) as imap:
        for _ in range(100):
            await imap.select()
            uids = await imap.uid_search("ALL")
            if uids:
                break
            await asyncio.sleep(0.1)
        assert len(uids) == 1
        got = await imap.fetch_message(uids[0])
        assert got["Subject"] == "mixed" and ".dot" in got.get_content()


async def test_postfix_refuses_an_oversized_message_at_mail_from(
    mail_servers: MailServers,
) -> None:
    # Over Postfix's message_size_limit (10,240,000 bytes by default): the SIZE on MAIL
    # FROM is refused before the message is uploaded (a large message waits for its
    # envelope's replies), and the session goes on.
    user = new_user()
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 10_300
    async with submission(mail_servers, user) as smtp:
        with pytest.raises(CommandError) as info:
            await asyncio.wait_for(smtp.sendmail(user, [user], big), GUARD)
        assert (info.value.command, info.value.code) == ("MAIL", 552)
        result = await asyncio.wait_for(
            smtp.sendmail(user, [user], b"Subject: after\r\n\r\nok\r\n"), GUARD
        )
        assert result.refused == {}


async def test_postfix_takes_a_large_message_by_bdat(mail_servers: MailServers) -> None:
    user = new_user()
    body = b"".join(b".%06d a line that starts with a dot\r\n" % n for n in range(20_000))
    async with submission(mail_servers, user) as smtp:
        result = await asyncio.wait_for(
            smtp.sendmail(user, ["sink@discard.test"], b"Subject: large\r\n\r\n" + body), GUARD
        )
    assert result.refused == {} and "queued" in result.data_reply


SCENARIOS: dict[str, Script] = {
    "mixed": Script(rcpt=refuse("b@x.test", reply=b"550 5.1.1 no such user")),
    "all refused": Script(rcpt=refuse("@x.test", reply=b"451 4.3.0 try later")),
    "sender refused": Script(mail=lambda arg: b"553 5.7.1 not yours"),
    "message refused": Script(data_end=lambda body: b"552 5.3.4 too big"),
    "send as denied": Script(
        data_end=lambda body: b"554 5.2.252 SendAsDenied; a@x not allowed to send as b@x"
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
async def test_pipelined_results_and_errors_equal_the_unpipelined_ones(name: str) -> None:
    outcomes = []
    async with ScriptedSmtp(SCENARIOS[name]) as server:
        for pipelining in (True, False):
            async with client(server, pipelining=pipelining) as smtp:
                try:
                    result: object = await asyncio.wait_for(
                        smtp.sendmail(SENDER, ["a@x.test", "b@x.test"], BODY), GUARD
                    )
                except CommandError as exc:
                    result = (str(exc), exc.command, exc.code, exc.enhanced_code, exc.retryable)
                outcomes.append(result)
            assert server.sessions[-1].pipelined is pipelining
    assert outcomes[0] == outcomes[1]


async def test_concurrent_pool_calls_run_one_after_the_other() -> None:
    async with (
        ScriptedSmtp(Script()) as server,
        SmtpPool(
            "127.0.0.1",
            server.port,
            SENDER,
            "at-scripted",
            SecurityOptions.NONE,
            size=2,
            allow_insecure_auth=True,
            timeout=5.0,
        ) as pool,
    ):
        batches: list[Any] = [
            [(SENDER, ["a@x.test"], b"Subject: %d-%d\r\n\r\nx\r\n" % (b, n)) for n in range(9)]
            for b in range(3)
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*(pool.send_many(batch) for batch in batches)), GUARD
        )
    assert all(isinstance(r, SendResult) for out in results for r in out)
    bodies = sorted(b for s in server.sessions for b in s.bodies)
    assert bodies == sorted(m[2] for batch in batches for m in batch)


@pytest.mark.parametrize("extensions", [("PIPELINING",), ()], ids=["DATA", "unpipelined"])
async def test_send_many_without_chunking_sends_one_at_a_time(extensions: tuple[str, ...]) -> None:
    script = Script(extensions=extensions, rcpt=refuse("bad@x.test"))
    items: list[Any] = [
        (SENDER, ["a@x.test"], b"Subject: 1\r\n\r\n1\r\n"),
        (SENDER, ["bad@x.test"], b"Subject: 2\r\n\r\n2\r\n"),
        (SENDER, ["a@x.test"], b"Subject: 3\r\n\r\n3\r\n"),
    ]
    async with ScriptedSmtp(script) as server, client(server) as smtp:
        results = await asyncio.wait_for(smtp.send_many(items), GUARD)
    assert [type(r).__name__ for r in results] == ["SendResult", "CommandError", "SendResult"]
    assert server.sessions[-1].bodies == [items[0][2], items[2][2]]
    assert "BDAT" not in " ".join(server.sessions[-1].commands)
