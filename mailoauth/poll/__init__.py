"""The poller: many mailboxes watched from one event loop.

IMAP folders are watched with IDLE where the server offers it and polled otherwise;
POP3 maildrops are polled by UIDL. New mail and failures come out of one async
iterator; how far each mailbox has been handled is kept in a state store, so a
restart reports no handled message twice and misses none. See :class:`Poller`.
"""

from typing import TYPE_CHECKING

from mailoauth._util.lazy import lazy_exports

#: Where each public name is imported from, on first access (PEP 562): importing a
#: submodule does not import its siblings.
_LAZY = {
    "mailoauth.poll.backoff": ["backoff_delay", "is_permanent"],
    "mailoauth.poll.budgets": ["ConnectionBudgets", "LocalBudgets", "RedisBudgets", "Slots"],
    "mailoauth.poll.config": ["CredentialConfig", "PollConfig", "TokenSources", "load_config"],
    "mailoauth.poll.mailbox_spec": ["MailboxSpec"],
    "mailoauth.poll.poller": ["Poller"],
    "mailoauth.poll.reconsent": ["ReconsentHook", "ReconsentRequest", "ReconsentingProvider"],
    "mailoauth.poll.spec": [
        "Backoff",
        "Mailbox",
        "MailboxFailed",
        "NewMessage",
        "PollEvent",
        "PollLimits",
    ],
    "mailoauth.poll.state": [
        "FilePollStateStore",
        "ImapState",
        "MemoryPollStateStore",
        "PollState",
        "PollStateStore",
        "Pop3State",
        "StartPolicy",
        "imap_resume_point",
    ],
    "mailoauth.poll.throttle": ["ThrottleScope", "Throttled", "classify_throttle"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

if TYPE_CHECKING:
    from mailoauth.poll.backoff import backoff_delay, is_permanent
    from mailoauth.poll.budgets import ConnectionBudgets, LocalBudgets, RedisBudgets, Slots
    from mailoauth.poll.config import CredentialConfig, PollConfig, TokenSources, load_config
    from mailoauth.poll.mailbox_spec import MailboxSpec
    from mailoauth.poll.poller import Poller
    from mailoauth.poll.reconsent import ReconsentHook, ReconsentingProvider, ReconsentRequest
    from mailoauth.poll.spec import (
        Backoff,
        Mailbox,
        MailboxFailed,
        NewMessage,
        PollEvent,
        PollLimits,
    )
    from mailoauth.poll.state import (
        FilePollStateStore,
        ImapState,
        MemoryPollStateStore,
        PollState,
        PollStateStore,
        Pop3State,
        StartPolicy,
        imap_resume_point,
    )
    from mailoauth.poll.throttle import Throttled, ThrottleScope, classify_throttle

__all__ = [
    "Backoff",
    "ConnectionBudgets",
    "CredentialConfig",
    "FilePollStateStore",
    "ImapState",
    "LocalBudgets",
    "Mailbox",
    "MailboxFailed",
    "MailboxSpec",
    "MemoryPollStateStore",
    "NewMessage",
    "PollConfig",
    "PollEvent",
    "PollLimits",
    "PollState",
    "PollStateStore",
    "Poller",
    "Pop3State",
    "ReconsentHook",
    "ReconsentRequest",
    "ReconsentingProvider",
    "RedisBudgets",
    "Slots",
    "StartPolicy",
    "ThrottleScope",
    "Throttled",
    "TokenSources",
    "backoff_delay",
    "classify_throttle",
    "imap_resume_point",
    "is_permanent",
    "load_config",
]
