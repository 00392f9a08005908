"""What the fleet keeps in Redis: the key names, the Lua scripts, error mapping.

Every key begins with the fleet's ``prefix`` (``mailoauth:fleet`` by default):

==============================  ==========================================================
``{p}:specs``                   hash: mailbox key -> :class:`MailboxSpec` JSON
``{p}:workers``                 sorted set: worker id -> its last heartbeat (ms, Redis
                                clock); a member older than one lease is dead
``{p}:lease:{key}``             string ``"{worker id}|{fence}"`` with a PX TTL of one lease
``{p}:fence:{key}``             counter, INCR'd on every grant of the lease
``{p}:state:{key}``             the mailbox's handled state (``state_to_json``)
``{p}:inflight:{key}``          hash: dedupe key -> JSON of an event yielded, not yet acked
``{p}:failures``                hash: mailbox key -> why it last failed
``{p}:events``                  pub/sub channel: join, leave, add, remove, release
==============================  ==========================================================

Every write a lease holder makes (renewal, release, state, in-flight) is one Lua script
that first checks the lease still holds the writer's ``"{worker id}|{fence}"``: a
worker whose lease lapsed (a stall, a partition) is refused atomically, even when it
got the same mailbox back since (the fence differs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Final

from mailoauth.errors import ConfigurationError, TransportError

# KEYS: workers zset; ARGV[1] worker id, ARGV[2] lease (ms), ARGV[3] "1" to join,
# "0" to leave. Returns the live worker ids (sorted) and the Redis clock (ms).
HEARTBEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(ids)
return {ids, tostring(now)}
"""

# KEYS: lease keys; ARGV[i] the owner token for KEYS[i]; ARGV[#KEYS + 1] lease (ms).
# Returns 1/0 per key: renewed, or no longer ours.
RENEW: Final = """
local px = ARGV[#KEYS + 1]
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('PEXPIRE', KEYS[i], px)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: alternately a lease key and its fence key; ARGV[1] worker id, ARGV[2] lease
# (ms), ARGV[3] how many to grant at most. Grants free leases, in order; returns the
# fence of each grant (0: not granted).
ACQUIRE: Final = """
local left = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS, 2 do
  local fence = 0
  if left > 0 and redis.call('EXISTS', KEYS[i]) == 0 then
    fence = redis.call('INCR', KEYS[i + 1])
    redis.call('SET', KEYS[i], ARGV[1] .. '|' .. fence, 'PX', ARGV[2])
    left = left - 1
  end
  out[#out + 1] = fence
end
return out
"""

# KEYS[1] lease; ARGV[1] owner token. Deletes the lease if it is still ours.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] lease, KEYS[2] state, KEYS[3] in-flight hash; ARGV[1] owner token, ARGV[2]
# the state JSON, ARGV[3..] the dedupe keys this state covers (cleared with it).
SAVE_STATE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
for i = 3, #ARGV do
  redis.call('HDEL', KEYS[3], ARGV[i])
end
return 1
"""

# KEYS[1] lease, KEYS[2] in-flight hash; ARGV[1] owner token, ARGV[2] dedupe key,
# ARGV[3] its JSON. Records an event as in flight before it is yielded.
RECORD_INFLIGHT: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


class Keys:
    """The names of one fleet's Redis keys (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("prefix must be a non-empty string")
        self.prefix = prefix
        self.specs = f"{prefix}:specs"
        self.workers = f"{prefix}:workers"
        self.failures = f"{prefix}:failures"
        self.channel = f"{prefix}:events"

    def lease(self, key: str) -> str:
        return f"{self.prefix}:lease:{key}"

    def fence(self, key: str) -> str:
        return f"{self.prefix}:fence:{key}"

    def state(self, key: str) -> str:
        return f"{self.prefix}:state:{key}"

    def inflight(self, key: str) -> str:
        return f"{self.prefix}:inflight:{key}"


def owner_token(worker_id: str, fence: int) -> str:
    """The value of a lease held by ``worker_id`` under ``fence``."""
    return f"{worker_id}|{fence}"


def import_redis() -> Any:
    """The redis package, or a ConfigurationError naming the extra to install."""
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError as exc:
        raise ConfigurationError(
            "the fleet needs the redis package: pip install 'mailoauth[redis]'"
        ) from exc
    return redis


#: Connections one client made from a URL opens at most; callers past that wait for
#: one (bounded by the call's timeout) instead of failing.
MAX_CONNECTIONS: Final = 32


def connect(
    redis: Any, *, timeout: float, max_connections: int = MAX_CONNECTIONS
) -> tuple[Any, bool]:
    """``(client, owned)``: a ``redis.asyncio.Redis`` made from a URL (owned: the caller
    closes it with ``aclose()``, which closes its pool too), or the given client as is.
    A URL client gets ``timeout`` as its socket timeouts and a blocking pool of
    ``max_connections``, so no Redis call hangs longer than that and a burst of calls
    queues rather than failing."""
    module = import_redis()
    if isinstance(redis, str):
        pool = module.asyncio.BlockingConnectionPool.from_url(
            redis,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=timeout,
        )
        # from_pool (redis-py >= 5.0.1): the client owns the pool and disconnects it on
        # aclose(); Redis(connection_pool=pool) would leave its sockets open.
        return module.asyncio.Redis.from_pool(pool), True
    return redis, False


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Map redis-py's errors (and OSError, TimeoutError) to a retryable
    :class:`~mailoauth.errors.TransportError`."""
    module = import_redis()
    try:
        yield
    except module.exceptions.RedisError as exc:
        raise TransportError(
            f"the fleet's Redis failed while {what}: {type(exc).__name__}: {exc} (retryable: "
            "check that Redis is up and reachable)"
        ) from exc
    except (OSError, TimeoutError) as exc:
        raise TransportError(
            f"could not reach the fleet's Redis while {what} ({type(exc).__name__}; "
            "retryable: check that Redis is up and reachable)"
        ) from exc


def decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
