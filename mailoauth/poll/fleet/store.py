"""The fleet's poll state in Redis: every write fenced by the mailbox's lease.

:class:`FencedStateStore` is the :class:`~mailoauth.poll.PollStateStore` of a worker's
Poller. It also keeps the *in-flight* events of each mailbox: an event is recorded
before it is yielded (:meth:`FencedStateStore.record`), and the state write of its
acknowledgement clears it in the same Lua script, so whoever takes the mailbox over
knows which events were delivered but not handled (:meth:`FencedStateStore.inflight`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Final

from mailoauth.errors import ConfigurationError, LockLostError
from mailoauth.poll.fleet._redis import (
    RECORD_INFLIGHT,
    SAVE_STATE,
    Keys,
    decode,
    redis_errors,
)
from mailoauth.poll.spec import NewMessage
from mailoauth.poll.state import ImapState, PollState, Pop3State, state_from_json, state_to_json

__all__ = ["FencedStateStore"]

#: How long one Redis call of the store may take before it counts as failed.
CALL_TIMEOUT: Final = 10.0

Owner = Callable[[str], "str | None"]


def _covers(state: PollState, entry: dict[str, Any]) -> bool:
    """Whether ``state`` counts the in-flight ``entry`` as handled."""
    if isinstance(state, ImapState):
        uidvalidity, uid = entry.get("uidvalidity"), entry.get("uid")
        if not isinstance(uid, int):
            return False
        # Another UIDVALIDITY: the folder was rebuilt, that event never comes back.
        return uidvalidity != state.uidvalidity or uid <= state.uid
    return isinstance(state, Pop3State) and entry.get("uidl") in state.uidls


def entry_of(event: NewMessage) -> dict[str, Any]:
    """What the in-flight hash keeps of ``event`` (no content: positions and a time)."""
    entry: dict[str, Any] = {"at": time.time()}
    if event.uidl is not None:
        entry["uidl"] = event.uidl
    else:
        entry["uidvalidity"] = event.uidvalidity
        entry["uid"] = event.uid
    return entry


class FencedStateStore:
    """Poll states under ``{prefix}:state:{key}``, written only by the lease holder.

    ``owner(key)`` gives the owner token of the lease this worker holds on ``key`` (or
    None). :meth:`save` raises :class:`~mailoauth.errors.LockLostError` when the lease
    is not held (or no longer holds that token in Redis: nothing is written), and a
    retryable :class:`~mailoauth.errors.TransportError` when Redis fails.
    """

    def __init__(
        self, redis: Any, keys: Keys, owner: Owner, *, timeout: float = CALL_TIMEOUT
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner
        self.timeout = timeout
        #: key -> dedupe key -> entry, for the events in flight this worker knows of.
        self._inflight: dict[str, dict[str, dict[str, Any]]] = {}

    async def _run(self, what: str, call: Any) -> Any:
        with redis_errors(what):
            async with asyncio.timeout(self.timeout):
                return await call

    def _token(self, key: str, doing: str) -> str:
        token = self.owner(key)
        if token is None:
            raise LockLostError(
                f"refused {doing} for {key}: this worker no longer holds its lease (another "
                "worker reports it now, and redelivers what was not acknowledged)"
            )
        return token

    async def load(self, key: str) -> PollState | None:
        """The saved state of ``key``. Raises ConfigurationError for an entry that is
        not a poll state (a mailbox must not restart from scratch by accident)."""
        raw = await self._run("loading a poll state", self.redis.get(self.keys.state(key)))
        if raw is None:
            return None
        try:
            return state_from_json(json.loads(raw))
        except (ValueError, ConfigurationError) as exc:
            raise ConfigurationError(
                f"the poll state of {key} in Redis ({self.keys.state(key)}) is unusable: "
                f"{exc}; correct or delete it"
            ) from None

    async def save(self, key: str, state: PollState) -> None:
        """Write ``state`` and clear the in-flight events it covers, if the lease holds."""
        token = self._token(key, "a state write")
        known = self._inflight.get(key, {})
        covered = [dk for dk, entry in known.items() if _covers(state, entry)]
        written = await self._run(
            "saving a poll state",
            self.redis.eval(
                SAVE_STATE,
                3,
                self.keys.lease(key),
                self.keys.state(key),
                self.keys.inflight(key),
                token,
                json.dumps(state_to_json(state)),
                *covered,
            ),
        )
        if not written:
            raise LockLostError(
                f"refused a state write for {key}: its lease was granted to another worker "
                "(this one stalled past it). Nothing was written; the new holder redelivers "
                "what was not acknowledged"
            )
        for dk in covered:
            known.pop(dk, None)

    async def delete(self, key: str) -> None:
        """Forget the state and the in-flight events of ``key`` (unfenced: for the
        fleet's administrator, when a mailbox leaves the fleet)."""
        await self._run(
            "deleting a poll state",
            self.redis.delete(self.keys.state(key), self.keys.inflight(key)),
        )
        self._inflight.pop(key, None)

    async def record(self, event: NewMessage) -> None:
        """Record ``event`` as in flight before it is yielded. Raises LockLostError when
        the lease is not held (the event must not be yielded then)."""
        key = event.mailbox
        token = self._token(key, "recording an event")
        entry = entry_of(event)
        ok = await self._run(
            "recording an event in flight",
            self.redis.eval(
                RECORD_INFLIGHT,
                2,
                self.keys.lease(key),
                self.keys.inflight(key),
                token,
                event.dedupe_key,
                json.dumps(entry),
            ),
        )
        if not ok:
            raise LockLostError(f"refused recording an event of {key}: its lease moved")
        self._inflight.setdefault(key, {})[event.dedupe_key] = entry

    async def inflight(self, key: str) -> set[str]:
        """The dedupe keys in flight for ``key`` (read when its lease is granted; they
        are cleared by the first state write that covers them)."""
        raw = await self._run(
            "reading events in flight", self.redis.hgetall(self.keys.inflight(key))
        )
        known: dict[str, dict[str, Any]] = {}
        for field, value in raw.items():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict):
                known[decode(field)] = entry
        self._inflight[key] = known
        return set(known)

    def forget(self, key: str) -> None:
        """Drop what this worker knows of ``key``'s events in flight (lease lost)."""
        self._inflight.pop(key, None)

    def __repr__(self) -> str:
        return f"FencedStateStore(prefix={self.keys.prefix!r})"
