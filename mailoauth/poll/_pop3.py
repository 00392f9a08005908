"""Watching one POP3 maildrop by UIDL: connect, list, retrieve what is new, leave.

A POP3 session sees the maildrop as it was at login, so every poll is a new session.
Nothing is ever deleted: the poller sends no DELE.
"""

from __future__ import annotations

import logging

import anyio

from mailoauth.poll._common import WatchContext, close_shielded
from mailoauth.poll.backoff import jittered
from mailoauth.poll.spec import NewMessage
from mailoauth.poll.state import PollState, Pop3State
from mailoauth.pop3.client import Pop3Client

log = logging.getLogger("mailoauth.poll")


class Pop3Watcher:
    """Reports messages whose UIDL it has not reported before."""

    def __init__(self, ctx: WatchContext) -> None:
        self.ctx = ctx
        #: UIDLs reported in this run or handled before it, pruned to the server's.
        self.reported: set[str] | None = None
        #: UIDLs of messages over ``max_message_size`` already warned about.
        self.oversized: set[str] = set()

    async def run(self) -> None:
        """Poll until cancelled; raises whatever the connection raises."""
        ctx = self.ctx
        while True:
            async with ctx.limits.hold():
                client = self._client()
                clean = False
                try:
                    await client.connect()
                    await self._poll(client)
                    clean = True
                finally:
                    # QUIT only after a clean poll; it deletes nothing, as nothing was
                    # marked. Any other exit closes without QUIT.
                    await close_shielded(client.aclose if clean else client.abort)
            ctx.healthy()
            await anyio.sleep(jittered(ctx.settings.interval, ctx.rng))

    def _client(self) -> Pop3Client:
        mb = self.ctx.mailbox
        limit = {} if mb.max_message_size is None else {"max_message_size": mb.max_message_size}
        return Pop3Client.from_settings(mb.settings, mb.username, self.ctx.tokens, **limit)

    async def _poll(self, client: Pop3Client) -> None:
        ctx = self.ctx
        key = ctx.mailbox.key
        listing = await client.uidl()
        present = frozenset(listing.values())
        if self.reported is None:
            saved = await ctx.progress.load(key)
            if isinstance(saved, Pop3State):
                self.reported = set(saved.uidls)
            else:
                baseline = present if ctx.settings.start == "new" else frozenset()
                self.reported = set(baseline)
                await ctx.progress.update(key, lambda _old: Pop3State(baseline))
        # Forget UIDLs no longer on the server, here and in the store, so the state
        # stays as small as the maildrop.
        self.reported &= present
        saved = await ctx.progress.load(key)
        if isinstance(saved, Pop3State) and not saved.uidls <= present:
            await ctx.progress.update(key, _Prune(present))
        new = [n for n, uidl in sorted(listing.items()) if uidl not in self.reported]
        log.debug("%s: %d messages, %d new", key, len(listing), len(new))
        if new:
            new = await self._within_limit(client, new, listing)
        async for number, data in client.retrieve_many(new):
            uidl = listing[number]
            self.reported.add(uidl)
            await ctx.emit(NewMessage(key, data, uidl=uidl), _Add(uidl))

    async def _within_limit(
        self, client: Pop3Client, new: list[int], listing: dict[int, str]
    ) -> list[int]:
        """``new`` without the messages over the client's ``max_message_size``: those
        stay on the server, unreported (retrieving one would fail every poll and hold
        back the messages after it); each is named in one warning per watcher."""
        sizes = await client.list()
        limit = client.max_message_size
        fit = []
        for number in new:
            size = sizes.get(number, 0)
            if size <= limit:
                fit.append(number)
                continue
            uidl = listing[number]
            if uidl not in self.oversized:
                self.oversized.add(uidl)
                log.warning(
                    "%s: message %d (UIDL %s) has %d octets, over max_message_size=%d; "
                    "it is left on the server and not reported: raise the Mailbox's "
                    "max_message_size to receive it",
                    self.ctx.mailbox.key,
                    number,
                    uidl,
                    size,
                    limit,
                )
        return fit


class _Add:
    """The commit of a POP3 event: its UIDL joins the handled set."""

    __slots__ = ("uidl",)

    def __init__(self, uidl: str) -> None:
        self.uidl = uidl

    def __call__(self, old: PollState | None) -> PollState:
        uidls = old.uidls if isinstance(old, Pop3State) else frozenset()
        return Pop3State(uidls | {self.uidl})


class _Prune:
    __slots__ = ("present",)

    def __init__(self, present: frozenset[str]) -> None:
        self.present = present

    def __call__(self, old: PollState | None) -> PollState:
        uidls = old.uidls if isinstance(old, Pop3State) else frozenset()
        return Pop3State(uidls & self.present)
