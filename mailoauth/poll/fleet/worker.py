"""FleetWorker: one worker of the fleet, a Poller fed by its lease keeper."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final

from mailoauth.errors import ConfigurationError, LockLostError, TransportError
from mailoauth.poll.backoff import backoff_delay
from mailoauth.poll.budgets import MAX_REDIS_CALLS, ConnectionBudgets, RedisBudgets
from mailoauth.poll.fleet._redis import Keys, connect, redis_errors
from mailoauth.poll.fleet.leases import LeaseKeeper
from mailoauth.poll.fleet.store import FencedStateStore
from mailoauth.poll.mailbox_spec import MailboxSpec
from mailoauth.poll.poller import Poller
from mailoauth.poll.spec import Mailbox, MailboxFailed, NewMessage, PollEvent, PollLimits

__all__ = ["DEFAULT_LEASE", "DEFAULT_PREFIX", "FleetWorker", "Resolver", "budget_prefix"]

log = logging.getLogger("mailoauth.poll.fleet")

#: Seconds a lease lives without renewal: how long a dead worker's mailboxes wait.
DEFAULT_LEASE: Final = 30.0
#: The prefix of every Redis key of the fleet.
DEFAULT_PREFIX: Final = "mailoauth:fleet"
#: How long the pub/sub listener waits for one message before checking it is alive.
_LISTEN_POLL: Final = 1.0
#: The longest a failure reason kept in Redis for ``status()`` may be.
_MAX_REASON: Final = 300

Resolver = Callable[[MailboxSpec], "Mailbox | Awaitable[Mailbox]"]
"""Turns a spec into a watchable :class:`~mailoauth.poll.Mailbox` (its token provider
included); may be a coroutine function."""


def budget_prefix(prefix: str) -> str:
    """The key prefix of a fleet's connection budgets (:class:`RedisBudgets`), from the
    fleet's ``prefix``: ``"{prefix}:budget:"``."""
    return f"{prefix}:budget:"


def _limits_of(options: dict[str, Any]) -> PollLimits:
    """The :class:`PollLimits` the poller options ask for (``limits``, or the loose
    ``max_*`` keywords), popped from ``options``. Raises ConfigurationError for both."""
    loose = {k: options.pop(k) for k in _LIMIT_KEYWORDS if k in options}
    limits = options.pop("limits", None)
    if limits is None:
        return PollLimits(**loose)
    if loose:
        raise ConfigurationError(f"give limits= or {', '.join(sorted(loose))}, not both")
    if not isinstance(limits, PollLimits):
        raise ConfigurationError(f"limits must be a PollLimits, not {type(limits).__name__}")
    return limits


_LIMIT_KEYWORDS: Final = ("max_connections", "max_per_host", "max_per_account")


def default_worker_id() -> str:
    """``{hostname}-{pid}-{6 hex}``: unique across machines and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class FleetWorker:
    """One worker of a fleet sharing mailboxes in Redis.

    ::

        async with FleetWorker("redis://localhost:6379/0", resolve) as worker:
            async for event in worker:
                if isinstance(event, NewMessage):
                    handle(event)        # idempotent by event.dedupe_key
                else:                    # MailboxFailed
                    log.warning("%s: %s", event.mailbox, event.error)

    ``redis`` is a URL (the worker then owns the client) or a ``redis.asyncio.Redis``.
    ``resolve(spec)`` turns each :class:`~mailoauth.poll.MailboxSpec` the worker is
    granted into a :class:`~mailoauth.poll.Mailbox` with its token provider (give the
    mailboxes of one credential one provider object; on a
    :class:`~mailoauth.tokens.redis_store.RedisTokenStore`, a credential is refreshed
    once per fleet). Secrets stay in the worker's process.

    The worker holds a fair share of the fleet's mailboxes under leases of ``lease``
    seconds (see :mod:`mailoauth.poll.fleet`), watched by a
    :class:`~mailoauth.poll.Poller` made with ``poller_options`` (``interval``,
    ``use_idle``, ``idle_timeout``, ``start``, ``limits``, ``fetch_batch``, ...).
    Delivery is at least once: an event is recorded in flight in Redis before it is
    yielded, and cleared by its acknowledgement (the next ``__anext__`` with
    ``auto_ack``, else :meth:`ack`). An event a previous holder yielded but did not
    acknowledge comes again with ``redelivered=True``.

    Connection caps and throttling hold-backs are fleet-wide: unless ``budgets`` is
    given (then it wins, with its own limits), the worker makes a
    :class:`~mailoauth.poll.RedisBudgets` on the same Redis with the ``limits`` of
    ``poller_options`` (default :class:`~mailoauth.poll.PollLimits`), keys under
    :func:`budget_prefix` of ``prefix``, this worker's id and slots of ``lease``
    seconds (a dead worker's connections free their slots as its leases expire), on a
    Redis client of its own so that budget calls never delay lease renewals; it is
    closed on exit. Give every worker of a fleet the same limits.

    :meth:`stop` ends the iteration; leaving ``async with`` hands every lease over at
    once (the other workers are notified). Raises
    :class:`~mailoauth.errors.ConfigurationError` for a lease that is not a positive
    number, a worker id holding ``|``, a missing redis package, and what
    :class:`~mailoauth.poll.Poller` refuses.
    """

    def __init__(
        self,
        redis: Any,
        resolve: Resolver,
        *,
        worker_id: str | None = None,
        lease: float = DEFAULT_LEASE,
        prefix: str = DEFAULT_PREFIX,
        auto_ack: bool = True,
        rng: random.Random | None = None,
        budgets: ConnectionBudgets | None = None,
        **poller_options: Any,
    ) -> None:
        if isinstance(lease, bool) or not isinstance(lease, int | float):
            raise ConfigurationError(f"lease must be a number of seconds, not {lease!r}")
        if not (math.isfinite(lease) and lease > 0):
            raise ConfigurationError(f"lease must be a positive number of seconds, not {lease}")
        worker_id = worker_id or default_worker_id()
        if "|" in worker_id or not worker_id.isprintable():
            raise ConfigurationError(f"a worker id is printable and has no '|': {worker_id!r}")
        if "state_store" in poller_options or "auto_ack" in poller_options:
            raise ConfigurationError("a FleetWorker keeps its own state store")
        self.worker_id = worker_id
        self.lease = lease
        self.auto_ack = auto_ack
        self.keys = Keys(prefix)
        self._resolve = resolve
        self._rng = rng or random.Random()
        self._redis, self._owns_redis = connect(redis, timeout=lease / 3)
        # The leases get a client of their own (when made from a URL), so that renewals
        # never queue behind a burst of state reads and writes.
        self._lease_redis, self._owns_lease_redis = connect(
            redis, timeout=lease / 3, max_connections=4
        )
        self.keeper = LeaseKeeper(
            self._lease_redis,
            self.keys,
            worker_id,
            lease,
            acquired=self._acquired,
            lost=self._lost,
            rng=self._rng,
        )
        self.store = FencedStateStore(self._redis, self.keys, self.keeper.token, timeout=lease / 3)
        self._owned_budgets: RedisBudgets | None = None
        self._budget_redis: Any = None
        if budgets is None:
            limits = _limits_of(poller_options)
            # A client of its own (when made from a URL): a thousand mailboxes waiting
            # for slots must not queue ahead of lease renewals or state writes.
            self._budget_redis, owns_budget_redis = connect(
                redis, timeout=lease / 3, max_connections=MAX_REDIS_CALLS + 2
            )
            if not owns_budget_redis:
                self._budget_redis = None
            budgets = self._owned_budgets = RedisBudgets(
                self._budget_redis if self._budget_redis is not None else redis,
                limits=limits,
                prefix=budget_prefix(prefix),
                worker_id=worker_id,
                lease=lease,
                timeout=lease / 3,
                rng=self._rng,
            )
        #: The connection budgets the poller asks before every connection.
        self.budgets: ConnectionBudgets = budgets
        self.poller = Poller(
            state_store=self.store, auto_ack=False, rng=self._rng, budgets=budgets, **poller_options
        )
        #: key -> dedupe keys a previous holder yielded and nobody acknowledged.
        self._redeliver: dict[str, set[str]] = {}
        #: key -> id(yielded event) -> (yielded event, the poller's event), in order.
        self._delivered: dict[str, dict[int, tuple[NewMessage, NewMessage]]] = {}
        self._failing: set[str] = set()
        self._unacked: NewMessage | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @property
    def owned(self) -> frozenset[str]:
        """The keys of the mailboxes this worker holds the lease of now."""
        return frozenset(self.keeper.fences)

    # -- leases -> poller ---------------------------------------------------------

    async def _acquired(self, spec: MailboxSpec, fence: int) -> None:
        key = spec.key
        attempt = 0
        while True:
            try:
                redeliver = await self.store.inflight(key)
                break
            except TransportError as exc:
                # Without the in-flight set a redelivery could come unmarked: watch
                # nothing until it is read, and let the lease go if that takes too long.
                if self.keeper.fences.get(key) != fence or self.keeper.token(key) is None:
                    self.keeper.lose(key, f"cannot read its events in flight ({exc})")
                    return
                await asyncio.sleep(backoff_delay(attempt, 0.05, self.lease / 6, self._rng))
                attempt += 1
        if self.keeper.fences.get(key) != fence:
            return  # lost while reading
        try:
            made = self._resolve(spec)
            mailbox = await made if inspect.isawaitable(made) else made
            if not isinstance(mailbox, Mailbox):
                raise ConfigurationError(
                    f"resolve() returned {type(mailbox).__name__}, not a Mailbox"
                )
            if mailbox.key != key:
                mailbox = dataclasses.replace(mailbox, key=key)
        except Exception as exc:
            # Kept (so that no other worker loops on it) but not watched.
            log.error("%s: cannot watch %s: %s: %s", self.worker_id, key, type(exc).__name__, exc)
            await self._note_failure(key, f"permanent: resolve failed: {type(exc).__name__}: {exc}")
            return
        if self.keeper.fences.get(key) != fence or key in self.poller.mailboxes:
            return
        self._redeliver[key] = redeliver
        try:
            self.poller.add(mailbox)
        except RuntimeError:
            return  # stopping
        if redeliver:
            log.info("%s: %s: %d event(s) to redeliver", self.worker_id, key, len(redeliver))

    def _lost(self, key: str) -> None:
        if key in self.poller.mailboxes:
            self.poller.remove(key)
        self.poller._forget(key)
        self.store.forget(key)
        self._redeliver.pop(key, None)
        self._delivered.pop(key, None)
        self._failing.discard(key)
        if self._unacked is not None and self._unacked.mailbox == key:
            self._unacked = None

    async def _note_failure(self, key: str, reason: str | None) -> None:
        """Keep (or clear, for None) why ``key`` failed, for ``Fleet.status()``; best
        effort."""
        try:
            with redis_errors("noting a failure"):
                async with asyncio.timeout(self.lease / 3):
                    if reason is None:
                        await self._redis.hdel(self.keys.failures, key)
                    else:
                        await self._redis.hset(self.keys.failures, key, reason[:_MAX_REASON])
        except TransportError as exc:
            log.debug("%s: %s", self.worker_id, exc)

    # -- running ------------------------------------------------------------------

    async def __aenter__(self) -> FleetWorker:
        if self._started:
            raise RuntimeError("a FleetWorker runs once; create a new one")
        self._started = True
        await self.poller.__aenter__()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.keeper.watchdog(), name=f"fleet {self.worker_id} watchdog"),
            loop.create_task(self._keep(), name=f"fleet {self.worker_id} leases"),
            loop.create_task(self._listen(), name=f"fleet {self.worker_id} listener"),
        ]
        return self

    async def _keep(self) -> None:
        with contextlib.suppress(Exception):
            await self.keeper.heartbeat()
            await self.keeper.publish("join")
        await self.keeper.run()

    async def _listen(self) -> None:
        """Wake the keeper on every message of the fleet's channel; resubscribe with
        backoff when Redis goes away (and tick then: messages may have been missed)."""
        failures = 0
        while True:
            pubsub = self._lease_redis.pubsub(ignore_subscribe_messages=True)
            try:
                with redis_errors("listening for fleet changes"):
                    async with asyncio.timeout(self.lease / 3):
                        await pubsub.subscribe(self.keys.channel)
                    if failures:
                        self.keeper.wake.set()
                    failures = 0
                    while True:
                        message = await pubsub.get_message(timeout=_LISTEN_POLL)
                        if message is not None and message.get("type") == "message":
                            self.keeper.wake.set()
            except TransportError as exc:
                delay = backoff_delay(failures, 0.1, self.lease / 3, self._rng)
                failures += 1
                log.debug("%s: %s; resubscribing in %.1f s", self.worker_id, exc, delay)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())

    def stop(self) -> None:
        """Stop watching and end the iteration (events already yielded stay as they
        are); leaving ``async with`` then hands the leases over. Callable from any task
        of the loop, or a signal handler run by it."""
        self.keeper.acquiring = False
        self.poller.stop()
        self.keeper.wake.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._unacked is not None:
                event, self._unacked = self._unacked, None
                with anyio_shield():
                    await self._auto_ack(event)
        finally:
            self._unacked = None
            self.stop()
            with anyio_shield():
                await self.poller.__aexit__(None, None, None)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.lease):
                        await self.keeper.leave()
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if self._owned_budgets is not None:
                    with contextlib.suppress(Exception):
                        await self._owned_budgets.aclose()
                for client, owned in (
                    (self._redis, self._owns_redis),
                    (self._lease_redis, self._owns_lease_redis),
                    (self._budget_redis, self._budget_redis is not None),
                ):
                    if owned:
                        with contextlib.suppress(Exception):
                            await client.aclose()  # and its pool: see connect()

    # -- consuming ----------------------------------------------------------------

    def __aiter__(self) -> FleetWorker:
        return self

    async def __anext__(self) -> PollEvent:
        """The next event of a mailbox this worker holds. With ``auto_ack``, first
        acknowledges the previous one. Raises ``StopAsyncIteration`` after
        :meth:`stop`."""
        if self._unacked is not None:
            event, self._unacked = self._unacked, None
            await self._auto_ack(event)
        while True:
            item = await self.poller.__anext__()
            key = item.mailbox
            if isinstance(item, MailboxFailed):
                kind = "permanent" if item.permanent else "transient"
                reason = f"{kind}: {type(item.error).__name__}: {item.error}"
                self._failing.add(key)
                await self._note_failure(key, reason)
                return item
            if key not in self.keeper.fences or not await self._record(item):
                continue
            if key in self._failing:
                self._failing.discard(key)
                await self._note_failure(key, None)
            out = item
            again = self._redeliver.get(key)
            if again and item.dedupe_key in again:
                again.discard(item.dedupe_key)
                out = dataclasses.replace(item, redelivered=True)
            self._delivered.setdefault(key, {})[id(out)] = (out, item)
            if self.auto_ack:
                self._unacked = out
            return out

    async def _record(self, event: NewMessage) -> bool:
        """Record ``event`` in flight; False (and the lease let go) when the lease is
        lost or cannot be trusted any more. Retries Redis failures meanwhile."""
        key = event.mailbox
        attempt = 0
        while True:
            try:
                await self.store.record(event)
                return True
            except LockLostError:
                self.keeper.lose(key, "lease moved; its events are left to the new holder")
                return False
            except TransportError as exc:
                if self.keeper.token(key) is None:
                    self.keeper.lose(key, f"not renewed in time ({exc})")
                    return False
                delay = backoff_delay(attempt, 0.05, self.lease / 6, self._rng)
                attempt += 1
                await asyncio.sleep(delay)

    async def ack(self, event: NewMessage) -> None:
        """Mark ``event`` (and every earlier event of its mailbox) handled: the state is
        saved and their in-flight records cleared, in one fenced write. Acknowledging
        twice does nothing. Raises :class:`~mailoauth.errors.LockLostError` when the
        mailbox's lease moved to another worker meanwhile (it redelivers the event), and
        a retryable :class:`~mailoauth.errors.TransportError` when Redis fails."""
        key = event.mailbox
        delivered = self._delivered.get(key)
        if not delivered or id(event) not in delivered or delivered[id(event)][0] is not event:
            if key not in self.keeper.fences:
                raise LockLostError(
                    f"cannot acknowledge an event of {key}: its lease moved to another "
                    "worker, which delivers it again with redelivered=True"
                )
            return
        original: NewMessage | None = None
        for ident in list(delivered):
            out, original = delivered.pop(ident)
            if out is event:
                break
        assert original is not None
        await self.poller.ack(original)

    async def _auto_ack(self, event: NewMessage) -> None:
        try:
            await self.ack(event)
        except LockLostError as exc:
            log.info("%s: %s", self.worker_id, exc)
        except TransportError as exc:
            log.warning(
                "%s: acknowledging failed (%s); the event stays in flight", self.worker_id, exc
            )

    def __repr__(self) -> str:
        return f"FleetWorker({self.worker_id!r}, owned={len(self.keeper.fences)})"


def anyio_shield() -> Any:
    """A shielded cancel scope: cleanup runs to its end even when cancelled."""
    import anyio

    return anyio.CancelScope(shield=True)
