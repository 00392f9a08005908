"""RedisTokenStore: one token store for a fleet of machines (``mailoauth[redis]``).

Credentials are JSON values under ``{prefix}cred:{key}``. :meth:`RedisTokenStore.lock`
is a distributed lock (redis-py's asyncio ``Lock``, a random token under
``{prefix}lock:{key}`` set with ``NX`` and a lease), which the providers hold around
"load the newest → refresh if still needed → save". So a fleet refreshes each
credential once, and two workers never spend the same rotating refresh token at once
(with Microsoft, the second use would invalidate the first).

The lease is renewed while the lock is held, so a slow token endpoint does not let the
lock lapse under a live holder; a worker that dies (even ``kill -9``) holding the lock
stops renewing it, and the others get it at most one lease later.

Saves are fenced. A worker that stalls (GC pause, suspended VM, blocked loop) past its
lease still believes it holds the lock; when it wakes it would overwrite the grant that
the next holder saved meanwhile. So every lock grant takes a fencing token, a counter
under ``{prefix}fence:{key}`` that grows with each grant (``INCR``), and every save or
delete made while holding the lock is a Lua script that writes only if the counter still
equals the holder's token. A stale holder's write is refused atomically in Redis and
raises :class:`~mailoauth.errors.LockLostError`; nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from mailoauth.errors import ConfigurationError, LockLostError, TransientTokenError
from mailoauth.tokens.stores import StoredCredential

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "DEFAULT_LOCK_LEASE",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_POOL_TIMEOUT",
    "RedisTokenStore",
]

log = logging.getLogger("mailoauth.tokens")

DEFAULT_LOCK_LEASE: Final = 30.0
"""Seconds a lock lives without renewal: how long a dead holder can block the others."""
DEFAULT_LOCK_TIMEOUT: Final = 60.0
"""Seconds to wait for a lock held by another worker before giving up."""
DEFAULT_MAX_CONNECTIONS: Final = 32
"""Connections to Redis a store made from a URL opens at most."""
DEFAULT_POOL_TIMEOUT: Final = 20.0
"""Seconds a call waits for a free connection of a store made from a URL."""
_LOCK_POLL: Final = 0.05

# Writes only while the fence counter still holds the writer's token (KEYS[1] the
# counter, KEYS[2] the credential; ARGV[1] the token, ARGV[2] the value or "" to delete).
_FENCED_WRITE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""

# The locks this task holds: (store id, key) -> fencing token. Context-local, so that
# only code running under ``async with store.lock(key)`` writes with its token.
_held: contextvars.ContextVar[Mapping[tuple[int, str], int]] = contextvars.ContextVar(
    "mailoauth_redis_fences", default=MappingProxyType({})
)


def _import_redis() -> Any:
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError as exc:
        raise ConfigurationError(
            "RedisTokenStore needs the redis package: pip install 'mailoauth[redis]'"
        ) from exc
    return redis


@contextlib.contextmanager
def _map_redis_errors(what: str) -> Iterator[None]:
    redis = _import_redis()
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise TransientTokenError(
            f"the Redis token store failed while {what}: {type(exc).__name__}: {exc}"
        ) from exc
    except OSError as exc:
        raise TransientTokenError(f"could not reach the Redis token store while {what}") from exc


class RedisTokenStore:
    """A :class:`~mailoauth.tokens.stores.LockingTokenStore` in Redis.

    ``redis`` is a URL (``redis://host:6379/0``; the store then owns the client and
    :meth:`aclose` closes it) or a ``redis.asyncio.Redis`` client to share. A client
    made from a URL has a blocking pool of ``max_connections`` (a ``max_connections``
    in the URL wins): hundreds of first refreshes at once queue for a connection, up to
    ``pool_timeout`` seconds each, instead of failing. Keys begin with ``prefix``.
    ``lock_lease`` bounds how long a dead lock holder blocks the fleet;
    ``lock_timeout`` how long :meth:`lock` waits. Raises
    :class:`~mailoauth.errors.ConfigurationError` when redis-py is not installed or for
    a bad value, and
    :class:`~mailoauth.errors.TransientTokenError` when Redis cannot be reached or a
    lock is not granted in time. Stored values hold secrets: protect the Redis server
    (``requirepass``/ACLs, TLS with ``rediss://``).
    """

    def __init__(
        self,
        redis: str | Redis,
        *,
        prefix: str = "mailoauth:",
        lock_lease: float = DEFAULT_LOCK_LEASE,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        module = _import_redis()
        if not lock_lease > 0 or not lock_timeout >= 0:
            raise ConfigurationError("lock_lease must be > 0 and lock_timeout >= 0 seconds")
        if isinstance(max_connections, bool) or not (
            isinstance(max_connections, int) and max_connections >= 1
        ):
            raise ConfigurationError(
                f"max_connections must be an int >= 1, not {max_connections!r}"
            )
        if not (isinstance(pool_timeout, int | float) and 0 < pool_timeout < float("inf")):
            raise ConfigurationError(
                f"pool_timeout must be a positive number of seconds, not {pool_timeout!r}"
            )
        if isinstance(redis, str):
            # Blocking: a burst of callers waits (bounded) for a connection rather than
            # failing with MaxConnectionsError once the pool is exhausted.
            pool = module.asyncio.BlockingConnectionPool.from_url(
                redis, max_connections=max_connections, timeout=pool_timeout
            )
            self._redis: Redis = module.asyncio.Redis(connection_pool=pool)
            self._owns = True
        else:
            self._redis = redis
            self._owns = False
        self.prefix = prefix
        self.lock_lease = lock_lease
        self.lock_timeout = lock_timeout

    def _cred_key(self, key: str) -> str:
        return f"{self.prefix}cred:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    def _fence_key(self, key: str) -> str:
        return f"{self.prefix}fence:{key}"

    def _fence(self) -> tuple[str, int] | None:
        """The lock key and fencing token this task holds on this store, if any."""
        for (store_id, key), token in _held.get().items():
            if store_id == id(self):
                return key, token
        return None

    async def _write(self, key: str, data: str, what: str) -> None:
        fence = self._fence()
        with _map_redis_errors(what):
            if fence is None:
                if data:
                    await self._redis.set(self._cred_key(key), data)
                else:
                    await self._redis.delete(self._cred_key(key))
                return
            lock_key, token = fence
            written = await self._redis.eval(
                _FENCED_WRITE, 2, self._fence_key(lock_key), self._cred_key(key), str(token), data
            )
        if not written:
            raise LockLostError(
                f"refused to write the credential {key} to Redis: this worker's lock on "
                f"{lock_key} lapsed (lease {self.lock_lease:g} s) and another worker holds it "
                "now, so it may have saved a newer grant. Nothing was written; if stalls "
                "this long are expected, raise lock_lease"
            )

    async def load(self, key: str) -> StoredCredential | None:
        with _map_redis_errors("loading a credential"):
            raw = await self._redis.get(self._cred_key(key))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("ignoring a malformed credential in Redis for %s", key)
            return None
        return StoredCredential.from_json(data) if isinstance(data, dict) else None

    async def save(self, key: str, credential: StoredCredential) -> None:
        """Store ``credential``; fenced while this task holds a lock of this store
        (:class:`~mailoauth.errors.LockLostError` if the lock was lost meanwhile)."""
        await self._write(key, json.dumps(credential.to_json()), "saving a credential")

    async def delete(self, key: str) -> None:
        """Delete the credential; fenced like :meth:`save`."""
        await self._write(key, "", "deleting a credential")

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold the fleet-wide lock for ``key`` (renewed while held)."""
        return self._lock(key)

    @contextlib.asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        from redis.asyncio.lock import Lock

        lock = Lock(
            self._redis,
            self._lock_key(key),
            timeout=self.lock_lease,
            sleep=_LOCK_POLL,
            blocking_timeout=self.lock_timeout,
            thread_local=False,
        )
        with _map_redis_errors("taking the lock"):
            acquired = await lock.acquire()
        if not acquired:
            raise TransientTokenError(
                f"another worker held the Redis token lock for {key} over {self.lock_timeout:g} s"
            )
        renewer = asyncio.get_running_loop().create_task(self._renew(lock, key))
        reset: contextvars.Token[Mapping[tuple[int, str], int]] | None = None
        try:
            with _map_redis_errors("taking the fencing token"):
                token = int(await self._redis.incr(self._fence_key(key)))
            reset = _held.set(MappingProxyType({**_held.get(), (id(self), key): token}))
            yield
        finally:
            if reset is not None:
                _held.reset(reset)
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                with _map_redis_errors("releasing the lock"):
                    await lock.release()
            except TransientTokenError as exc:
                # The lease ran out (or Redis went away): the key frees itself.
                log.warning("could not release the Redis token lock for %s: %s", key, exc)

    async def _renew(self, lock: Any, key: str) -> None:
        while True:
            await asyncio.sleep(self.lock_lease / 3)
            try:
                await lock.reacquire()
            except Exception as exc:  # the holder carries on; the lease may lapse
                log.warning("could not renew the Redis token lock for %s: %r", key, exc)

    async def aclose(self) -> None:
        """Close the Redis client (and its pool) if this store created it."""
        if self._owns:
            await self._redis.aclose()
            # A pool given to a client is not closed with it (redis-py 5.0 to 8).
            await self._redis.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self.prefix!r})"
