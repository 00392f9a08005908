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
from typing import Any, Final, Literal, Protocol, runtime_checkable

import anyio.to_thread

from mailoauth._util.files import write_atomically
from mailoauth._util.jsonfile import json_object_member, read_json_file
from mailoauth.errors import ConfigurationError

__all__ = [
    "MAX_UID",
    "MAX_UIDL_LENGTH",
    "STATE_FILE_VERSION",
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


#: The format :func:`state_to_json` writes into a state file's ``"version"``.
STATE_FILE_VERSION: Final = 1
#: RFC 3501 §2.3.1.1: UIDs and UIDVALIDITY are 32-bit unsigned (nz-number, 1 ..
#: 4294967295); a saved ``uid`` is 0 before the first message is handled.
MAX_UID: Final = 4294967295
#: RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21..0x7E.
MAX_UIDL_LENGTH: Final = 70
_STATE_SHAPES: Final = {"imap": {"uidvalidity", "uid"}, "pop3": {"uidls"}}


def _is_uint32(value: object, minimum: int) -> bool:
    # bool is an int subclass: true/false in the file is as wrong as "3".
    return type(value) is int and minimum <= value <= MAX_UID


def _describe(value: object) -> str:
    return f"{json.dumps(value)[:60]} (a JSON {_JSON_TYPES.get(type(value), 'value')})"


_JSON_TYPES: Final[dict[type, str]] = {
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


def state_from_json(data: Mapping[str, Any]) -> PollState:
    """Parse :func:`state_to_json` output, strictly.

    Raises :class:`~mailoauth.errors.ConfigurationError` saying what is wrong for
    anything else: an unknown or missing kind, an extra member, a UID or UIDVALIDITY
    that is not an integer in range (``"uid": "3"`` is a string), a UIDL that is not
    1-70 printable characters. A malformed entry must not read as "no state": the
    poller would then start the mailbox afresh and skip the mail that arrived while it
    was down.
    """
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"the entry must be a JSON object, not {_describe(data)}")
    kinds = sorted(set(data) & set(_STATE_SHAPES))
    if len(kinds) != 1 or len(data) != 1:
        raise ConfigurationError(
            f"the entry must have exactly one member, 'imap' or 'pop3'; it has "
            f"{sorted(map(str, data)) or 'none'}"
        )
    kind = kinds[0]
    body = data[kind]
    if not isinstance(body, Mapping) or set(body) != _STATE_SHAPES[kind]:
        members = sorted(map(str, body)) if isinstance(body, Mapping) else _describe(body)
        raise ConfigurationError(
            f"'{kind}' must be an object with exactly {sorted(_STATE_SHAPES[kind])}; it is "
            f"{members}"
        )
    if kind == "imap":
        uidvalidity, uid = body["uidvalidity"], body["uid"]
        if not _is_uint32(uidvalidity, 1):
            raise ConfigurationError(
                f"'uidvalidity' must be an integer from 1 to {MAX_UID}, not "
                f"{_describe(uidvalidity)}"
            )
        if not _is_uint32(uid, 0):
            raise ConfigurationError(
                f"'uid' must be an integer from 0 to {MAX_UID}, not {_describe(uid)}"
            )
        return ImapState(uidvalidity, uid)
    uidls = body["uidls"]
    if not isinstance(uidls, list):
        raise ConfigurationError(f"'uidls' must be an array of strings, not {_describe(uidls)}")
    for uidl in uidls:
        if not (
            isinstance(uidl, str)
            and 1 <= len(uidl) <= MAX_UIDL_LENGTH
            and all("\x21" <= c <= "\x7e" for c in uidl)
        ):
            raise ConfigurationError(
                f"each of 'uidls' must be a string of 1 to {MAX_UIDL_LENGTH} printable "
                f"ASCII characters (RFC 1939 §7), not {_describe(uidl)}"
            )
    return Pop3State(frozenset(uidls))


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
    file, has another version, or holds an entry :func:`state_from_json` refuses (naming
    the file, the entry and what to fix: nothing is loaded then), and ``OSError`` when it
    cannot be read or written.
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
        doc = read_json_file(self.path, "poll state file")
        if doc is None:
            return {}
        entries = json_object_member(doc, "mailboxes")
        if not isinstance(doc, dict) or entries is None:
            raise ConfigurationError(
                f"{str(self.path)!r} is not a mailoauth poll state file (no 'mailboxes' "
                "object); give FilePollStateStore a file of its own"
            )
        version = doc.get("version")
        if version != STATE_FILE_VERSION:
            raise ConfigurationError(
                f"poll state file {str(self.path)!r} has version {json.dumps(version)}; this "
                f"mailoauth reads version {STATE_FILE_VERSION} only (a newer mailoauth wrote "
                f"it, or it was edited): use that version, or restore a backup"
            )
        states = {}
        for key, entry in entries.items():
            try:
                states[key] = state_from_json(entry)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"poll state file {str(self.path)!r}, entry {key!r}: {exc}. Nothing was "
                    f"loaded, so that no mailbox restarts from scratch and skips the mail "
                    f"that arrived while the poller was down: correct the entry (e.g. "
                    f'"uid": 3, not "3"), or delete just that entry to restart that mailbox '
                    f"with its start policy"
                ) from None
        return states

    def _write(self, data: bytes) -> None:
        write_atomically(self.path, data)

    def __repr__(self) -> str:
        return f"FilePollStateStore({str(self.path)!r})"


def _encode(states: Mapping[str, PollState]) -> bytes:
    doc = {
        "version": STATE_FILE_VERSION,
        "mailboxes": {k: state_to_json(v) for k, v in states.items()},
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()
