"""Scenario 1: an access token passed straight to the SMTP, IMAP and POP3 clients."""

import asyncio
import email.message

from mailoauth import AuthenticationError, ImapClient, Pop3Client, SecurityOptions, SmtpClient


async def main(user: str, access_token: str) -> None:
    msg = email.message.EmailMessage()
    msg["From"] = msg["To"] = user
    msg["Subject"] = "Hello from mailoauth"
    msg.set_content("Sent with an OAuth 2.0 access token.")

    async with SmtpClient(
        "smtp.gmail.com", 587, user, access_token, SecurityOptions.SSL_EXPLICIT
    ) as smtp:
        await smtp.send_message(msg)

    async with ImapClient("imap.gmail.com", 993, user, access_token) as imap:
        await imap.select("INBOX")
        uids = await imap.uid_search("ALL")
        for uid, message in (await imap.fetch_messages(uids)).items():
            print(uid, message["Subject"])

    async with Pop3Client("pop.gmail.com", 995, user, access_token) as pop:
        print(await pop.stat())


async def when_it_expires(user: str, expired: str) -> None:
    # A bare token cannot be refreshed: once the server rejects it, the client says so
    # and tells you to pass a TokenProvider instead.
    try:
        async with ImapClient("imap.gmail.com", 993, user, expired):
            pass
    except AuthenticationError as exc:
        print(exc)  # "... rejected the access token ... pass a TokenProvider ..."


if __name__ == "__main__":
    asyncio.run(main("user1@gmail.com", "ya29.a0Af..."))
