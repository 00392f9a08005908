"""Scenario 5b: poll many mailboxes from one event loop."""

import asyncio

from mailoauth import (
    FilePollStateStore,
    GoogleTokenProvider,
    Mailbox,
    MailboxFailed,
    NewMessage,
    Poller,
)


async def main(accounts: dict[str, str], client_id: str, secret: str, state: str) -> None:
    mailboxes = []
    for user, refresh_token in accounts.items():
        # One provider per account: every connection of that account shares its token.
        provider = GoogleTokenProvider(client_id, secret, refresh_token)
        mailboxes.append(Mailbox("imap", "imap.gmail.com", 993, user, provider))
        mailboxes.append(Mailbox("pop3", "pop.gmail.com", 995, user, provider))

    # IDLE where offered, POP3 by UIDL every `interval`; each account kept below Gmail's
    # connection limit (a preset of PollLimits); where each mailbox got to is saved, so a
    # restart repeats and misses nothing.
    async with Poller(
        mailboxes, state_store=FilePollStateStore(state), start="all", interval=60
    ) as poller:
        async for event in poller:
            if isinstance(event, NewMessage):
                print(event.message()["Subject"], "in", event.mailbox)  # mailbox: its key
            elif isinstance(event, MailboxFailed) and event.permanent:
                print("set aside:", event.mailbox, event.error)


if __name__ == "__main__":
    asyncio.run(main({"me@gmail.com": "1//0g..."}, "id", "secret", "poll-state.json"))
