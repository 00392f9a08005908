"""Watching one IMAP folder: IDLE where offered, interval polling otherwise."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import cast

import anyio

from mailoauth.imap.client import IdleEvent, ImapClient
from mailoauth.imap.parsing import MailboxInfo
from mailoauth.poll._common import WatchContext, close_shielded
from mailoauth.poll.backoff import jittered
from mailoauth.poll.spec import NewMessage
from mailoauth.poll.state import ImapState, PollState, imap_resume_point

log = logging.getLogger("mailoauth.poll")


class ImapWatcher:
    """Reports the messages above a UID cursor, then waits for more.

    The cursor is what has been *reported* in this run; what has been *handled* is
    the committed state, advanced only when the consumer acknowledges an event.
    """

    def __init__(self, ctx: WatchContext) -> None:
        self.ctx = ctx
        self.uidvalidity: int | None = None
        self.cursor = 0

    async def run(self) -> None:
        """Watch until cancelled; raises whatever the connection raises."""
        ctx = self.ctx
        while True:
            async with ctx.limits.hold():
                client = self._client()
                try:
                    await client.connect()
                    await self._session(client)
                finally:
                    await close_shielded(client.aclose)
            log.debug("%s: gave up its connection slot to a waiting mailbox", ctx.mailbox.key)
            await anyio.sleep(jittered(ctx.settings.interval, ctx.rng))

    def _client(self) -> ImapClient:
        mb = self.ctx.mailbox
        return ImapClient.from_settings(mb.settings, mb.username, self.ctx.tokens)

    async def _session(self, client: ImapClient) -> None:
        """One connection's life; returns when another mailbox needs the slot."""
        ctx, settings = self.ctx, self.ctx.settings
        await self._examine(client)
        idle = settings.use_idle and "IDLE" in await client.capabilities()
        log.debug("%s: connected, %s", ctx.mailbox.key, "IDLE" if idle else "polling")
        reconnects = client.reconnects
        fresh = True  # EXAMINE has just looked at the folder
        while True:
            if client.reconnects != reconnects:  # the client re-selected on its own
                reconnects = client.reconnects
                await self._examine(client)
            elif not fresh:
                # RFC 3501 §6.1.2: NOOP is the poll. Servers need not look for new mail
                # on other commands (Dovecot may not, for seconds).
                await client.noop()
            fresh = False
            await self._report_new(client)
            ctx.healthy()
            if ctx.limits.contended():
                return
            if idle:
                await self._idle(client)
            elif await ctx.limits.sleep_unless_contended(jittered(settings.interval, ctx.rng)):
                return

    async def _examine(self, client: ImapClient) -> None:
        """EXAMINE (read-only: nothing gets marked seen) and place the cursor."""
        ctx = self.ctx
        info = await client.examine(ctx.mailbox.folder)
        uidvalidity = info.uidvalidity or 0
        if uidvalidity == self.uidvalidity:
            return
        saved = await ctx.progress.load(ctx.mailbox.key)
        if self.uidvalidity is not None:
            saved = ImapState(self.uidvalidity, self.cursor)  # what this run reported
        elif saved is not None and not isinstance(saved, ImapState):
            saved = None
        top = await self._top_uid(client, info)
        self.cursor = imap_resume_point(saved, uidvalidity, top, ctx.settings.start)
        if saved is not None and saved.uidvalidity != uidvalidity:
            log.warning(
                "%s: UIDVALIDITY changed from %s to %s (folder rebuilt); reporting all "
                "of its messages again",
                ctx.mailbox.key,
                saved.uidvalidity,
                uidvalidity,
            )
        elif saved is None:
            baseline = ImapState(uidvalidity, self.cursor)
            await ctx.progress.update(ctx.mailbox.key, lambda _old: baseline)
        self.uidvalidity = uidvalidity
        log.debug("%s: UIDVALIDITY %s, new above UID %s", ctx.mailbox.key, uidvalidity, self.cursor)

    async def _top_uid(self, client: ImapClient, info: MailboxInfo) -> int:
        if info.uidnext is not None:
            return info.uidnext - 1
        return max(await client.uid_search("ALL"), default=0)

    async def _report_new(self, client: ImapClient) -> None:
        ctx = self.ctx
        found = await client.uid_search(f"UID {self.cursor + 1}:*")
        # "n:*" always includes the highest UID, even when it is below n.
        uids = sorted(u for u in found if u > self.cursor)
        uidvalidity = self.uidvalidity or 0
        batch_size = ctx.settings.fetch_batch
        for start in range(0, len(uids), batch_size):
            batch = uids[start : start + batch_size]
            raw = await client.fetch_raw(batch)
            for uid in batch:
                if uid in raw:  # else expunged since the search: nothing to report
                    event = NewMessage(ctx.mailbox.key, raw[uid], uid=uid, uidvalidity=uidvalidity)
                    await ctx.emit(event, _Advance(uidvalidity, uid))
                self.cursor = uid

    async def _idle(self, client: ImapClient) -> None:
        """IDLE until the server announces new mail or the round ends."""
        timeout = self.ctx.settings.idle_timeout
        # Closed explicitly, so that DONE is sent before the next command (a generator
        # left to the garbage collector would end its IDLE late).
        events = cast(AsyncGenerator[IdleEvent, None], client.idle(timeout=timeout))
        async with contextlib.aclosing(events):
            async for event in events:
                if event.kind == "EXISTS":
                    return


class _Advance:
    """The commit of an IMAP event: the handled cursor moves up to its UID."""

    __slots__ = ("uid", "uidvalidity")

    def __init__(self, uidvalidity: int, uid: int) -> None:
        self.uidvalidity, self.uid = uidvalidity, uid

    def __call__(self, old: PollState | None) -> PollState:
        if isinstance(old, ImapState):
            return old.advance(self.uidvalidity, self.uid)
        return ImapState(self.uidvalidity, self.uid)
