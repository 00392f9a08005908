"""Scenario 5c: change what a running poller watches, and stop it from the consumer."""

import asyncio

from mailoauth import GoogleTokenProvider, Mailbox, NewMessage, Poller


async def main(accounts: dict[str, str], client_id: str, secret: str) -> list[str]:
    """Watch the first account, add the others while running, and stop once every
    account has reported one message; the subjects seen."""
    boxes = [
        Mailbox("imap", "imap.gmail.com", 993, user, GoogleTokenProvider(client_id, secret, rt))
        for user, rt in accounts.items()
    ]
    subjects: list[str] = []
    async with Poller(boxes[:1], start="all") as poller:
        for box in boxes[1:]:
            poller.add(box)  # watched at once, within the same limits
        async for event in poller:
            if isinstance(event, NewMessage):
                subjects.append(event.message()["Subject"])
                poller.remove(event.mailbox)  # its connection closes; its state stays saved
                if not poller.mailboxes:
                    poller.stop()  # events already queued still come, then the loop ends
    return subjects


if __name__ == "__main__":
    print(asyncio.run(main({"me@gmail.com": "1//0g...", "you@gmail.com": "1//0h..."}, "id", "s")))
