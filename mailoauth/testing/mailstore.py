"""An in-memory mail store shared by the test SMTP, IMAP and POP3 servers.

Users own mailboxes (``INBOX`` always, others on demand); a mailbox holds messages with
a UID, the raw bytes, flags and an internal date, and keeps its UIDVALIDITY and UIDNEXT.
SMTP deliveries land in each recipient's INBOX (the recipient address is the
username); POP3 sees the INBOX; IMAP sees everything.

The store may be touched from more than one thread (a test thread and the servers'
event loop), so every operation takes a lock and returns copies. Sessions learn of
changes through :meth:`MailStore.subscribe`: the callback is scheduled on the
subscriber's own event loop with ``call_soon_threadsafe``, so an IMAP IDLE session is
woken on its loop whoever changed the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

__all__ = ["INBOX", "MailStore", "Mailbox", "StoredMessage", "Subscription"]

INBOX = "INBOX"

_uidvalidity_counter = itertools.count(int(time.time()) % 1_000_000_000)


def _normalize(mailbox: str) -> str:
    # INBOX is case-insensitive (RFC 3501 §5.1); every other name is case-sensitive.
    return INBOX if mailbox.upper() == INBOX else mailbox


@dataclass(frozen=True)
class StoredMessage:
    """One message as a session sees it: a snapshot, not a live view."""

    uid: int
    data: bytes
    flags: frozenset[str] = frozenset()
    internal_date: float = field(default_factory=time.time)
    recent: bool = False

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Mailbox:
    """A mailbox's state. Only :class:`MailStore` mutates it, under its lock."""

    name: str
    uidvalidity: int
    uidnext: int = 1
    messages: dict[int, StoredMessage] = field(default_factory=dict)


ChangeCallback = Callable[[str, str], None]
"""Called as ``callback(username, mailbox)`` on the subscriber's loop."""


@dataclass(frozen=True)
class Subscription:
    """Returned by :meth:`MailStore.subscribe`; pass it to :meth:`MailStore.unsubscribe`."""

    username: str
    callback: ChangeCallback
    loop: asyncio.AbstractEventLoop


class MailStore:
    """Users -> mailboxes -> messages, in memory, thread-safe.

    ``auto_create`` (default) makes a user on first delivery or login, so a test only
    needs to issue a token for a new address.
    """

    def __init__(self, *, auto_create: bool = True) -> None:
        self.auto_create = auto_create
        self._lock = threading.RLock()
        self._users: dict[str, dict[str, Mailbox]] = {}
        self._subscriptions: list[Subscription] = []

    # -- users and mailboxes ---------------------------------------------------------

    def add_user(self, username: str, mailboxes: Iterable[str] = ()) -> None:
        """Create ``username`` with an INBOX (and ``mailboxes``); no-op if it exists."""
        with self._lock:
            boxes = self._users.setdefault(username, {})
            for name in (INBOX, *mailboxes):
                name = _normalize(name)
                if name not in boxes:
                    boxes[name] = Mailbox(name, next(_uidvalidity_counter))

    def has_user(self, username: str) -> bool:
        with self._lock:
            return username in self._users

    def users(self) -> list[str]:
        with self._lock:
            return sorted(self._users)

    def _boxes(self, username: str) -> dict[str, Mailbox]:
        boxes = self._users.get(username)
        if boxes is None:
            if not self.auto_create:
                raise KeyError(f"no such user {username!r}")
            self.add_user(username)
            boxes = self._users[username]
        return boxes

    def _box(self, username: str, mailbox: str) -> Mailbox:
        box = self._boxes(username).get(_normalize(mailbox))
        if box is None:
            raise KeyError(f"no mailbox {mailbox!r} for {username!r}")
        return box

    def mailboxes(self, username: str) -> list[str]:
        """The user's mailbox names, INBOX first."""
        with self._lock:
            names = list(self._boxes(username))
        return sorted(names, key=lambda n: (n != INBOX, n))

    def mailbox_exists(self, username: str, mailbox: str) -> bool:
        with self._lock:
            return _normalize(mailbox) in self._boxes(username)

    def create_mailbox(self, username: str, mailbox: str) -> bool:
        """Create a mailbox; False if it already exists."""
        with self._lock:
            boxes = self._boxes(username)
            name = _normalize(mailbox)
            if name in boxes:
                return False
            boxes[name] = Mailbox(name, next(_uidvalidity_counter))
            return True

    def delete_mailbox(self, username: str, mailbox: str) -> bool:
        """Delete a mailbox other than INBOX; False if it does not exist or is INBOX."""
        with self._lock:
            name = _normalize(mailbox)
            boxes = self._boxes(username)
            if name == INBOX or name not in boxes:
                return False
            del boxes[name]
        self._notify(username, name)
        return True

    def status(self, username: str, mailbox: str) -> tuple[int, int]:
        """``(uidvalidity, uidnext)`` of a mailbox."""
        with self._lock:
            box = self._box(username, mailbox)
            return box.uidvalidity, box.uidnext

    # -- messages --------------------------------------------------------------------

    def messages(self, username: str, mailbox: str = INBOX) -> list[StoredMessage]:
        """Snapshots of the mailbox's messages in UID order."""
        with self._lock:
            box = self._box(username, mailbox)
            return [box.messages[uid] for uid in sorted(box.messages)]

    def get(self, username: str, mailbox: str, uid: int) -> StoredMessage | None:
        with self._lock:
            return self._box(username, mailbox).messages.get(uid)

    def append(
        self,
        username: str,
        mailbox: str,
        data: bytes,
        *,
        flags: Iterable[str] = (),
        internal_date: float | None = None,
    ) -> int:
        """Add a message; returns its UID. Subscribers are told."""
        with self._lock:
            box = self._box(username, mailbox)
            uid = box.uidnext
            box.uidnext += 1
            box.messages[uid] = StoredMessage(
                uid,
                bytes(data),
                frozenset(flags),
                time.time() if internal_date is None else internal_date,
                recent=True,
            )
        self._notify(username, box.name)
        return uid

    def deliver(self, recipient: str, data: bytes) -> int:
        """Deliver to the INBOX of ``recipient`` (an address is a username)."""
        return self.append(recipient, INBOX, data)

    def set_flags(
        self, username: str, mailbox: str, uid: int, flags: Iterable[str]
    ) -> StoredMessage | None:
        """Replace a message's flags; returns the new snapshot, None if it is gone."""
        with self._lock:
            box = self._box(username, mailbox)
            msg = box.messages.get(uid)
            if msg is None:
                return None
            new = replace(msg, flags=frozenset(flags))
            box.messages[uid] = new
            return new

    def clear_recent(self, username: str, mailbox: str) -> int:
        """Clear \\Recent on every message (one session claimed them); returns how many."""
        with self._lock:
            box = self._box(username, mailbox)
            count = 0
            for uid, msg in box.messages.items():
                if msg.recent:
                    box.messages[uid] = replace(msg, recent=False)
                    count += 1
            return count

    def copy(self, username: str, source: str, uids: Iterable[int], target: str) -> list[int]:
        """Copy messages to ``target``; returns the new UIDs in the order of ``uids``."""
        with self._lock:
            src = self._box(username, source)
            dst = self._box(username, target)
            new_uids = []
            for uid in uids:
                msg = src.messages.get(uid)
                if msg is None:
                    continue
                new_uid = dst.uidnext
                dst.uidnext += 1
                dst.messages[new_uid] = replace(msg, uid=new_uid, recent=True)
                new_uids.append(new_uid)
        if new_uids:
            self._notify(username, dst.name)
        return new_uids

    def remove(self, username: str, mailbox: str, uids: Iterable[int]) -> list[int]:
        """Remove messages for good; returns the UIDs that were there."""
        with self._lock:
            box = self._box(username, mailbox)
            removed = [uid for uid in uids if box.messages.pop(uid, None) is not None]
        if removed:
            self._notify(username, box.name)
        return removed

    # -- change notifications --------------------------------------------------------

    def subscribe(self, username: str, callback: ChangeCallback) -> Subscription:
        """Call ``callback(username, mailbox)`` on the running loop after each change
        to one of ``username``'s mailboxes. Must be called from inside a running loop."""
        sub = Subscription(username, callback, asyncio.get_running_loop())
        with self._lock:
            self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    def _notify(self, username: str, mailbox: str) -> None:
        with self._lock:
            targets = [s for s in self._subscriptions if s.username == username]
        for sub in targets:
            if sub.loop.is_closed():
                continue
            # RuntimeError: the loop closed in between, so nobody is left to tell.
            with contextlib.suppress(RuntimeError):
                sub.loop.call_soon_threadsafe(sub.callback, username, mailbox)
