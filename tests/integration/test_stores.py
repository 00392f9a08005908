"""Token stores: the file format, permissions, atomic writes and inter-process locking."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailoauth.errors import ConfigurationError, TransientTokenError
from mailoauth.testing.oauth_server import FakeOAuthServer, ScriptedResponse
from mailoauth.tokens import (
    FileTokenStore,
    GoogleTokenProvider,
    LockingTokenStore,
    MemoryTokenStore,
    StoredCredential,
    TokenStore,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
CRED = StoredCredential(
    refresh_token="rt-secret",
    access_token="at-secret",
    expires_at=NOW + dt.timedelta(hours=1),
    issued_at=NOW,
    scope="mail",
)


@pytest.mark.asyncio
async def test_memory_store_round_trip() -> None:
    store = MemoryTokenStore()
    assert isinstance(store, LockingTokenStore)
    assert await store.load("k") is None
    await store.save("k", CRED)
    assert await store.load("k") == CRED
    await store.delete("k")
    assert await store.load("k") is None
    async with store.lock("k"):
        pass


@pytest.mark.asyncio
async def test_file_store_round_trip_mode_0600_and_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    assert isinstance(store, TokenStore) and isinstance(store, LockingTokenStore)
    assert await store.load("k") is None
    await store.save("k", CRED)
    await store.save("other", StoredCredential(refresh_token="rt2"))
    assert await FileTokenStore(path).load("k") == CRED
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(f"{path}.lock").st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["tokens.json", "tokens.json.lock"]
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and set(doc["credentials"]) == {"k", "other"}
    await store.delete("k")
    assert await store.load("k") is None and await store.load("other") is not None
    assert "rt-secret" not in repr(CRED) and "at-secret" not in repr(CRED)


@pytest.mark.asyncio
async def test_file_store_keeps_0600_when_replacing_a_wider_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"version": 1, "credentials": {}}')
    os.chmod(path, 0o644)
    await FileTokenStore(path).save("k", CRED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.asyncio
async def test_file_store_refuses_files_that_are_not_stores(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        await FileTokenStore(bad).load("k")
    other = tmp_path / "other.json"
    other.write_text('{"some": "config"}')
    with pytest.raises(ConfigurationError, match="not a mailoauth token store"):
        await FileTokenStore(other).save("k", CRED)
    assert json.loads(other.read_text()) == {"some": "config"}


@pytest.mark.asyncio
async def test_malformed_entries_read_as_empty_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"credentials": {"k": {"refresh_token": 5, "expires_at": "x"}}}))
    cred = await FileTokenStore(path).load("k")
    assert cred == StoredCredential()


@pytest.mark.asyncio
async def test_key_lock_excludes_other_store_objects_until_timeout(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    holder = FileTokenStore(path)
    waiter = FileTokenStore(path, lock_timeout=0.2)
    async with holder.lock("k"):
        with pytest.raises(TransientTokenError, match="held the token store lock"):
            async with waiter.lock("k"):
                pass
        async with waiter.lock("another key"):  # other credentials are not blocked
            pass
    async with waiter.lock("k"):
        pass


@pytest.mark.asyncio
async def test_two_providers_in_one_process_share_a_file_store(tmp_path: Path) -> None:
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.script(ScriptedResponse(status=0, delay=0.2))
        rt = server.issue_refresh_token("u")
        providers = [
            GoogleTokenProvider(
                "cid", "s", rt, token_url=server.token_url, store=FileTokenStore(tmp_path / "t")
            )
            for _ in range(2)
        ]
        tokens = await asyncio.gather(*(p.get_access_token() for p in providers * 20))
        for p in providers:
            await p.aclose()
    assert server.stats.token_requests == 1
    assert len({t.value for t in tokens}) == 1


ROOT = str(Path(__file__).resolve().parents[2])
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from mailoauth.tokens import FileTokenStore, GoogleTokenProvider

    async def main() -> None:
        url, path, refresh_token = sys.argv[1:4]
        provider = GoogleTokenProvider(
            "cid", "secret", refresh_token, token_url=url, store=FileTokenStore(path)
        )
        async with provider:
            token = await provider.get_access_token()
        print(token.value)

    asyncio.run(main())
    """
)


@pytest.mark.asyncio
async def test_two_processes_with_an_expired_token_make_one_request(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.add_client("cid", "secret")
        rt0 = server.issue_refresh_token("shared@example.test")
        key = GoogleTokenProvider("cid", "secret", rt0, token_url=server.token_url).store_key
        expired = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
        await FileTokenStore(path).save(
            key,
            StoredCredential(
                refresh_token=rt0, access_token="at-expired", expires_at=expired, issued_at=expired
            ),
        )
        # Hold the first refresh long enough for the other process to reach the lock.
        server.script(ScriptedResponse(status=0, delay=0.5))
        env = {**os.environ, "PYTHONPATH": ROOT}
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                server.token_url,
                str(path),
                rt0,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for _ in range(2)
        ]
        outputs = [await asyncio.wait_for(child.communicate(), 30) for child in children]
        for child, (_, err) in zip(children, outputs, strict=True):
            assert child.returncode == 0, err.decode()
        values = {out.decode().strip() for out, _ in outputs}
        assert server.stats.token_requests == 1
        assert len(values) == 1
        (value,) = values
        assert server.is_active(value)
        stored = await FileTokenStore(path).load(key)
        assert stored is not None and stored.access_token == value
        assert stored.refresh_token not in (None, rt0)  # the rotated one was kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
