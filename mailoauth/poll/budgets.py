"""Connection budgets: how many connections the poller may hold, and who must wait.

A :class:`ConnectionBudgets` hands each mailbox its :class:`Slots`: ``async with
slots.hold():`` is held around every connection. It waits while the mailbox's
account or credential is held back after a throttled answer (:meth:`hold_back`), then
takes one slot of each cap that applies (per account, per host, per worker), all or
none. :meth:`Slots.contended` says whether another mailbox waits for one of them, so
a watcher between polls can give its connection up.

- :class:`LocalBudgets`: in-process capacity limiters (one Poller, one process).
- :class:`RedisBudgets`: the same caps across every process sharing one Redis. Each cap
  is a counting semaphore (a sorted set of holders scored by their expiry, taken and
  renewed by Lua scripts on Redis's clock), so a holder that dies frees its slot within
  one lease. A holder that cannot renew (Redis down, the process stalled) cuts its own
  connection before the lease can run out, and nobody takes a slot without Redis: it
  waits and retries. Hold-backs are keys with a PX expiry, seen by the whole fleet.

Redis keys (``prefix`` first, ``mailoauth:budget:`` by default), by scope name
(``account:{host}|{username}``, ``host:{host}``, ``worker:{worker_id}``,
``credential:{digest}``):

- ``sem:{scope}``: sorted set of holders, scored by expiry (ms, Redis clock);
- ``wait:{scope}``: sorted set of waiters for a full ``sem:``, scored the same way;
  a holder seeing one gives its slot up between polls;
- ``queue:{scope}``: the same waiters scored by when they first asked: free slots go
  to the oldest live ones first, so mailboxes that outnumber the slots take turns;
- ``hold:{scope}``: present while the scope is held back (PX expiry; the value says
  which scope kind it was set for).

Each key expires by itself once nobody renews it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from mailoauth.errors import ConfigurationError
from mailoauth.poll.spec import Mailbox, PollLimits
from mailoauth.poll.throttle import ThrottleScope

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "CONTENTION_CHECK",
    "DEFAULT_LEASE",
    "MAX_REDIS_CALLS",
    "ConnectionBudgets",
    "LocalBudgets",
    "RedisBudgets",
    "Slots",
    "account_key",
    "credential_key",
]

log = logging.getLogger("mailoauth.poll")

#: How often a watcher holding a connection between polls checks whether another
#: mailbox is waiting for its slot (in-process budgets; Redis ones check at each renewal).
CONTENTION_CHECK: Final = 1.0
#: Seconds a Redis slot lives without renewal: how long a dead holder keeps it.
DEFAULT_LEASE: Final = 15.0
#: Calls to Redis one RedisBudgets makes at once (redis-py's pool holds 100 by default).
MAX_REDIS_CALLS: Final = 16
#: Longest wait between two tries at a full Redis semaphore (seconds).
_MAX_POLL: Final = 1.0
#: Longest wait between two tries while Redis cannot be reached (seconds).
_MAX_OUTAGE_WAIT: Final = 10.0
#: Longest single sleep while held back, so that a hold-back cut short is noticed.
_MAX_HOLD_BACK_STEP: Final = 5.0


class Slots(Protocol):
    """One mailbox's share of a budget."""

    def hold(self) -> AbstractAsyncContextManager[None]:
        """Wait until the mailbox may connect, and hold its slots meanwhile."""
        ...

    def contended(self) -> bool:
        """Whether another mailbox waits for one of these slots."""
        ...

    async def sleep_unless_contended(self, seconds: float) -> bool:
        """Sleep ``seconds`` while holding; return True early once contended."""
        ...


class ConnectionBudgets(Protocol):
    """What the :class:`~mailoauth.poll.Poller` asks before every connection."""

    @property
    def limits(self) -> PollLimits:
        """The caps enforced."""
        ...

    def slots(self, mailbox: Mailbox) -> Slots:
        """The slots ``mailbox``'s connections count against."""
        ...

    async def hold_back(self, mailbox: Mailbox, scope: ThrottleScope, seconds: float) -> None:
        """Keep every mailbox of ``mailbox``'s ``scope`` from connecting for ``seconds``
        (a longer hold-back already in place stays)."""
        ...

    async def held_back(self, mailbox: Mailbox) -> float:
        """Seconds until ``mailbox`` may connect again (0: now)."""
        ...


def account_key(mailbox: Mailbox) -> str:
    """``"account:{host}|{username}"``, lower case: what a provider's per-account
    limit counts."""
    host, user = mailbox.account
    return f"account:{host}|{user}"


def credential_key(mailbox: Mailbox) -> str:
    """A name of ``mailbox``'s token source, the same in every process: a digest of the
    provider's ``store_key`` (token URL, client id, grant; never a secret) when it has
    one, else the mailbox's account (a static token has no endpoint to throttle)."""
    store_key = getattr(mailbox.token, "store_key", None)
    if isinstance(store_key, str) and store_key:
        return "credential:" + hashlib.sha256(store_key.encode()).hexdigest()[:24]
    return account_key(mailbox)


def _scope_key(mailbox: Mailbox, scope: ThrottleScope) -> str:
    return credential_key(mailbox) if scope == "credential" else account_key(mailbox)


def _check_seconds(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"a hold-back is a number of seconds >= 0, not {seconds!r}")
    return float(seconds)


class _HoldBacks:
    """Hold-back deadlines in this process (anyio clock), pruned as they pass."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        now = anyio.current_time()
        for old in [k for k, t in self._until.items() if t <= now]:
            del self._until[old]
        self._until[key] = max(self._until.get(key, 0.0), now + seconds)

    def left(self, keys: Iterable[str]) -> float:
        now = anyio.current_time()
        return max((self._until.get(k, now) - now for k in keys), default=0.0)


# -- in-process ---------------------------------------------------------------------


class _LocalSlots:
    def __init__(
        self, limiters: tuple[anyio.CapacityLimiter, ...], keys: tuple[str, ...], backs: _HoldBacks
    ) -> None:
        self.limiters = limiters  # narrowest first, so a waiter holds no wider slot
        self._keys = keys
        self._backs = backs

    def hold(self) -> AbstractAsyncContextManager[None]:
        return self._hold()

    @contextlib.asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        while True:
            await _wait_out(lambda: self._backs.left(self._keys))
            async with contextlib.AsyncExitStack() as stack:
                for limiter in self.limiters:
                    await stack.enter_async_context(limiter)
                if self._backs.left(self._keys) > 0:
                    continue  # held back while it waited: give the slots up again
                yield
                return

    def contended(self) -> bool:
        return any(limiter.statistics().tasks_waiting for limiter in self.limiters)

    async def sleep_unless_contended(self, seconds: float) -> bool:
        return await _sleep_unless(self.contended, seconds, CONTENTION_CHECK)


async def _wait_out(left: Callable[[], float]) -> None:
    """Sleep while ``left()`` (seconds) is positive: a deadline that may be moved (a
    longer hold-back), not an event, so it is read again after each step."""
    while (seconds := left()) > 0:  # noqa: ASYNC110
        await anyio.sleep(min(seconds, _MAX_HOLD_BACK_STEP))


async def _sleep_unless(contended: Callable[[], bool], seconds: float, step: float) -> bool:
    deadline = anyio.current_time() + seconds
    while (left := deadline - anyio.current_time()) > 0:
        if contended():
            return True
        await anyio.sleep(min(left, step))
    return contended()


class LocalBudgets:
    """The caps of ``limits`` (a :class:`~mailoauth.poll.PollLimits`), in this process:
    what a :class:`~mailoauth.poll.Poller` uses when given no budgets. Hold-backs last
    as long as this object. Asyncio only."""

    def __init__(self, limits: PollLimits | None = None) -> None:
        self._limits = limits if limits is not None else PollLimits()
        self._overall = anyio.CapacityLimiter(self._limits.max_connections)
        self._per_host: dict[str, anyio.CapacityLimiter] = {}
        self._per_account: dict[tuple[str, str], anyio.CapacityLimiter] = {}
        self._backs = _HoldBacks()

    @property
    def limits(self) -> PollLimits:
        return self._limits

    def slots(self, mailbox: Mailbox) -> Slots:
        per_account, per_host = self._limits.caps_for(mailbox.host)
        limiters = []
        if per_account is not None:
            limiters.append(
                self._per_account.setdefault(mailbox.account, anyio.CapacityLimiter(per_account))
            )
        if per_host is not None:
            host = mailbox.host.lower()
            limiters.append(self._per_host.setdefault(host, anyio.CapacityLimiter(per_host)))
        limiters.append(self._overall)
        keys = (account_key(mailbox), credential_key(mailbox))
        return _LocalSlots(tuple(limiters), keys, self._backs)

    async def hold_back(self, mailbox: Mailbox, scope: ThrottleScope, seconds: float) -> None:
        self._backs.add(_scope_key(mailbox, scope), _check_seconds(seconds))

    async def held_back(self, mailbox: Mailbox) -> float:
        """Seconds until ``mailbox`` may connect again (0: now)."""
        return max(0.0, self._backs.left((account_key(mailbox), credential_key(mailbox))))

    def __repr__(self) -> str:
        return f"LocalBudgets({self._limits!r})"


# -- across processes, in Redis -------------------------------------------------------

# Redis's own clock, in milliseconds: every process compares expiries against one clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# All or none, first come first served. KEYS: n semaphores, their n waiter sets, their
# n queues, then the hold-back keys of the holder's scopes. ARGV: holder, lease ms,
# waiter ttl ms, n, then the n caps. Returns minus the milliseconds left when a scope is
# held back (nothing taken), 0 when taken, else the index of a semaphore it may not
# take (full, or its free slots are owed to older waiters), plus n when no live waiter
# is ahead of it in any semaphore it waits for (it is next: it asks again soon).
#
# A waiter is listed in the waiter set (scored by expiry: alive while it keeps asking)
# and in the queue (scored by its ticket: when it first asked, the same in every queue)
# of each semaphore it waits for. A free slot goes to the oldest live waiters first: a
# holder that just gave its slot up, asking again, queues behind them. One ticket
# across queues orders waiters the same way everywhere, so two waiters cannot each
# hold a place the other needs. A dead waiter's queue entry is dropped when met.
_ACQUIRE: Final = (
    _NOW
    + """
local holder, lease, wttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local held = 0
for i = 3 * n + 1, #KEYS do
  held = math.max(held, redis.call('PTTL', KEYS[i]))
end
if held > 0 then
  return -held
end
local ticket = now
for i = 1, n do
  local s = redis.call('ZSCORE', KEYS[2 * n + i], holder)
  if s and tonumber(s) < ticket then
    ticket = tonumber(s)
  end
end
-- live waiters queued before the holder, counted up to free
local function ahead(wait, queue, free)
  local count, start = 0, 0
  while true do
    local batch = redis.call('ZRANGE', queue, start, start + 31)
    if #batch == 0 then
      return count
    end
    local kept = 0
    for _, m in ipairs(batch) do
      if m == holder then
        return count
      end
      if redis.call('ZSCORE', wait, m) then
        count = count + 1
        kept = kept + 1
        if count >= free then
          return count
        end
      else
        redis.call('ZREM', queue, m)
      end
    end
    start = start + kept
  end
end
local full, first = 0, true
for i = 1, n do
  local sem, wait, queue = KEYS[i], KEYS[n + i], KEYS[2 * n + i]
  redis.call('ZREMRANGEBYSCORE', sem, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', wait, '-inf', now)
  if not redis.call('ZSCORE', sem, holder) then
    local free = tonumber(ARGV[4 + i]) - redis.call('ZCARD', sem)
    local before = ahead(wait, queue, math.max(free, 1))
    if free <= 0 or before >= free then
      full = i
      if before > 0 then
        first = false
      end
      redis.call('ZADD', queue, ticket, holder)
    end
  end
end
if full > 0 then
  for i = 1, n do  -- keep every place held (and its ticket) alive
    local queue = KEYS[2 * n + i]
    if redis.call('ZSCORE', queue, holder) then
      redis.call('ZADD', queue, ticket, holder)
      redis.call('PEXPIRE', queue, wttl * 2)
      redis.call('ZADD', KEYS[n + i], now + wttl, holder)
      redis.call('PEXPIRE', KEYS[n + i], wttl * 2)
    end
  end
  if first then
    return n + full
  end
  return full
end
for i = 1, n do
  redis.call('ZADD', KEYS[i], now + lease, holder)
  redis.call('PEXPIRE', KEYS[i], lease * 2)
  redis.call('ZREM', KEYS[n + i], holder)
  redis.call('ZREM', KEYS[2 * n + i], holder)
end
return 0
"""
)

# KEYS (without hold-backs) and ARGV[1..2] as for _ACQUIRE. Returns -1 when a slot was
# lost (expired and perhaps taken: the holder must stop), else 1 when someone waits
# for one of them, 0 when nobody does.
_RENEW: Final = (
    _NOW
    + """
local n = #KEYS / 3
local holder, lease = ARGV[1], tonumber(ARGV[2])
for i = 1, n do
  local score = redis.call('ZSCORE', KEYS[i], holder)
  if not score or tonumber(score) < now then
    return -1
  end
end
local waiting = 0
for i = 1, n do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, holder)
  redis.call('PEXPIRE', KEYS[i], lease * 2)
  if redis.call('ZCOUNT', KEYS[n + i], now, '+inf') > 0 then
    waiting = 1
  end
end
return waiting
"""
)

# KEYS: the semaphores, waiter sets and queues; ARGV[1]: the holder.
_RELEASE: Final = """
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 1
"""

# KEYS[1]: a hold-back key; ARGV[1]: ms; ARGV[2]: why. Only ever lengthens it.
_HOLD_BACK: Final = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end
return 1
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError as exc:
        raise ConfigurationError(
            "RedisBudgets needs the redis package: pip install 'mailoauth[redis]'"
        ) from exc
    return redis


@dataclass(eq=False)
class _Lease:
    """One hold of a mailbox's Redis slots."""

    holder: str
    keys: list[str]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    contended: bool = False
    lost: bool = False


class _RedisSlots:
    def __init__(
        self, budgets: RedisBudgets, sems: list[tuple[str, int]], backs: tuple[str, ...]
    ) -> None:
        self._budgets = budgets
        self._sems = sems
        self._backs = backs
        self._lease: _Lease | None = None

    def hold(self) -> AbstractAsyncContextManager[None]:
        return self._hold()

    @contextlib.asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        budgets = self._budgets
        lease = await budgets._acquire(self._sems, self._backs)
        self._lease = lease
        try:
            with lease.scope:
                yield
            if lease.scope.cancelled_caught:
                log.warning(
                    "a connection budget slot in Redis could not be renewed in time (%s); "
                    "the connection was closed so that the cap holds. Check that Redis is "
                    "reachable, or raise lease= if the process stalls this long",
                    "lost to another holder" if lease.lost else "Redis did not answer",
                )
        finally:
            self._lease = None
            await budgets._release(lease)

    def contended(self) -> bool:
        lease = self._lease
        return lease is not None and lease.contended

    async def sleep_unless_contended(self, seconds: float) -> bool:
        return await _sleep_unless(self.contended, seconds, self._budgets._renew_every)


class RedisBudgets:
    """The caps of ``limits``, enforced across every process that shares ``redis``
    (a URL, then owned and closed by :meth:`aclose`, or a ``redis.asyncio.Redis``).

    Per account and per host the caps are fleet-wide; ``max_connections`` is per
    worker (``worker_id``, default: host name, process id and a random tag). Keys
    begin with ``prefix``; give the fleet's workers the same one, and the same
    ``limits`` (each worker admits up to its own cap). ``lease`` is how long
    a slot lives without renewal (renewed every third of it while held): a worker that
    dies frees its slots within one lease, and a worker that cannot renew closes its
    connection after four fifths of one. ``timeout`` bounds each call to Redis;
    ``poll_interval`` is the first wait between tries at a full semaphore (growing,
    with jitter from ``rng``, to a second). Waiters are served in the order they first
    asked: a holder that gives its slot up to a waiter queues behind it.

    Fails safe: while Redis cannot be reached, no slot is taken (callers wait and
    retry, with a warning) and hold-backs are kept in this process too; connections
    already open are closed once their slots can no longer be renewed (an outage
    longer than four fifths of a lease), and opened again when Redis answers. Raises
    :class:`~mailoauth.errors.ConfigurationError` without redis-py or for a bad value.
    Asyncio only.
    """

    def __init__(
        self,
        redis: str | Redis,
        *,
        limits: PollLimits | None = None,
        prefix: str = "mailoauth:budget:",
        worker_id: str | None = None,
        lease: float = DEFAULT_LEASE,
        timeout: float = 5.0,
        poll_interval: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        module = _import_redis()
        for name, value in (
            ("lease", lease),
            ("timeout", timeout),
            ("poll_interval", poll_interval),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if isinstance(redis, str):
            self._redis: Redis = module.asyncio.Redis.from_url(redis)
            self._owns = True
        else:
            self._redis = redis
            self._owns = False
        self._errors: tuple[type[BaseException], ...] = (
            module.exceptions.RedisError,
            OSError,
            TimeoutError,
        )
        self._limits = limits if limits is not None else PollLimits()
        self.prefix = prefix
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        )
        self.lease = float(lease)
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self._rng = rng or random.Random()
        self._renew_every = self.lease / 3
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._renew_script = self._redis.register_script(_RENEW)
        self._release_script = self._redis.register_script(_RELEASE)
        self._hold_back_script = self._redis.register_script(_HOLD_BACK)
        self._calls = anyio.Semaphore(MAX_REDIS_CALLS)
        self._leases: set[_Lease] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._backs = _HoldBacks()
        self._outage = False

    @property
    def limits(self) -> PollLimits:
        return self._limits

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """Around every call to Redis: at most :data:`MAX_REDIS_CALLS` at once (a
        thousand waiting mailboxes would otherwise exhaust the client's connection
        pool), each bounded by ``timeout`` once it is sent."""
        async with self._calls:
            with anyio.fail_after(self.timeout):
                yield

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def slots(self, mailbox: Mailbox) -> Slots:
        per_account, per_host = self._limits.caps_for(mailbox.host)
        sems: list[tuple[str, int]] = []
        if per_account is not None:
            sems.append((account_key(mailbox), per_account))
        if per_host is not None:
            sems.append((f"host:{mailbox.host.lower()}", per_host))
        sems.append((f"worker:{self.worker_id}", self._limits.max_connections))
        return _RedisSlots(self, sems, (account_key(mailbox), credential_key(mailbox)))

    # -- hold-backs ---------------------------------------------------------------

    async def hold_back(self, mailbox: Mailbox, scope: ThrottleScope, seconds: float) -> None:
        """Hold ``scope`` back for ``seconds`` in this process at once, and fleet-wide
        (a warning, not an error, when Redis cannot be reached)."""
        seconds = _check_seconds(seconds)
        key = _scope_key(mailbox, scope)
        self._backs.add(key, seconds)
        ms = math.ceil(seconds * 1000)
        if ms <= 0:
            return
        try:
            async with self._call():
                await self._hold_back_script(keys=[self._key("hold", key)], args=[ms, scope])
        except self._errors as exc:
            log.warning("could not record a hold-back of %s in Redis: %r", key, exc)

    async def held_back(self, mailbox: Mailbox) -> float:
        """Seconds until ``mailbox`` may connect again (0: now), fleet-wide. Raises
        what redis-py raises when Redis cannot be reached."""
        keys = (account_key(mailbox), credential_key(mailbox))
        async with self._call():
            fleet = [await self._redis.pttl(self._key("hold", k)) for k in keys]
        return max([self._backs.left(keys), *(ms / 1000 for ms in fleet)], default=0.0)

    # -- slots ----------------------------------------------------------------------

    async def _acquire(self, sems: list[tuple[str, int]], backs: tuple[str, ...]) -> _Lease:
        """Wait out hold-backs, then take every semaphore of ``sems`` at once."""
        lease = _Lease(
            holder=f"{self.worker_id}:{secrets.token_hex(6)}",
            keys=[self._key(kind, k) for kind in ("sem", "wait", "queue") for k, _ in sems],
        )
        caps = [cap for _, cap in sems]
        holds = [self._key("hold", k) for k in backs]
        tries = 0
        outage = 0
        try:
            while True:
                await _wait_out(lambda: self._backs.left(backs))
                try:
                    started = anyio.current_time()
                    async with self._call():
                        answer = await self._acquire_script(
                            keys=[*lease.keys, *holds],
                            args=[
                                lease.holder,
                                self._ms(self.lease),
                                self._ms(self._wait_ttl()),
                                len(sems),
                                *caps,
                            ],
                        )
                except self._errors as exc:
                    outage += 1
                    self._note_outage(exc)
                    ceiling = min(_MAX_OUTAGE_WAIT, self.poll_interval * 2.0 ** min(outage, 10))
                    await anyio.sleep(self._rng.uniform(ceiling / 2, ceiling))
                    continue
                outage = 0
                self._note_recovery()
                if int(answer) < 0:  # held back, fleet-wide
                    await anyio.sleep(min(-int(answer) / 1000, _MAX_HOLD_BACK_STEP))
                    continue
                if int(answer) == 0:
                    lease.scope = anyio.CancelScope(deadline=self._cut_at(started))
                    self._leases.add(lease)
                    self._start_renewer()
                    return lease
                # Next in line: ask again soon, so that a slot let go is not left idle;
                # behind others: back off.
                tries = 0 if int(answer) > len(sems) else tries + 1
                ceiling = min(_MAX_POLL, self.poll_interval * 1.5 ** min(tries, 20))
                await anyio.sleep(self._rng.uniform(ceiling / 2, ceiling))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(lease, quiet=True)  # its waiter entries
            raise

    def _wait_ttl(self) -> float:
        return max(3 * _MAX_POLL, 3 * self.poll_interval)

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, math.ceil(seconds * 1000))

    def _cut_at(self, started: float) -> float:
        """When a holder must have closed its connection, if no renewal is confirmed
        meanwhile: four fifths into the lease taken (or renewed) at ``started``."""
        return started + 0.8 * self.lease

    async def _release(self, lease: _Lease, *, quiet: bool = False) -> None:
        self._leases.discard(lease)
        try:
            with anyio.CancelScope(shield=True):
                async with self._call():
                    await self._release_script(keys=lease.keys, args=[lease.holder])
        except self._errors as exc:
            if not quiet:  # the slots expire by themselves within one lease
                log.warning("could not release connection budget slots in Redis: %r", exc)

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_loop(), name="mailoauth budget renewer"
            )

    async def _renew_loop(self) -> None:
        while self._leases:
            await anyio.sleep(self._renew_every)
            await self.renew()

    async def renew(self) -> None:
        """Renew every slot held now (done every third of a lease while any is held);
        a slot found lost, or not renewed in time, cuts its holder's connection."""
        leases = list(self._leases)
        if not leases:
            return
        started = anyio.current_time()
        try:
            async with self._call():
                pipe = self._redis.pipeline(transaction=False)
                for lease in leases:
                    await self._renew_script(
                        keys=lease.keys, args=[lease.holder, self._ms(self.lease)], client=pipe
                    )
                results = await pipe.execute()
        except self._errors as exc:
            self._note_outage(exc)
            return  # each lease's cut deadline stands
        self._note_recovery()
        for lease, result in zip(leases, results, strict=True):
            if int(result) < 0:
                lease.lost = True
                lease.scope.cancel()
            else:
                lease.contended = int(result) == 1
                lease.scope.deadline = self._cut_at(started)

    def _note_outage(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.warning(
                "Redis for connection budgets (%s) cannot be reached: %r; no new connection "
                "is opened until it answers",
                self.prefix,
                exc,
            )

    def _note_recovery(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("Redis for connection budgets (%s) answers again", self.prefix)

    async def holders(self, kind: str, name: str) -> int:
        """How many live slots of the semaphore ``kind:name`` are held fleet-wide
        (``"account"``, ``"host:imap.gmail.com"``...; for status pages and tests)."""
        key = self._key("sem", f"{kind}:{name}")
        async with self._call():
            now_s, now_us = await self._redis.time()
            now = int(now_s) * 1000 + int(now_us) // 1000
            return int(await self._redis.zcount(key, now, "+inf"))

    async def aclose(self) -> None:
        """Stop renewing (held slots then expire within one lease) and close the Redis
        client if this object created it."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._owns:
            await self._redis.aclose()

    def __repr__(self) -> str:
        return f"RedisBudgets(prefix={self.prefix!r}, worker_id={self.worker_id!r})"
