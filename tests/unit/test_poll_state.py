"""Poll states, their stores and the resume policy; the Mailbox spec; Poller arguments."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mailoauth.errors import ConfigurationError
from mailoauth.poll import (
    FilePollStateStore,
    ImapState,
    Mailbox,
    MemoryPollStateStore,
    NewMessage,
    Poller,
    PollStateStore,
    Pop3State,
    imap_resume_point,
)
from mailoauth.poll.state import state_from_json, state_to_json

# -- the resume policy -----------------------------------------------------------------


def test_first_run_new_starts_at_the_top() -> None:
    assert imap_resume_point(None, 7, 120, "new") == 120


def test_first_run_all_starts_at_zero() -> None:
    assert imap_resume_point(None, 7, 120, "all") == 0


@pytest.mark.parametrize("start", ["new", "all"])
def test_same_uidvalidity_resumes_where_it_was(start: str) -> None:
    saved = ImapState(uidvalidity=7, uid=100)
    assert imap_resume_point(saved, 7, 120, start) == 100  # type: ignore[arg-type]


@pytest.mark.parametrize("start", ["new", "all"])
def test_changed_uidvalidity_reports_everything(start: str) -> None:
    # The folder was rebuilt: starting at its top would miss mail that arrived while
    # stopped, so every message in it is reported again.
    saved = ImapState(uidvalidity=7, uid=100)
    assert imap_resume_point(saved, 8, 3, start) == 0  # type: ignore[arg-type]


def test_imap_state_only_moves_up_within_one_uidvalidity() -> None:
    state = ImapState(7, 10)
    assert state.advance(7, 12) == ImapState(7, 12)
    assert state.advance(7, 5) == ImapState(7, 10)
    assert state.advance(9, 2) == ImapState(9, 2)


# -- JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [ImapState(1, 0), ImapState(4294967295, 77), Pop3State(frozenset({"a", "b"}))]
)
def test_json_roundtrip(state: ImapState | Pop3State) -> None:
    assert state_from_json(json.loads(json.dumps(state_to_json(state)))) == state


@pytest.mark.parametrize(
    "data",
    [{}, {"imap": {"uid": 3}}, {"imap": {"uidvalidity": 1, "uid": -1}}, {"pop3": {"uidls": 3}}],
)
def test_malformed_json_reads_as_no_state(data: dict[str, object]) -> None:
    assert state_from_json(data) is None


# -- stores ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_store_roundtrip(kind: str, tmp_path: Path) -> None:
    store: PollStateStore = (
        MemoryPollStateStore() if kind == "memory" else FilePollStateStore(tmp_path / "s.json")
    )
    assert isinstance(store, PollStateStore)
    assert await store.load("k") is None
    await store.save("k", ImapState(3, 9))
    await store.save("p", Pop3State(frozenset({"x"})))
    assert await store.load("k") == ImapState(3, 9)
    assert await store.load("p") == Pop3State(frozenset({"x"}))
    await store.delete("k")
    await store.delete("missing")
    assert await store.load("k") is None


@pytest.mark.asyncio
async def test_file_store_survives_a_restart_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    await FilePollStateStore(path).save("imap://u@h:993/INBOX", ImapState(5, 42))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await FilePollStateStore(path).load("imap://u@h:993/INBOX") == ImapState(5, 42)
    assert sorted(os.listdir(path.parent)) == ["state.json"]  # no temporary file left


@pytest.mark.asyncio
async def test_file_store_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    store = FilePollStateStore(path)
    await store.save("k", ImapState(1, 1))
    before = path.read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        await store.save("k", ImapState(1, 2))
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


@pytest.mark.asyncio
@pytest.mark.parametrize("content", [b"{not json", b'{"credentials": {}}', b"[]"])
async def test_file_store_refuses_a_foreign_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=r"state\.json"):
        await FilePollStateStore(path).load("k")


# -- the Mailbox spec and Poller arguments ---------------------------------------------


def test_mailbox_key_default_and_repr_without_token() -> None:
    box = Mailbox("imap", "imap.gmail.com", 993, "me@gmail.com", "ya29.secret", folder="Work")
    assert box.key == "imap://me@gmail.com@imap.gmail.com:993/Work"
    assert "secret" not in repr(box)
    assert Mailbox("pop3", "h", 995, "u", "t", key="mine").key == "mine"


def test_mailbox_rejects_bad_specs() -> None:
    with pytest.raises(ConfigurationError, match="one maildrop"):
        Mailbox("pop3", "h", 995, "u", "t", folder="Sent")
    with pytest.raises(ConfigurationError, match="protocol"):
        Mailbox("smtp", "h", 25, "u", "t")  # type: ignore[arg-type]


def test_new_message_parses_its_bytes() -> None:
    event = NewMessage("k", b"Subject: hi\r\n\r\nbody\r\n", uid=3, uidvalidity=1)
    assert event.message()["Subject"] == "hi"
    assert "body" not in repr(event)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_connections": 0},
        {"max_per_host": 0},
        {"max_per_account": 0},
        {"interval": 0},
        {"interval": float("inf")},
        {"idle_timeout": -1},
        {"backoff_base": 10, "backoff_max": 1},
        {"start": "old"},
    ],
)
def test_poller_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Poller(**kwargs)  # type: ignore[arg-type]


def test_poller_rejects_two_mailboxes_with_one_key() -> None:
    box = Mailbox("imap", "h", 993, "u", "t")
    with pytest.raises(ConfigurationError, match="watched already"):
        Poller([box, Mailbox("imap", "h", 993, "u", "other token")])


@pytest.mark.asyncio
async def test_stopped_poller_ends_its_iteration() -> None:
    async with Poller() as poller:
        poller.stop()
        assert [event async for event in poller] == []
    with pytest.raises(RuntimeError, match="runs once"):
        async with poller:
            pass
