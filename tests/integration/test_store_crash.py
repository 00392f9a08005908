"""FileTokenStore survives ``kill -9`` in the middle of saving a rotated refresh token.

A child process saves rotated refresh tokens in a tight loop, reporting each save it
completed; it is killed with SIGKILL at random moments. After every kill, loading gives
the last credential reported saved or the one being saved then: never none, never a
corrupt file. Then the next child carries on from what was loaded.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailoauth.tokens import FileTokenStore, StoredCredential

pytestmark = pytest.mark.asyncio

ROOT = str(Path(__file__).resolve().parents[2])
KILLS = 12

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from mailoauth.tokens import FileTokenStore, StoredCredential

    async def main():
        store = FileTokenStore(sys.argv[1])
        n = int(sys.argv[2])
        print("start", flush=True)
        while True:
            n += 1
            cred = StoredCredential(refresh_token=f"rt-{n}", access_token=f"at-{n}")
            await store.save("key", cred)
            await store.save("other", StoredCredential(refresh_token=f"o-{n}"))
            print(n, flush=True)

    asyncio.run(main())
    """
)


async def test_kill_9_during_save_leaves_the_old_or_the_new_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    await store.save("key", StoredCredential(refresh_token="rt-0", access_token="at-0"))
    rng = random.Random(1234)
    last = 0
    saves_seen = 0
    for _ in range(KILLS):
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(last),
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"start"
        await asyncio.sleep(rng.uniform(0.02, 0.4))
        child.send_signal(signal.SIGKILL)
        out = await asyncio.wait_for(child.stdout.read(), 30)
        await child.wait()
        reported = [int(x) for x in out.split()]
        done = reported[-1] if reported else last
        saves_seen += len(reported)
        loaded = await store.load("key")  # must not raise: the file is whole
        assert loaded is not None and loaded.refresh_token is not None
        n = int(loaded.refresh_token.removeprefix("rt-"))
        assert n in (done, done + 1), (n, done)  # the old or the new, nothing else
        assert loaded.access_token == f"at-{n}"
        last = n
    assert saves_seen > KILLS  # the kills did land among saves
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(leftovers) <= KILLS  # at most one abandoned temporary file per kill
