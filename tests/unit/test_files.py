"""Private files and the directories above them, whatever the umask (_util/files.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailoauth._util.files import PRIVATE_DIR_MODE, make_private_dirs, write_atomically
from mailoauth.poll import FilePollStateStore, ImapState
from mailoauth.tokens import FileTokenStore


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_mode_is_owner_only() -> None:
    assert PRIVATE_DIR_MODE == 0o700


@pytest.mark.usefixtures("umask_0")
def test_write_atomically_creates_missing_parents_0700_under_umask_0(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c" / "secret.json"
    write_atomically(target, b"{}")
    for directory in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode(directory) == 0o700, directory
    assert mode(target) == 0o600


@pytest.mark.usefixtures("umask_0")
def test_existing_directories_are_left_as_they_are(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    make_private_dirs(shared / "mine")
    assert mode(shared) == 0o755
    assert mode(shared / "mine") == 0o700
    make_private_dirs(shared / "mine")  # idempotent


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        make_private_dirs(tmp_path / "file")


def test_parents_are_0700_under_a_restrictive_umask_too(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would leave the owner without write/search on mkdir
    try:
        make_private_dirs(tmp_path / "x" / "y")
    finally:
        os.umask(old)
    assert mode(tmp_path / "x") == 0o700
    assert mode(tmp_path / "x" / "y") == 0o700


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_0")
async def test_file_token_store_lock_dir_and_parents_are_0700(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "tokens.json"
    store = FileTokenStore(path)
    async with store.lock("some-key"):
        pass
    locks = Path(f"{path}.locks")
    for directory in (tmp_path / "deep", tmp_path / "deep" / "er", locks):
        assert mode(directory) == 0o700, directory
    assert all(mode(locks / name) == 0o600 for name in os.listdir(locks))


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_0")
async def test_poll_state_parents_are_0700(tmp_path: Path) -> None:
    path = tmp_path / "p" / "q" / "state.json"
    await FilePollStateStore(path).save("k", ImapState(1, 1))
    assert mode(tmp_path / "p") == 0o700
    assert mode(tmp_path / "p" / "q") == 0o700
    assert mode(path) == 0o600
