"""KeyringTokenStore: credentials in the operating system's keyring (``mailoauth[keyring]``).

Each credential is one keyring entry: service ``service`` (``"mailoauth"`` by default),
user name the store key, password the credential as the JSON object of
docs/token-store-format.md. The keyring is whatever the `keyring
<https://pypi.org/project/keyring/>`_ package picks (macOS Keychain, Windows Credential
Locker, the Secret Service on Linux desktops) or the backend passed as ``backend=``.

The keyring API is blocking, so every call runs in a worker thread. :meth:`lock` is an
:class:`asyncio.Lock` per key: single flight within this process. The keyring gives no
lock across processes; for several processes sharing a credential, use
:class:`~mailoauth.tokens.FileTokenStore` or :class:`~mailoauth.tokens.RedisTokenStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from mailoauth.errors import ConfigurationError, TransientTokenError
from mailoauth.tokens.stores import StoredCredential

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = ["DEFAULT_KEYRING_SERVICE", "KeyringTokenStore"]

DEFAULT_KEYRING_SERVICE: Final = "mailoauth"
"""The keyring service name credentials are saved under unless told otherwise."""


def _import_keyring() -> Any:
    try:
        import keyring
        import keyring.errors
    except ImportError as exc:
        raise ConfigurationError(
            "KeyringTokenStore needs the keyring package: pip install 'mailoauth[keyring]'"
        ) from exc
    return keyring


class KeyringTokenStore:
    """A :class:`~mailoauth.tokens.LockingTokenStore` in the OS keyring.

    ``backend`` is a keyring backend to use instead of the process-wide one
    (``keyring.get_keyring()``). Raises ConfigurationError without the keyring package.
    :meth:`load`, :meth:`save` and :meth:`delete` raise TransientTokenError when the
    keyring refuses (locked, no backend available: ``keyring.errors.KeyringError``),
    naming the key, never the secret.
    """

    def __init__(
        self, *, service: str = DEFAULT_KEYRING_SERVICE, backend: KeyringBackend | None = None
    ) -> None:
        self._keyring = _import_keyring()
        if not service:
            raise ConfigurationError("KeyringTokenStore needs a non-empty service name")
        self.service = service
        self._backend = backend
        self._locks: dict[str, asyncio.Lock] = {}

    def _ring(self) -> Any:
        return self._backend if self._backend is not None else self._keyring.get_keyring()

    async def _call(self, what: str, key: str, fn: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except self._keyring.errors.KeyringError as exc:
            raise TransientTokenError(
                f"the keyring could not {what} {key!r} (service {self.service!r}): "
                f"{type(exc).__name__}; unlock the keyring or pick a backend "
                "(https://pypi.org/project/keyring/)"
            ) from None

    async def load(self, key: str) -> StoredCredential | None:
        """The credential under ``key``, or None (none saved, or not a JSON object)."""
        raw = await self._call("read", key, self._ring().get_password, self.service, key)
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return StoredCredential.from_json(data) if isinstance(data, dict) else None

    async def save(self, key: str, credential: StoredCredential) -> None:
        """Save ``credential`` under ``key``, replacing what was there."""
        value = json.dumps(credential.to_json(), sort_keys=True)
        await self._call("save", key, self._ring().set_password, self.service, key, value)

    async def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is not there."""
        ring = self._ring()
        errors = self._keyring.errors

        def delete() -> None:
            # not there: fine, the contract is "afterwards it is gone"
            with contextlib.suppress(errors.PasswordDeleteError):
                ring.delete_password(self.service, key)

        await self._call("delete", key, delete)

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Single flight for ``key`` within this process (an asyncio.Lock)."""
        return self._locks.setdefault(key, asyncio.Lock())

    def __repr__(self) -> str:
        return f"KeyringTokenStore(service={self.service!r})"
