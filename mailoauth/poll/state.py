"""Where the poller keeps how far it has seen each mailbox, and the resume policy.

A state is an :class:`ImapState` (UIDVALIDITY and the highest UID handled) or a
:class:`Pop3State` (the UIDLs handled that are still on the server). Stores map a
:attr:`Mailbox.key <mailoauth.poll.Mailbox.key>` to a state:
:class:`MemoryPollStateStore` for one process's lifetime, :class:`FilePollStateStore`
to survive restarts.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import anyio.to_thread

from mailoauth._core.files import write_atomically
from mailoauth.errors import ConfigurationError

__all__ = [
    "FilePollStateStore",
    "ImapState",
    "MemoryPollStateStore",
    "PollState",
    "PollStateStore",
    "Pop3State",
    "StartPolicy",
    "imap_resume_point",
    "state_from_json",
    "state_to_json",
]

StartPolicy = Literal["new", "all"]
"""For a mailbox with no saved state: ``"new"`` reports only mail that arrives from
now on; ``"all"`` reports every message already there too."""


@dataclass(frozen=True)
class ImapState:
    """An IMAP folder handled up to ``uid`` within ``uidvalidity``."""

    uidvalidity: int
    uid: int

    def advance(self, uidvalidity: int, uid: int) -> ImapState:
        """The state after handling ``uid``: UIDs only grow within one UIDVALIDITY."""
        if uidvalidity == self.uidvalidity:
            return ImapState(uidvalidity, max(self.uid, uid))
        return ImapState(uidvalidity, uid)


@dataclass(frozen=True)
class Pop3State:
    """The UIDLs of a POP3 maildrop already handled (pruned to those still there)."""

    uidls: frozenset[str]


PollState = ImapState | Pop3State


def imap_resume_point(
    saved: ImapState | None, uidvalidity: int, top_uid: int, start: StartPolicy
) -> int:
    """The UID after which messages count as new, for a folder just selected.

    ``top_uid`` is the highest UID in the folder now (UIDNEXT - 1). With no saved state
    the ``start`` policy decides (``"new"``: ``top_uid``; ``"all"``: 0). When the
    UIDVALIDITY differs from the saved one the folder was rebuilt and its old UIDs mean
    nothing, so every message in it is reported (0): this may repeat messages, but it
    never misses one, whereas starting from UIDNEXT would miss mail that arrived while
    the poller was stopped.
    """
    if saved is None:
        return top_uid if start == "new" else 0
    if saved.uidvalidity != uidvalidity:
        return 0
    return saved.uid


def state_to_json(state: PollState) -> dict[str, Any]:
    if isinstance(state, ImapState):
        return {"imap": {"uidvalidity": state.uidvalidity, "uid": state.uid}}
    return {"pop3": {"uidls": sorted(state.uidls)}}


def state_from_json(data: Mapping[str, Any]) -> PollState | None:
    """Parse :func:`state_to_json` output; anything malformed reads as None (no state)."""
    imap, pop3 = data.get("imap"), data.get("pop3")
    if isinstance(imap, dict):
        uv, uid = imap.get("uidvalidity"), imap.get("uid")
        if isinstance(uv, int) and isinstance(uid, int) and uid >= 0:
            return ImapState(uv, uid)
    if isinstance(pop3, dict) and isinstance(pop3.get("uidls"), list):
        return Pop3State(frozenset(u for u in pop3["uidls"] if isinstance(u, str)))
    return None


@runtime_checkable
class PollStateStore(Protocol):
    """Keeps poll states by mailbox key. Implement these three for a custom store."""

    async def load(self, key: str) -> PollState | None: ...

    async def save(self, key: str, state: PollState) -> None: ...

    async def delete(self, key: str) -> None: ...


class MemoryPollStateStore:
    """States in this process's memory: resumes across pollers, not across restarts."""

    def __init__(self) -> None:
        self._data: dict[str, PollState] = {}

    async def load(self, key: str) -> PollState | None:
        return self._data.get(key)

    async def save(self, key: str, state: PollState) -> None:
        self._data[key] = state

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def __repr__(self) -> str:
        return f"MemoryPollStateStore(<{len(self._data)} mailboxes>)"


class FilePollStateStore:
    """States in a JSON file, for one poller process at a time.

    Read once, then kept in memory; every save rewrites the file atomically (temporary
    file in the same directory with mode 0600, fsync, ``os.replace``, fsync of the
    directory), so a crash leaves either the old or the new file, never half of one.
    Blocking file work runs in a worker thread. Raises
    :class:`~mailoauth.errors.ConfigurationError` when the file is not a poll state
    file, and ``OSError`` when it cannot be read or written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._states: dict[str, PollState] | None = None
        self._lock = asyncio.Lock()

    async def load(self, key: str) -> PollState | None:
        async with self._lock:
            return (await self._loaded()).get(key)

    async def save(self, key: str, state: PollState) -> None:
        async with self._lock:
            states = await self._loaded()
            states[key] = state
            await anyio.to_thread.run_sync(self._write, _encode(states))

    async def delete(self, key: str) -> None:
        async with self._lock:
            states = await self._loaded()
            if states.pop(key, None) is not None:
                await anyio.to_thread.run_sync(self._write, _encode(states))

    async def _loaded(self) -> dict[str, PollState]:
        if self._states is None:
            self._states = await anyio.to_thread.run_sync(self._read)
        return self._states

    def _read(self) -> dict[str, PollState]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"poll state file {str(self.path)!r} is not valid JSON; fix or delete it"
            ) from exc
        entries = doc.get("mailboxes") if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            raise ConfigurationError(
                f"{str(self.path)!r} is not a mailoauth poll state file (no 'mailboxes' "
                "object); give FilePollStateStore a file of its own"
            )
        states = {}
        for key, entry in entries.items():
            state = state_from_json(entry) if isinstance(entry, dict) else None
            if state is not None:
                states[key] = state
        return states

    def _write(self, data: bytes) -> None:
        write_atomically(self.path, data)

    def __repr__(self) -> str:
        return f"FilePollStateStore({str(self.path)!r})"


def _encode(states: Mapping[str, PollState]) -> bytes:
    doc = {"version": 1, "mailboxes": {k: state_to_json(v) for k, v in states.items()}}
    return json.dumps(doc, indent=1, sort_keys=True).encode()
