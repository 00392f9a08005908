"""Poll states, their stores and the resume policy; the Mailbox spec; Poller arguments."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

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
from mailoauth.poll.state import (
    MAX_UID,
    MAX_UIDL_LENGTH,
    STATE_FILE_VERSION,
    state_from_json,
    state_to_json,
)

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


MALFORMED: list[tuple[object, str]] = [
    ({}, "exactly one member"),
    ({"imap": {"uidvalidity": 1, "uid": 3}, "pop3": {"uidls": []}}, "exactly one member"),
    ({"smtp": {}}, "exactly one member"),
    ({"imap": {"uid": 3}}, "exactly \\['uid', 'uidvalidity'\\]"),
    ({"imap": {"uidvalidity": 1, "uid": 3, "extra": 1}}, "exactly"),
    ({"imap": [1, 3]}, "a JSON array"),
    (
        {"imap": {"uidvalidity": 1, "uid": "3"}},
        "'uid' must be an integer .* \"3\" \\(a JSON string\\)",
    ),
    ({"imap": {"uidvalidity": 1, "uid": -1}}, "'uid' must be an integer from 0"),
    ({"imap": {"uidvalidity": 1, "uid": 3.0}}, "'uid' must be an integer"),
    ({"imap": {"uidvalidity": 1, "uid": True}}, "a JSON boolean"),
    ({"imap": {"uidvalidity": 1, "uid": 2**32}}, "'uid' must be an integer"),
    ({"imap": {"uidvalidity": 0, "uid": 3}}, "'uidvalidity' must be an integer from 1"),
    ({"imap": {"uidvalidity": "7", "uid": 3}}, "'uidvalidity'"),
    ({"imap": {"uidvalidity": None, "uid": 3}}, "a JSON null"),
    ({"pop3": {"uidls": 3}}, "'uidls' must be an array"),
    ({"pop3": {"uidls": ["a", 3]}}, "each of 'uidls'"),
    ({"pop3": {"uidls": [""]}}, "each of 'uidls'"),
    ({"pop3": {"uidls": ["a b"]}}, "each of 'uidls'"),
    ({"pop3": {"uidls": ["x" * (MAX_UIDL_LENGTH + 1)]}}, "each of 'uidls'"),
    ([], "must be a JSON object"),
]


@pytest.mark.parametrize(("data", "why"), MALFORMED)
def test_malformed_state_is_refused_saying_why(data: Any, why: str) -> None:
    # Reading it as "no state" would restart the mailbox and skip what arrived meanwhile.
    with pytest.raises(ConfigurationError, match=why):
        state_from_json(data)


def test_limits_are_accepted_at_their_edges() -> None:
    assert state_from_json({"imap": {"uidvalidity": MAX_UID, "uid": MAX_UID}}) == ImapState(
        MAX_UID, MAX_UID
    )
    assert state_from_json({"imap": {"uidvalidity": 1, "uid": 0}}) == ImapState(1, 0)
    edge = "~" * MAX_UIDL_LENGTH
    assert state_from_json({"pop3": {"uidls": [edge, "!"]}}) == Pop3State(frozenset({edge, "!"}))


@pytest.mark.asyncio
@pytest.mark.parametrize(("entry", "why"), MALFORMED[:-1])
async def test_file_store_names_the_file_the_entry_and_the_fix(
    tmp_path: Path, entry: Any, why: str
) -> None:
    path = tmp_path / "poll-state.json"
    good = state_to_json(ImapState(7, 40))
    doc = {"version": STATE_FILE_VERSION, "mailboxes": {"good": good, "imap://u@h/INBOX": entry}}
    path.write_text(json.dumps(doc))
    store = FilePollStateStore(path)
    with pytest.raises(ConfigurationError) as info:
        await store.load("good")  # nothing loads: not even the good entry
    message = str(info.value)
    assert str(path) in message
    assert "entry 'imap://u@h/INBOX'" in message
    assert re.search(why, message)
    assert "correct the entry" in message
    assert "delete just that entry" in message
    assert path.read_text() == json.dumps(doc)  # the file is left as it was


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [None, 2, "1"])
async def test_file_store_refuses_another_version(tmp_path: Path, version: object) -> None:
    path = tmp_path / "poll-state.json"
    doc: dict[str, object] = {"mailboxes": {}}
    if version is not None:
        doc["version"] = version
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError, match=f"{re.escape(str(path))}.* version"):
        await FilePollStateStore(path).load("k")


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
