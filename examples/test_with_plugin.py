"""Scenario 5: test your own code with the pytest plugin (pip install 'mailoauth[testing]').

The code under test keeps its production host names: `mailoauth_dialer` connects
smtp.gmail.com and imap.gmail.com to the sandbox, and `mailoauth_http_client` sends
Google's token requests to its OAuth server, for the clients and providers given them.
"""

import email.message

import pytest

from mailoauth import ConnectionSettings, GoogleTokenProvider, ImapClient, SmtpClient

GMAIL_SMTP = ConnectionSettings("smtp.gmail.com", 587)


async def send_report(
    provider: GoogleTokenProvider, user: str, smtp: ConnectionSettings = GMAIL_SMTP
) -> None:
    """The application code: mails a report through Gmail."""
    msg = email.message.EmailMessage()
    msg["From"] = msg["To"] = user
    msg["Subject"] = "Daily report"
    msg.set_content("All systems nominal.")
    async with SmtpClient.from_settings(smtp, user, provider) as client:
        await client.send_message(msg)


@pytest.mark.asyncio
@pytest.mark.mailoauth(personality="gmail")
async def test_report_is_delivered(  # type: ignore[no-untyped-def]
    mailoauth_sandbox, mailoauth_dialer, mailoauth_http_client, mailoauth_user
):
    provider = GoogleTokenProvider(
        "client-id", "secret", mailoauth_user.refresh_token, http_client=mailoauth_http_client
    )
    user = mailoauth_user.username
    async with provider:
        # The real host names, dialled to the sandbox: nothing leaves the machine.
        await send_report(provider, user, GMAIL_SMTP.replace(dialer=mailoauth_dialer))
        imap_gmail = ConnectionSettings("imap.gmail.com", 993, dialer=mailoauth_dialer)
        async with ImapClient.from_settings(imap_gmail, user, provider) as imap:
            await imap.select("INBOX")
            [uid] = await imap.uid_search("ALL")
            assert (await imap.fetch_message(uid))["Subject"] == "Daily report"
    assert mailoauth_sandbox.oauth.stats.token_requests == 1
