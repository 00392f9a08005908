"""The Poller as a fleet: worker processes on any number of machines sharing one set of
mailboxes kept in Redis (``pip install 'mailoauth[redis]'``).

::

    fleet = Fleet("redis://redis:6379/0")
    await fleet.add(MailboxSpec("imap", "imap.gmail.com", 993, "a@example.com", "alice"))

    async with FleetWorker("redis://redis:6379/0", resolve) as worker:   # on each machine
        async for event in worker:
            ...

**Leases.** Each mailbox is leased to one worker at a time: a key with a PX TTL
holding ``"{worker id}|{fence}"``, where the fence is a counter INCR'd on every grant.
The holder renews its leases every ``lease / 3`` seconds (one Lua script checking owner
and fence). A renewed lease is trusted locally until ``LOCAL_SHARE`` (0.8) of a lease
after the renewal was *sent*; a watchdog stops watching every mailbox past that
deadline at once, whatever else the worker is doing. Every state write is a Lua script
checking owner and fence (refused: :class:`~mailoauth.errors.LockLostError`, nothing
written). So a worker that stalled past its lease can neither watch nor commit, even if
it got the same mailbox back since.

**Membership and fair share.** Workers heartbeat into a sorted set (score: the Redis
server's clock); one silent for a lease is dropped by the next heartbeat of any other.
With ``N`` mailboxes and ``W`` live workers, the worker of rank ``i`` (by sorted id)
holds ``N // W``, plus one if ``i < N % W``: it releases what it holds above that and
grants itself free or expired leases up to it, so the fleet ends within one mailbox of
even with no restart. Joins, clean leaves, releases and ``Fleet.add/remove`` are
published on a channel that wakes every worker's keeper at once; the ``lease / 3``
tick is the fallback. A worker killed with SIGKILL has its mailboxes taken over within
a lease plus a tick; one leaving ``async with`` releases its leases at once.

**At least once, and redelivery.** Before an event is yielded, its dedupe key is
recorded in the mailbox's in-flight hash (fenced); the acknowledgement's state write
clears it in the same Lua script. A worker granted a mailbox reads its in-flight hash
first: an event whose dedupe key is in it is yielded with ``redelivered=True``. Nothing
handled is reported again unmarked; nothing is lost. (With ``start="new"``, a mailbox
counts mail as new from when its first holder looked at it and saved a starting point,
``{prefix}:state:{key}``; mail that arrived before that is not reported.)

**Redis restarts** (run it with persistence, ``appendonly yes``): every Redis call is
bounded; the keeper and the pub/sub listener retry with jittered backoff; leases not
renewed in time are dropped by the watchdog and granted again once Redis is back.

Mailboxes are :class:`~mailoauth.poll.MailboxSpec` (no secret in Redis);
``resolve(spec)`` makes the :class:`~mailoauth.poll.Mailbox` with its token provider
inside each worker. See docs/architecture.md ("The fleet") for the key layout.
"""

from typing import TYPE_CHECKING

from mailoauth._util.lazy import lazy_exports

#: Where each public name is imported from, on first access (PEP 562).
_LAZY = {
    "mailoauth.poll.fleet.admin": ["Fleet", "FleetStatus", "WorkerStatus"],
    "mailoauth.poll.fleet.store": ["FencedStateStore"],
    "mailoauth.poll.fleet.worker": ["DEFAULT_LEASE", "DEFAULT_PREFIX", "FleetWorker", "Resolver"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

if TYPE_CHECKING:
    from mailoauth.poll.fleet.admin import Fleet, FleetStatus, WorkerStatus
    from mailoauth.poll.fleet.store import FencedStateStore
    from mailoauth.poll.fleet.worker import DEFAULT_LEASE, DEFAULT_PREFIX, FleetWorker, Resolver

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_PREFIX",
    "FencedStateStore",
    "Fleet",
    "FleetStatus",
    "FleetWorker",
    "Resolver",
    "WorkerStatus",
]
