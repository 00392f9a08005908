"""The lease keeper: membership, fair share, and one fenced lease per mailbox.

One :class:`LeaseKeeper` runs in each worker. Every tick (every ``lease / 3`` seconds,
or at once when another worker publishes a change on the fleet's channel) it

1. renews its leases (one Lua script, owner and fence checked): a lease refused is lost
   at once; a renewed one is good locally until ``sent + lease * LOCAL_SHARE``, where
   ``sent`` is when the renewal left, not when the reply came;
2. heartbeats into the workers' sorted set, which also drops workers silent for a
   lease, and reads the live worker ids and the mailboxes;
3. drops the mailboxes removed from the fleet and restarts those whose spec changed;
4. releases what it holds above its fair share and grants itself free leases up to
   it. The share of worker ``i`` (by sorted id) of ``W`` for ``N`` mailboxes is
   ``N // W``, plus one for the first ``N % W`` workers: every worker ends within one
   mailbox of even, without any restart. At most ``GRANT_BATCH`` leases are granted
   per tick (the next tick follows ``GRANT_PAUSE`` later), so a worker starting
   hundreds of watchers keeps renewing what it holds meanwhile.

A watchdog task drops every lease whose local deadline passed, whatever the keeper is
doing (blocked on an unreachable Redis, say): a stalled worker stops watching before
the lease can be granted to anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from mailoauth.poll.backoff import backoff_delay
from mailoauth.poll.fleet._redis import (
    ACQUIRE,
    HEARTBEAT,
    RELEASE,
    RENEW,
    Keys,
    decode,
    owner_token,
    redis_errors,
)
from mailoauth.poll.mailbox_spec import MailboxSpec

log = logging.getLogger("mailoauth.poll.fleet")

#: A renewed lease is trusted locally for this share of the lease, counted from when
#: the renewal was sent: the worker stops watching before Redis could let it go, even
#: with a clock running a little fast or slow.
LOCAL_SHARE: Final = 0.8
#: The shortest pause between two ticks, so a burst of notifications costs one tick.
MIN_TICK_GAP: Final = 0.05
#: The longest the watchdog sleeps before looking at the deadlines again.
WATCHDOG_PERIOD: Final = 0.25
#: The most leases one tick grants; more are granted by the next tick, GRANT_PAUSE
#: seconds later. Starting hundreds of watchers at once (TLS handshakes, token fetches)
#: would keep the event loop from renewing the leases it already holds.
GRANT_BATCH: Final = 50
GRANT_PAUSE: Final = 0.5

Acquired = Callable[[MailboxSpec, int], Coroutine[Any, Any, None]]
Lost = Callable[[str], None]


def fair_share(total: int, workers: list[str], me: str) -> int:
    """How many of ``total`` mailboxes worker ``me`` should hold among the live
    ``workers``: ``total // W``, plus one for the first ``total % W`` ids in sorted
    order (``me`` counts even if it is missing from ``workers``)."""
    ids = sorted({*workers, me})
    base, extra = divmod(total, len(ids))
    return base + (1 if ids.index(me) < extra else 0)


class LeaseKeeper:
    """Holds this worker's leases; calls ``acquired(spec, fence)`` when one is granted
    (to start watching) and ``lost(key)`` when one is lost, released or its mailbox
    removed (to stop watching at once; synchronous, so nothing runs in between)."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        worker_id: str,
        lease: float,
        *,
        acquired: Acquired,
        lost: Lost,
        rng: random.Random | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self._acquired = acquired
        self._lost = lost
        self._rng = rng or random.Random()
        #: key -> fence of each lease held.
        self.fences: dict[str, int] = {}
        #: key -> monotonic time after which the lease is no longer trusted.
        self.deadlines: dict[str, float] = {}
        self._specs: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.leaving = False
        #: False once the worker stops: it renews what it holds but takes nothing new.
        self.acquiring = True
        self.ticks = 0
        self._starting: set[asyncio.Task[None]] = set()

    # -- what is held -------------------------------------------------------------

    def token(self, key: str) -> str | None:
        """The owner token of the lease on ``key`` if it is held and trusted now."""
        fence = self.fences.get(key)
        if fence is None or time.monotonic() >= self.deadlines.get(key, 0.0):
            return None
        return owner_token(self.worker_id, fence)

    def lose(self, key: str, why: str) -> None:
        """Stop watching ``key`` and forget its lease (no Redis call)."""
        if self.fences.pop(key, None) is None:
            return
        self.deadlines.pop(key, None)
        self._specs.pop(key, None)
        log.info("%s: lease %s: %s", self.worker_id, key, why)
        self._lost(key)

    def expire_overdue(self) -> None:
        now = time.monotonic()
        for key, deadline in list(self.deadlines.items()):
            if now >= deadline:
                late = now - (deadline - self.lease * LOCAL_SHARE)
                self.lose(key, f"not renewed for {late:.1f} s; stopped watching")

    # -- running ------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until cancelled; Redis failures are retried with backoff."""
        failures = 0
        while not self.leaving:
            try:
                more = await self.tick()
                failures = 0
                delay = min(GRANT_PAUSE, self.lease / 3) if more else self.lease / 3
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # A library below turned our cancellation into an error: stop anyway,
                    # or leaving would wait for a keeper that renews for ever.
                    raise asyncio.CancelledError from exc
                delay = backoff_delay(failures, 0.1, self.lease / 3, self._rng)
                failures += 1
                log.warning(
                    "%s: lease keeping failed (%s); retry in %.1f s", self.worker_id, exc, delay
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(MIN_TICK_GAP)

    async def watchdog(self) -> None:
        """Drop overdue leases, whatever the keeper is doing. Runs until cancelled."""
        while True:
            self.expire_overdue()
            now = time.monotonic()
            earliest = min(self.deadlines.values(), default=now + WATCHDOG_PERIOD)
            await asyncio.sleep(min(max(earliest - now, 0.0), WATCHDOG_PERIOD))

    async def _call(self, what: str, script: str, keys: list[str], *args: Any) -> Any:
        """One Lua script call, bounded by a third of the lease."""
        with redis_errors(what):
            async with asyncio.timeout(self.lease / 3):
                return await self.redis.eval(script, len(keys), *keys, *args)

    async def heartbeat(self, join: bool = True) -> list[str]:
        ids, _now = await self._call(
            "heartbeating", HEARTBEAT, [self.keys.workers], self.worker_id, self.lease_ms, int(join)
        )
        return [decode(i) for i in ids]

    async def publish(self, message: str) -> None:
        with redis_errors("notifying the fleet"), contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.lease / 3):
                await self.redis.publish(self.keys.channel, message)

    async def tick(self) -> bool:
        """One round of the steps in the module docstring; True if it left leases to
        grant for the next one (see :data:`GRANT_BATCH`)."""
        self.ticks += 1
        await self._renew()  # first: nothing else may delay it
        workers = await self.heartbeat()
        with redis_errors("reading the mailboxes"):
            async with asyncio.timeout(self.lease / 3):
                raw = await self.redis.hgetall(self.keys.specs)
        specs = {decode(k): decode(v) for k, v in raw.items()}
        # Removed from the fleet, or changed (restarted with the new spec).
        for key in list(self.fences):
            if key not in specs and key in self.fences:
                fence = self.fences[key]
                self.lose(key, "mailbox removed from the fleet")
                await self._release(key, fence)
            elif key in self.fences and self._specs.get(key) not in (None, specs[key]):
                fence, deadline = self.fences[key], self.deadlines[key]
                self.lose(key, "spec changed; restarting it")
                self._start(key, specs[key], fence, deadline)
        if self.leaving or not self.acquiring:
            return False
        target = fair_share(len(specs), workers, self.worker_id)
        excess = len(self.fences) - target
        if excess > 0:
            for key in self._rng.sample(sorted(self.fences), excess):
                held = self.fences.get(key)
                if held is None:
                    continue  # let go meanwhile (the watchdog)
                self.lose(key, f"released (fair share {target} of {len(specs)})")
                await self._release(key, held)
            await self.publish("release")
        elif excess < 0:
            granted = await self._acquire(specs, min(-excess, GRANT_BATCH))
            return granted == GRANT_BATCH and -excess > GRANT_BATCH
        return False

    async def _renew(self) -> None:
        held = sorted(self.fences)
        if not held:
            return
        tokens = [owner_token(self.worker_id, self.fences[k]) for k in held]
        sent = time.monotonic()
        results = await self._call(
            "renewing leases", RENEW, [self.keys.lease(k) for k in held], *tokens, self.lease_ms
        )
        until = sent + self.lease * LOCAL_SHARE
        for key, token, ok in zip(held, tokens, results, strict=True):
            if (
                self.fences.get(key) is None
                or owner_token(self.worker_id, self.fences[key]) != token
            ):
                continue  # changed meanwhile
            if ok:
                self.deadlines[key] = until
            else:
                self.lose(key, "taken by another worker (lease lapsed)")

    async def _acquire(self, specs: Mapping[str, str], wanted: int) -> int:
        """Grant this worker up to ``wanted`` free leases; how many were granted."""
        free = [k for k in specs if k not in self.fences]
        self._rng.shuffle(free)
        if not free:
            return 0
        keys: list[str] = []
        for key in free:
            keys += [self.keys.lease(key), self.keys.fence(key)]
        sent = time.monotonic()
        fences = await self._call(
            "acquiring leases", ACQUIRE, keys, self.worker_id, self.lease_ms, wanted
        )
        granted = 0
        for key, fence in zip(free, fences, strict=True):
            if int(fence):
                granted += 1
                self._start(key, specs[key], int(fence), sent + self.lease * LOCAL_SHARE)
        return granted

    def _start(self, key: str, spec_json: str, fence: int, deadline: float) -> None:
        """Hold ``key`` and start watching it in a task of its own (so that a tick
        granting many leases ends, and renews them, without waiting for each start)."""
        self.fences[key] = fence
        self.deadlines[key] = deadline
        self._specs[key] = spec_json
        try:
            spec = MailboxSpec.from_json(json.loads(spec_json))
        except (ValueError, TypeError) as exc:
            log.error("%s: the spec of %s in Redis is unusable: %s", self.worker_id, key, exc)
            return  # held (so that no worker loops on it) but not watched
        log.info("%s: lease %s granted (fence %d)", self.worker_id, key, fence)
        task = asyncio.get_running_loop().create_task(self._acquired(spec, fence))
        self._starting.add(task)
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: starting a mailbox failed", self.worker_id, exc_info=task.exception())

    async def _release(self, key: str, fence: int) -> None:
        await self._call(
            "releasing a lease",
            RELEASE,
            [self.keys.lease(key)],
            owner_token(self.worker_id, fence),
        )

    async def leave(self) -> None:
        """Hand every lease over and leave the fleet (best effort: what cannot be
        released expires within a lease)."""
        self.leaving = True
        for task in list(self._starting):
            task.cancel()
        held = dict(self.fences)
        for key in list(held):
            self.lose(key, "released (worker leaving)")
        try:
            for key, fence in held.items():
                await self._release(key, fence)
            await self.heartbeat(join=False)
            await self.publish("leave")
        except Exception as exc:
            log.warning(
                "%s: could not leave cleanly (%s); leases expire instead", self.worker_id, exc
            )
