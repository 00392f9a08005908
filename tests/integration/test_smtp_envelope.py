"""SmtpClient.send_message/sendmail: the envelope is exactly what the caller wrote.

Against the testing kit's SMTP server (in-process sandbox): a compat32 header with an
embedded line break must not add a recipient, and addresses aiosmtplib refuses
(``ValueError``, e.g. for ``\\x85``) come back as ConfigurationError, with nothing sent
and the session still usable.
"""

from __future__ import annotations

import email.message
from typing import Any

import pytest

from mailoauth.errors import ConfigurationError
from mailoauth.smtp import SmtpClient
from mailoauth.testing.sandbox import MailSandbox, SandboxUser

pytestmark = pytest.mark.asyncio

VICTIM = "victim@example.test"


def compat32(user: str, to: str) -> email.message.Message:
    msg = email.message.Message()  # compat32: header values are kept as set
    msg["From"] = user
    msg["To"] = to
    msg["Subject"] = "hi"
    msg.set_payload("hi\r\n")
    return msg


async def sends_nothing(box: MailSandbox, call: Any) -> ConfigurationError:
    before = len(box.smtp.messages)
    with pytest.raises(ConfigurationError) as info:
        await call
    assert len(box.smtp.messages) == before
    return info.value


@pytest.mark.parametrize(
    "to",
    [
        f"a@example.test\r\nBcc: {VICTIM}",
        f"a@example.test\nBcc: {VICTIM}",
        f"a@example.test\r\n{VICTIM}",
        f"a@example.test\r{VICTIM}",
    ],
)
async def test_compat32_header_with_a_line_break_gains_no_recipient(
    mailoauth_sandbox: MailSandbox,
    mailoauth_user: SandboxUser,
    mailoauth_smtp: SmtpClient,
    to: str,
) -> None:
    box, user = mailoauth_sandbox, mailoauth_user.username
    error = await sends_nothing(box, mailoauth_smtp.send_message(compat32(user, to)))
    assert "To header" in str(error)
    await mailoauth_smtp.send_message(compat32(user, "a@example.test"))  # still usable
    assert all(VICTIM not in m.rcpt_tos for m in box.smtp.messages)


async def test_a_folded_compat32_header_still_works(
    mailoauth_sandbox: MailSandbox, mailoauth_user: SandboxUser, mailoauth_smtp: SmtpClient
) -> None:
    user = mailoauth_user.username
    await mailoauth_smtp.send_message(compat32(user, "a@example.test,\r\n b@example.test"))
    assert mailoauth_sandbox.smtp.messages[-1].rcpt_tos == ("a@example.test", "b@example.test")


@pytest.mark.parametrize("bad", ["\x85", "\u2028", " "])
async def test_addresses_aiosmtplib_refuses_are_configuration_errors(
    mailoauth_sandbox: MailSandbox,
    mailoauth_user: SandboxUser,
    mailoauth_smtp: SmtpClient,
    bad: str,
) -> None:
    box, user = mailoauth_sandbox, mailoauth_user.username
    evil = f"a{bad}b@example.test"
    # In a header: refused by the guard, or (" ") by aiosmtplib with ValueError, mapped.
    msg = email.message.Message()
    msg["From"], msg["To"] = user, evil
    msg.set_payload("hi\r\n")
    await sends_nothing(box, mailoauth_smtp.send_message(msg))
    body = b"Subject: x\r\n\r\nx\r\n"
    await sends_nothing(box, mailoauth_smtp.sendmail(user, [evil], body))
    await sends_nothing(box, mailoauth_smtp.sendmail(evil, [user], body))
    await mailoauth_smtp.sendmail(user, [user], body)  # the session is unharmed
    assert box.smtp.messages[-1].rcpt_tos == (user,)
