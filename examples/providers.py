"""Scenario 2: token providers, refreshed when needed for as long as the grant lives."""

import asyncio

from mailoauth import (
    GoogleTokenProvider,
    ImapClient,
    MicrosoftTokenProvider,
    Pop3Client,
    SecurityOptions,
    SmtpClient,
)


async def google(client_id: str, client_secret: str, refresh_token: str, user: str) -> None:
    # One provider shared by all three clients: they share its token and its refreshes.
    provider = GoogleTokenProvider(client_id, client_secret, refresh_token)
    async with provider:
        async with SmtpClient(
            "smtp.gmail.com", 587, user, provider, SecurityOptions.SSL_EXPLICIT
        ) as smtp:
            await smtp.sendmail(user, [user], b"Subject: hi\r\n\r\nfrom a provider\r\n")
        async with ImapClient("imap.gmail.com", 993, user, provider) as imap:
            print(await imap.select("INBOX"))
        async with Pop3Client("pop.gmail.com", 995, user, provider, SecurityOptions.AUTO) as pop:
            print(await pop.stat())


async def microsoft(client_id: str, user: str, password: str, refresh_token: str) -> None:
    # Resource owner password credentials (ROPC): a user without MFA.
    ropc = MicrosoftTokenProvider.ropc(client_id, user, password, tenant="organizations")
    async with ropc, ImapClient("outlook.office365.com", 993, user, ropc) as imap:
        print(await imap.select("INBOX"))

    # A refresh token from `mailoauth login microsoft`; Microsoft rotates it on every
    # use and the provider always keeps the newest (give it a store to keep it durably).
    delegated = MicrosoftTokenProvider.refresh_token(client_id, refresh_token)
    async with delegated, SmtpClient("smtp.office365.com", 587, user, delegated) as smtp:
        await smtp.sendmail(user, [user], b"Subject: hi\r\n\r\nfrom Office 365\r\n")


async def microsoft_app_only(client_id: str, secret: str, tenant: str, mailbox: str) -> None:
    # Client credentials (app-only): the app reads mailboxes it was granted access to.
    app = MicrosoftTokenProvider.client_credentials(client_id, secret, tenant=tenant)
    async with app, Pop3Client("outlook.office365.com", 995, mailbox, app) as pop:
        print(await pop.stat())


if __name__ == "__main__":
    asyncio.run(google("id.apps.googleusercontent.com", "secret", "1//0g...", "me@gmail.com"))
