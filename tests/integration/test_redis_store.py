"""RedisTokenStore against a real redis-server started by the tests.

A fleet of 4 processes x 250 concurrent callers shares one expired credential on a
server that rotates refresh tokens: exactly one token request. A worker killed with
SIGKILL while holding the lock blocks the others no longer than the lock's lease.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from mailoauth.errors import LockLostError, TransientTokenError
from mailoauth.testing._process import free_ports
from mailoauth.testing.oauth_server import FakeOAuthServer, ScriptedResponse
from mailoauth.testing.redis_server import RedisServer
from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant, StoredCredential
from mailoauth.tokens.redis_store import RedisTokenStore
from tests.integration.conftest import skip_or_fail

pytestmark = [pytest.mark.asyncio, pytest.mark.realserver]

ROOT = str(Path(__file__).resolve().parents[2])
PROCESSES = 4
CALLERS = 250
SECRET = "cs-redis-fleet-secret"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    with RedisServer(appendonly=False) as server:
        yield server.url


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[RedisTokenStore]:
    prefix = f"t{os.urandom(4).hex()}:"
    store = RedisTokenStore(redis_url, prefix=prefix, lock_lease=2.0, lock_timeout=20.0)
    yield store
    await store.aclose()


def provider(server: FakeOAuthServer, rt: str, store: RedisTokenStore) -> OAuth2TokenProvider:
    return OAuth2TokenProvider(
        server.token_url,
        RefreshTokenGrant(rt),
        client_id="cid",
        client_secret=SECRET,
        store=store,
        store_key="fleet-key",
    )


async def test_round_trip_and_delete(store: RedisTokenStore) -> None:
    cred = StoredCredential(refresh_token="rt-1", access_token="at-1", scope="mail")
    assert await store.load("k") is None
    await store.save("k", cred)
    assert await store.load("k") == cred
    await store.delete("k")
    assert await store.load("k") is None
    assert "rt-1" not in repr(store) and "at-1" not in repr(cred)


async def test_lock_excludes_a_second_holder(store: RedisTokenStore) -> None:
    order: list[str] = []

    async def hold(name: str) -> None:
        async with store.lock("k"):
            order.append(f"{name} in")
            await asyncio.sleep(0.2)
            order.append(f"{name} out")

    await asyncio.wait_for(asyncio.gather(hold("a"), hold("b")), 10)
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


async def test_lease_is_renewed_while_held(store: RedisTokenStore) -> None:
    async with store.lock("k"):
        await asyncio.sleep(store.lock_lease * 1.6)  # longer than one lease
        other = RedisTokenStore(store._redis, prefix=store.prefix, lock_timeout=0.3)
        with pytest.raises(TransientTokenError, match="held the Redis token lock"):
            async with other.lock("k"):
                pass


async def test_unreachable_redis_is_transient() -> None:
    (port,) = free_ports(1)
    store = RedisTokenStore(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(TransientTokenError):
        await asyncio.wait_for(store.load("k"), 10)
    await store.aclose()


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant
    from mailoauth.tokens.redis_store import RedisTokenStore

    async def main():
        url, redis_url, prefix, rt, callers = sys.argv[1:6]
        store = RedisTokenStore(redis_url, prefix=prefix, lock_lease=5.0, lock_timeout=30.0)
        provider = OAuth2TokenProvider(
            url, RefreshTokenGrant(rt), client_id="cid", client_secret=sys.argv[6],
            store=store, store_key="fleet-key",
        )
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        tokens = await asyncio.gather(
            *[provider.get_access_token() for _ in range(int(callers))]
        )
        print(" ".join(sorted({t.value for t in tokens})), flush=True)
        await provider.aclose()
        await store.aclose()

    asyncio.run(main())
    """
)


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER if args[0] == "worker" else HOLDER,
        *args[1:],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


async def test_fleet_of_4x250_refreshes_an_expired_token_once(store: RedisTokenStore) -> None:
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.add_client("cid", SECRET)
        rt0 = server.issue_refresh_token("fleet@example.test")
        expired = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
        await store.save(
            "fleet-key",
            StoredCredential(
                refresh_token=rt0, access_token="at-old", expires_at=expired, issued_at=expired
            ),
        )
        # Slow the one refresh so that every worker is waiting on the lock meanwhile.
        server.script(ScriptedResponse(status=0, delay=0.5))
        redis_url = f"redis://127.0.0.1:{store._redis.connection_pool.connection_kwargs['port']}/0"
        workers = [
            await spawn(
                "worker", server.token_url, redis_url, store.prefix, rt0, str(CALLERS), SECRET
            )
            for _ in range(PROCESSES)
        ]
        for worker in workers:
            assert worker.stdout is not None
            line = await asyncio.wait_for(worker.stdout.readline(), 30)
            assert line.strip() == b"ready"
        for worker in workers:  # all at once
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        outputs = [await asyncio.wait_for(w.communicate(), 60) for w in workers]
        for worker, (_, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, err.decode()[-2000:]
        values = {out.decode().strip() for out, _ in outputs}
        assert server.stats.token_requests == 1
        assert len(values) == 1 and " " not in next(iter(values))
        assert server.is_active(values.pop())
        stored = await store.load("fleet-key")
        assert stored is not None and stored.refresh_token not in (None, rt0)


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from mailoauth.tokens.redis_store import RedisTokenStore

    async def main():
        redis_url, prefix, lease = sys.argv[1:4]
        store = RedisTokenStore(redis_url, prefix=prefix, lock_lease=float(lease))
        async with store.lock("fleet-key"):
            print("locked", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_worker_killed_holding_the_lock_blocks_others_only_for_the_lease(
    store: RedisTokenStore,
) -> None:
    lease = store.lock_lease
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.add_client("cid", SECRET)
        rt0 = server.issue_refresh_token("killed@example.test")
        redis_url = f"redis://127.0.0.1:{store._redis.connection_pool.connection_kwargs['port']}/0"
        holder = await spawn("holder", redis_url, store.prefix, str(lease))
        assert holder.stdout is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 30)).strip() == b"locked"
        await asyncio.sleep(lease)  # the holder renews: it keeps the lock past one lease
        locked_until = await store._redis.pttl(store._lock_key("fleet-key"))
        assert locked_until > 0
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        killed_at = time.monotonic()
        async with provider(server, rt0, store) as survivor:
            token = await asyncio.wait_for(survivor.get_access_token(), lease * 5)
        waited = time.monotonic() - killed_at
        assert server.is_active(token.value)
        assert waited <= lease + 1.0, waited
        assert server.stats.token_requests == 1


async def _stall(lock: object, key: str) -> None:
    await asyncio.sleep(3600)  # the lease is never renewed: a stalled worker


async def test_a_stale_holders_save_is_refused_and_the_newer_grant_kept(
    store: RedisTokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stalled = RedisTokenStore(store._redis, prefix=store.prefix, lock_lease=0.3)
    monkeypatch.setattr(stalled, "_renew", _stall)
    newer = StoredCredential(refresh_token="rt-newer", access_token="at-newer")
    async with stalled.lock("k"):
        await stalled.save("k", StoredCredential(refresh_token="rt-1"))  # in time: fine
        await asyncio.sleep(0.6)  # the lease lapses during the stall
        async with store.lock("k"):  # the next holder takes the lock, saves the newer grant
            await store.save("k", newer)
        with pytest.raises(LockLostError, match="lapsed") as info:
            await stalled.save("k", StoredCredential(refresh_token="rt-stale"))
        assert "rt-stale" not in str(info.value)
        with pytest.raises(LockLostError):
            await stalled.delete("k")
    assert await store.load("k") == newer
    fence = await store._redis.get(store._fence_key("k"))
    assert fence is not None and int(fence) == 2  # one token per lock grant
    # Outside any lock a save is a plain write (e.g. `mailoauth login`).
    await stalled.save("k", StoredCredential(refresh_token="rt-login"))
    loaded = await store.load("k")
    assert loaded is not None and loaded.refresh_token == "rt-login"


async def test_a_provider_whose_lock_lapsed_raises_and_keeps_nothing_stale(
    store: RedisTokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    stalled = RedisTokenStore(store._redis, prefix=store.prefix, lock_lease=0.3)
    monkeypatch.setattr(stalled, "_renew", _stall)
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.add_client("cid", SECRET)
        rt0 = server.issue_refresh_token("stall@example.test")
        server.script(ScriptedResponse(status=0, delay=0.8))  # a refresh slower than the lease
        async with provider(server, rt0, stalled) as slow:
            refresh = asyncio.ensure_future(slow.get_access_token())
            await asyncio.sleep(0.5)
            async with store.lock("fleet-key"):  # meanwhile another worker holds the lock
                await store.save("fleet-key", StoredCredential(refresh_token="rt-other"))
            with pytest.raises(LockLostError):
                await refresh
        stored = await store.load("fleet-key")
        assert stored is not None and stored.refresh_token == "rt-other"


async def test_300_concurrent_locks_and_loads_queue_on_a_small_pool(redis_url: str) -> None:
    """A store made from a URL has a blocking pool: 300 first refreshes at once (lock,
    load, save) wait for one of its 4 connections instead of failing, and Redis never
    sees more than 4 connections from it."""
    import redis.asyncio

    prefix = f"t{os.urandom(4).hex()}:"
    store = RedisTokenStore(redis_url, prefix=prefix, max_connections=4, lock_timeout=60.0)
    observer = redis.asyncio.Redis.from_url(redis_url)
    try:
        baseline = int((await observer.info("clients"))["connected_clients"])
        most = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal most
            while not done.is_set():
                clients = int((await observer.info("clients"))["connected_clients"])
                most = max(most, clients - baseline)
                await asyncio.sleep(0.01)

        async def first_refresh(i: int) -> StoredCredential | None:
            key = f"k{i % 100}"  # three callers per credential: they queue on its lock
            async with store.lock(key):
                found = await store.load(key)
                if found is None:
                    await store.save(key, StoredCredential(refresh_token=f"rt-{key}"))
            return await store.load(key)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            async with asyncio.timeout(120):
                loaded = await asyncio.gather(*(first_refresh(i) for i in range(300)))
        finally:
            done.set()
            await watcher
        assert [c.refresh_token if c else None for c in loaded] == [
            f"rt-k{i % 100}" for i in range(300)
        ]
        assert 1 <= most <= 4
    finally:
        await observer.aclose()
        await store.aclose()
