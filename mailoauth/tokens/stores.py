"""Token stores: where providers keep the newest refresh token and access token.

A store maps a credential key (token URL, client id and user; never a secret) to a
:class:`StoredCredential`. :class:`MemoryTokenStore` lives in the process;
:class:`FileTokenStore` is a JSON file (mode 0600, replaced atomically) with
inter-process locks, so that processes on one machine sharing the file never refresh
the same credential at once, which matters when the server rotates refresh tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from mailoauth._util.files import make_private_dirs, write_atomically
from mailoauth._util.jsonfile import json_object_member, read_json_file
from mailoauth.errors import ConfigurationError, TransientTokenError
from mailoauth.tokens.access_token import AccessToken

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: in-process locking only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FILE_LOCK_TIMEOUT",
    "FileTokenStore",
    "LockingTokenStore",
    "MemoryTokenStore",
    "StoredCredential",
    "TokenStore",
]

FILE_LOCK_TIMEOUT = 60.0
"""Seconds to wait for another process's lock on a :class:`FileTokenStore`."""

_LOCK_POLL_MAX = 0.05


@dataclass(frozen=True)
class StoredCredential:
    """What a store keeps for one credential. The repr never shows a secret.

    ``scope`` is the scope granted (the token response's ``scope``). ``origin`` names,
    by a digest, the refresh token this credential's chain of rotated refresh tokens
    started from: a provider built with that token knows from it that its own token
    was rotated away and must never be sent again.
    """

    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    expires_at: dt.datetime | None = None
    issued_at: dt.datetime | None = None
    scope: str | None = None
    origin: str | None = None

    @classmethod
    def from_token(
        cls, token: AccessToken, *, refresh_token: str | None = None, origin: str | None = None
    ) -> StoredCredential:
        """The credential for ``token``, keeping ``refresh_token`` when it has none."""
        return cls(
            refresh_token=token.refresh_token or refresh_token,
            access_token=token.value,
            expires_at=token.expires_at,
            issued_at=token.issued_at,
            scope=token.scope,
            origin=origin,
        )

    def to_access_token(self) -> AccessToken | None:
        """The stored access token, or None when there is none."""
        if not self.access_token:
            return None
        return AccessToken(
            self.access_token,
            expires_at=self.expires_at,
            scope=self.scope,
            refresh_token=self.refresh_token,
            issued_at=self.issued_at,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "refresh_token": self.refresh_token,
            "access_token": self.access_token,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "issued_at": self.issued_at.isoformat() if self.issued_at else None,
            "scope": self.scope,
            **({"origin": self.origin} if self.origin else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredCredential:
        """Parse :meth:`to_json` output; unknown or malformed fields read as None."""
        return cls(
            refresh_token=_str_or_none(data.get("refresh_token")),
            access_token=_str_or_none(data.get("access_token")),
            expires_at=_time_or_none(data.get("expires_at")),
            issued_at=_time_or_none(data.get("issued_at")),
            scope=_str_or_none(data.get("scope")),
            origin=_str_or_none(data.get("origin")),
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _time_or_none(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


@runtime_checkable
class TokenStore(Protocol):
    """Keeps credentials by key. Implement these three for a custom store."""

    async def load(self, key: str) -> StoredCredential | None: ...

    async def save(self, key: str, credential: StoredCredential) -> None: ...

    async def delete(self, key: str) -> None: ...


@runtime_checkable
class LockingTokenStore(TokenStore, Protocol):
    """A store that can lock a key, so that only one holder refreshes it at a time.

    Providers hold ``lock(key)`` around "load the newest, refresh if still needed, save".
    """

    def lock(self, key: str) -> AbstractAsyncContextManager[None]: ...


class MemoryTokenStore:
    """A store in this process's memory; lets providers in one process share tokens."""

    def __init__(self) -> None:
        self._data: dict[str, StoredCredential] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self, key: str) -> StoredCredential | None:
        return self._data.get(key)

    async def save(self, key: str, credential: StoredCredential) -> None:
        self._data[key] = credential

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._locks.setdefault(key, asyncio.Lock())

    def __repr__(self) -> str:
        return f"MemoryTokenStore(<{len(self._data)} credentials>)"


class FileTokenStore:
    """A JSON file of credentials, shared safely by the processes of one machine.

    The file is created with mode 0600 and every write replaces it atomically (temporary
    file in the same directory, fsync, ``os.replace``, fsync of the directory). Writers
    hold an ``flock`` on ``<path>.lock``; :meth:`lock` holds one per key in
    ``<path>.locks/``, so different credentials refresh in parallel. Blocking file work
    runs in a worker thread. Raises :class:`~mailoauth.errors.ConfigurationError` when
    the file is not a token store, and :class:`~mailoauth.errors.TransientTokenError`
    when a lock is not granted within ``lock_timeout`` seconds.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, lock_timeout: float = FILE_LOCK_TIMEOUT
    ) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._local: dict[Path, asyncio.Lock] = {}

    async def load(self, key: str) -> StoredCredential | None:
        data = await anyio.to_thread.run_sync(self._read)
        entry = data.get(key)
        return StoredCredential.from_json(entry) if isinstance(entry, dict) else None

    async def save(self, key: str, credential: StoredCredential) -> None:
        async with self._flock(Path(f"{self.path}.lock")):
            await anyio.to_thread.run_sync(self._update, key, credential.to_json())

    async def delete(self, key: str) -> None:
        async with self._flock(Path(f"{self.path}.lock")):
            await anyio.to_thread.run_sync(self._update, key, None)

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self._flock(Path(f"{self.path}.locks") / f"{digest}.lock")

    # -- blocking helpers (worker thread) --------------------------------------------

    def _read(self) -> dict[str, Any]:
        doc = read_json_file(self.path, "token store")
        if doc is None:
            return {}
        creds = json_object_member(doc, "credentials")
        if creds is None:
            raise ConfigurationError(
                f"token store {str(self.path)!r} is not a mailoauth token store "
                "(no 'credentials' object); point FileTokenStore at a file of its own"
            )
        return creds

    def _update(self, key: str, entry: dict[str, Any] | None) -> None:
        creds = self._read()
        if entry is None:
            creds.pop(key, None)
        else:
            creds[key] = entry
        data = json.dumps({"version": 1, "credentials": creds}, indent=2).encode()
        write_atomically(self.path, data)

    # -- locking ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _flock(self, lock_path: Path) -> AsyncIterator[None]:
        # One task per process polls the file lock; others queue on an asyncio lock.
        local = self._local.setdefault(lock_path, asyncio.Lock())
        async with local:
            fd = await anyio.to_thread.run_sync(_open_lock_file, lock_path)
            try:
                await self._acquire(fd, lock_path)
                try:
                    yield
                finally:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    async def _acquire(self, fd: int, lock_path: Path) -> None:
        if fcntl is None:  # pragma: no cover
            return
        # Poll a non-blocking flock rather than block a thread: waiting stays cancellable.
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                raise TransientTokenError(
                    f"another process held the token store lock {str(lock_path)!r} for over "
                    f"{self.lock_timeout:g} s"
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, _LOCK_POLL_MAX)

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"


def _open_lock_file(lock_path: Path) -> int:
    make_private_dirs(lock_path.parent)
    return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
