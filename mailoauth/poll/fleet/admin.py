"""Fleet: what an administrator (or the CLI) does to a fleet: add, remove, look."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from mailoauth.errors import ConfigurationError
from mailoauth.poll.fleet._redis import Keys, connect, decode, redis_errors
from mailoauth.poll.fleet.worker import DEFAULT_PREFIX, budget_prefix
from mailoauth.poll.mailbox_spec import MailboxSpec

__all__ = ["Fleet", "FleetStatus", "WorkerStatus"]

#: How long one administrative Redis call may take.
ADMIN_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class WorkerStatus:
    """A live worker: its id, its last heartbeat (seconds since the epoch, by the Redis
    server's clock), the keys of the mailboxes it holds and how many mail connections
    it holds open now (by its connection budget)."""

    worker_id: str
    last_heartbeat: float
    keys: tuple[str, ...]
    connections: int = 0


@dataclass(frozen=True)
class FleetStatus:
    """A snapshot of a fleet (see :meth:`Fleet.status`).

    ``leases`` maps each leased mailbox to its worker; ``failures`` each failing mailbox
    to why (``"permanent: ..."`` or ``"transient: ..."``, as its worker last reported
    it); ``lag`` each mailbox to how many seconds its oldest unacknowledged event has
    waited (0.0: none in flight). ``connections`` maps each capped scope that has a
    connection open now to how many, fleet-wide, as the workers' default connection
    budgets count them: ``"account:{host}|{username}"`` (hosts with a per-account cap),
    ``"host:{host}"`` (with a per-host cap) and ``"worker:{id}"`` (every connection).
    Workers given ``budgets=`` of their own are not counted.
    """

    mailboxes: tuple[str, ...]
    workers: dict[str, WorkerStatus] = field(default_factory=dict)
    leases: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)

    @property
    def unleased(self) -> tuple[str, ...]:
        """Mailboxes no worker holds now (just added, or their worker just died)."""
        return tuple(k for k in self.mailboxes if k not in self.leases)

    def spread(self) -> int:
        """The most minus the fewest mailboxes held by one live worker (0 or 1 once the
        fleet is settled; 0 with no worker)."""
        counts = [len(w.keys) for w in self.workers.values()]
        return max(counts) - min(counts) if counts else 0


class Fleet:
    """The mailboxes of a fleet, in Redis: add and remove them at run time, and look at
    who watches what.

    ``redis`` is a URL (this object then owns the client: use ``async with`` or
    :meth:`aclose`) or a ``redis.asyncio.Redis``; ``prefix`` must be the workers'. Redis
    failures raise a retryable :class:`~mailoauth.errors.TransportError`; a missing
    redis package, :class:`~mailoauth.errors.ConfigurationError`.
    """

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self.keys = Keys(prefix)
        self._redis, self._owns = connect(redis, timeout=ADMIN_TIMEOUT)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the Redis client if this object made it."""
        if self._owns:
            await self._redis.aclose()

    async def add(self, spec: MailboxSpec) -> None:
        """Add ``spec`` to the fleet (replacing the one with its key: its worker
        restarts it) and wake the workers: one of them takes it at once."""
        if not isinstance(spec, MailboxSpec):
            raise ConfigurationError(f"add() takes a MailboxSpec, not {type(spec).__name__}")
        with redis_errors("adding a mailbox"):
            await self._redis.hset(self.keys.specs, spec.key, json.dumps(spec.to_json()))
            await self._redis.publish(self.keys.channel, "add")

    async def remove(self, key: str, *, forget: bool = False) -> bool:
        """Remove the mailbox ``key``; its worker stops watching it at once. With
        ``forget``, its saved state and events in flight go too (re-adding it then
        starts it afresh). Returns whether it was in the fleet."""
        with redis_errors("removing a mailbox"):
            removed = bool(await self._redis.hdel(self.keys.specs, key))
            if forget:
                await self._redis.delete(self.keys.state(key), self.keys.inflight(key))
            await self._redis.hdel(self.keys.failures, key)
            await self._redis.publish(self.keys.channel, "remove")
        return removed

    async def mailboxes(self) -> dict[str, MailboxSpec]:
        """The fleet's mailboxes, by key."""
        with redis_errors("reading the mailboxes"):
            raw = await self._redis.hgetall(self.keys.specs)
        return {decode(k): MailboxSpec.from_json(json.loads(decode(v))) for k, v in raw.items()}

    async def status(self) -> FleetStatus:
        """Workers (with their last heartbeat, the mailboxes they hold and their open
        connections), leases, failures, lag and connection counts, read in one pipeline
        (a snapshot, not a transaction)."""
        with redis_errors("reading the fleet's status"):
            raw_specs = await self._redis.hgetall(self.keys.specs)
            specs = {decode(k): decode(v) for k, v in raw_specs.items()}
            keys = sorted(specs)
            seconds, micros = await self._redis.time()
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrange(self.keys.workers, 0, -1, withscores=True)
            pipe.hgetall(self.keys.failures)
            for key in keys:
                pipe.get(self.keys.lease(key))
                pipe.hvals(self.keys.inflight(key))
            results = await pipe.execute()
            beats = {decode(w): float(score) / 1000 for w, score in results[0]}
            scopes = sorted(_scopes(specs.values()) | {f"worker:{w}" for w in beats})
            counts = await self._connections(scopes, int(seconds) * 1000 + int(micros) // 1000)
        failures = {decode(k): decode(v) for k, v in results[1].items()}
        leases: dict[str, str] = {}
        lag: dict[str, float] = {}
        now = time.time()
        for i, key in enumerate(keys):
            owner, inflight = results[2 + 2 * i], results[3 + 2 * i]
            if owner is not None:
                leases[key] = decode(owner).rsplit("|", 1)[0]
            oldest = now
            for value in inflight:
                try:
                    at = json.loads(value).get("at")
                except (ValueError, AttributeError):
                    continue
                if isinstance(at, int | float):
                    oldest = min(oldest, at)
            lag[key] = max(0.0, now - oldest)
        held: dict[str, list[str]] = {w: [] for w in beats}
        for key, owner in leases.items():
            held.setdefault(owner, []).append(key)
        workers = {
            w: WorkerStatus(
                w, beats[w], tuple(sorted(held.get(w, []))), counts.get(f"worker:{w}", 0)
            )
            for w in sorted(beats)
        }
        return FleetStatus(tuple(keys), workers, leases, failures, lag, counts)

    async def _connections(self, scopes: list[str], now_ms: int) -> dict[str, int]:
        """Live slots of each budget scope in ``scopes`` (those with none left out): one
        ZCOUNT each, in one pipeline."""
        prefix = budget_prefix(self.keys.prefix)
        pipe = self._redis.pipeline(transaction=False)
        for scope in scopes:
            pipe.zcount(f"{prefix}sem:{scope}", now_ms, "+inf")
        found = await pipe.execute()
        return {scope: int(n) for scope, n in zip(scopes, found, strict=True) if int(n)}

    def __repr__(self) -> str:
        return f"Fleet(prefix={self.keys.prefix!r})"


def _scopes(specs: Any) -> set[str]:
    """The account and host budget scopes of the mailbox specs (JSON) in ``specs``;
    a spec that does not parse is skipped (status must not fail on it)."""
    scopes: set[str] = set()
    for raw in specs:
        try:
            data = json.loads(raw)
            host, user = str(data["host"]).lower(), str(data["username"]).lower()
        except (ValueError, KeyError, TypeError):
            continue
        scopes.add(f"account:{host}|{user}")
        scopes.add(f"host:{host}")
    return scopes
