"""What the watchers share with the poller: their slots, committed progress, settings."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from mailoauth.poll.budgets import Slots
from mailoauth.poll.spec import Mailbox, PollEvent
from mailoauth.poll.state import PollState, PollStateStore, StartPolicy
from mailoauth.tokens.manager import TokenManager

Commit = Callable[[PollState | None], PollState]
"""How handling one event changes its mailbox's saved state."""


class Progress:
    """Committed (handled) states by mailbox key, written through to the store.

    Updates apply in memory at once; each save writes the newest state under a per-key
    lock, so saves that overlap can never leave an older state in the store.
    """

    def __init__(self, store: PollStateStore) -> None:
        self.store = store
        self._states: dict[str, PollState | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self, key: str) -> PollState | None:
        if key not in self._states:
            self._states[key] = await self.store.load(key)
        return self._states[key]

    def forget(self, key: str) -> None:
        """Drop the cached state of ``key``: the next :meth:`load` reads the store."""
        self._states.pop(key, None)

    async def update(self, key: str, change: Commit) -> None:
        self._states[key] = change(await self.load(key))
        async with self._locks.setdefault(key, asyncio.Lock()):
            state = self._states[key]
            if state is not None:
                await self.store.save(key, state)


@dataclass(frozen=True)
class Settings:
    interval: float
    use_idle: bool
    idle_timeout: float
    start: StartPolicy
    fetch_batch: int


@dataclass
class WatchContext:
    """Everything one mailbox's watcher needs; built by the poller."""

    mailbox: Mailbox
    tokens: TokenManager
    limits: Slots
    progress: Progress
    settings: Settings
    rng: random.Random
    emit: Callable[[PollEvent, Commit | None], Awaitable[None]]
    healthy: Callable[[], None]


async def close_shielded(close: Callable[[], Awaitable[None]]) -> None:
    """Close a client even while being cancelled: the clients bound their own polite
    goodbye (LOGOUT/QUIT) with a timeout, and a cancelled goodbye would skip closing
    the socket."""
    with anyio.CancelScope(shield=True):
        await close()
