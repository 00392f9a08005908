"""Scenario 5: test your own code with the pytest plugin (pip install 'mailoauth[testing]').

The code under test keeps its production host names: `mailoauth_routes` sends
smtp.gmail.com and imap.gmail.com to the sandbox for the duration of the test.
"""

import email.message

import pytest

from mailoauth import GoogleTokenProvider, ImapClient, SmtpClient


async def send_report(provider: GoogleTokenProvider, user: str) -> None:
    """The application code: mails a report through Gmail."""
    msg = email.message.EmailMessage()
    msg["From"] = msg["To"] = user
    msg["Subject"] = "Daily report"
    msg.set_content("All systems nominal.")
    async with SmtpClient("smtp.gmail.com", 587, user, provider) as smtp:
        await smtp.send_message(msg)


@pytest.mark.asyncio
@pytest.mark.mailoauth(personality="gmail")
async def test_report_is_delivered(mailoauth_routes, mailoauth_user):  # type: ignore[no-untyped-def]
    provider = GoogleTokenProvider("client-id", "secret", mailoauth_user.refresh_token)
    async with provider:
        await send_report(provider, mailoauth_user.username)
        async with ImapClient("imap.gmail.com", 993, mailoauth_user.username, provider) as imap:
            await imap.select("INBOX")
            [uid] = await imap.uid_search("ALL")
            assert (await imap.fetch_message(uid))["Subject"] == "Daily report"
    assert mailoauth_routes.oauth.stats.token_requests == 1
