"""Shared mailboxes in Exchange Online: read one with a delegate's token, send as it."""

import asyncio
import email.message

from mailoauth import CommandError, ImapClient, MicrosoftTokenProvider, SmtpClient


async def main(client_id: str, delegate: str, refresh_token: str, shared: str) -> None:
    # The delegate signs in (e.g. `mailoauth login microsoft`); its token opens the
    # shared mailboxes it has FullAccess on.
    provider = MicrosoftTokenProvider.refresh_token(client_id, refresh_token)
    async with provider:
        # IMAP and POP3: the username is the shared mailbox, the token the delegate's.
        async with ImapClient("outlook.office365.com", 993, shared, provider) as imap:
            info = await imap.select("INBOX")
            print(f"{shared}: {info.exists} messages")

        # SMTP: log in as the delegate and send with the shared address as the sender
        # (needs the Send As right on it).
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = shared, delegate, "from the team"
        msg.set_content("Sent as the shared mailbox.")
        async with SmtpClient("smtp.office365.com", 587, delegate, provider) as smtp:
            try:
                await smtp.send_message(msg)
                print(f"sent as {shared}")
            except CommandError as exc:
                if exc.enhanced_code != "5.2.252":  # 554 5.2.252 SendAsDenied
                    raise
                print(exc)  # names Add-RecipientPermission ... -AccessRights SendAs


if __name__ == "__main__":
    asyncio.run(main("app-id", "me@contoso.com", "0.AAA...", "support@contoso.com"))
