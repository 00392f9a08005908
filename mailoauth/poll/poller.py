"""The Poller: many mailboxes watched from one event loop, reported as one stream."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, TypedDict, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mailoauth.errors import ConfigurationError, MailOAuthError, PermanentTokenError
from mailoauth.poll._common import Commit, Progress, Settings, WatchContext
from mailoauth.poll._imap import ImapWatcher
from mailoauth.poll._pop3 import Pop3Watcher
from mailoauth.poll.backoff import backoff_delay, is_permanent
from mailoauth.poll.budgets import ConnectionBudgets, LocalBudgets, Slots
from mailoauth.poll.reconsent import (
    ReconsentHook,
    ReconsentRequest,
    needs_reconsent,
    wait_for_reconsent,
)
from mailoauth.poll.spec import Backoff, Mailbox, MailboxFailed, NewMessage, PollEvent, PollLimits
from mailoauth.poll.state import MemoryPollStateStore, PollState, PollStateStore, StartPolicy
from mailoauth.poll.throttle import Throttled, classify_throttle
from mailoauth.tokens.manager import TokenManager, wrap_provider

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_FETCH_BATCH", "Poller"]

log = logging.getLogger("mailoauth.poll")

#: How many IMAP messages one UID FETCH asks for, bounding the memory of a catch-up.
DEFAULT_FETCH_BATCH = 20

#: An event, its commit, and the epoch of its mailbox when it was emitted (see
#: :meth:`Poller._forget`).
_Item = tuple[PollEvent, Commit | None, int]
_G = TypeVar("_G", PollLimits, Backoff)


class _GroupedOptions(TypedDict, total=False):
    """The Poller's keywords from before :class:`PollLimits` and :class:`Backoff`
    (still accepted; mixing one with its group's object is an error)."""

    max_connections: int
    max_per_host: int
    max_per_account: int | None
    backoff_base: float
    backoff_max: float


#: Old keyword -> field of the group object.
_LIMIT_FIELDS = {
    "max_connections": "max_connections",
    "max_per_host": "max_per_host",
    "max_per_account": "max_per_account",
}
_BACKOFF_FIELDS = {"backoff_base": "base", "backoff_max": "max"}


def _group(
    cls: type[_G],
    name: str,
    given: _G | None,
    keywords: _GroupedOptions,
    fields: Mapping[str, str],
) -> _G:
    """``given``, or one made from the old keywords of its group (popped from
    ``keywords``). Raises :class:`ConfigurationError` when both are given."""
    loose = {fields[k]: keywords.pop(k) for k in list(keywords) if k in fields}  # type: ignore[misc]
    if given is None:
        return cls(**loose)
    if loose:
        old = ", ".join(k for k in fields if fields[k] in loose)
        raise ConfigurationError(f"give either {name}= or {old}, not both")
    return given


class _HoldingBack:
    """A mailbox's slots, calling ``on_error`` with what the connection raised before
    the slots are released."""

    def __init__(self, slots: Slots, on_error: Callable[[Exception], Awaitable[None]]) -> None:
        self._slots = slots
        self._on_error = on_error

    @contextlib.asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        async with self._slots.hold():
            try:
                yield
            except Exception as exc:
                await self._on_error(exc)
                raise

    def hold(self) -> AbstractAsyncContextManager[None]:
        return self._hold()

    def contended(self) -> bool:
        return self._slots.contended()

    async def sleep_unless_contended(self, seconds: float) -> bool:
        return await self._slots.sleep_unless_contended(seconds)


class Poller:
    """Watch many mailboxes and iterate over what arrives in them.

    ::

        async with Poller(mailboxes, state_store=FilePollStateStore("poll.json")) as poller:
            async for event in poller:
                if isinstance(event, NewMessage):
                    handle(event.message())
                else:  # MailboxFailed
                    log.warning("%s: %s", event.mailbox, event.error)

    IMAP folders are watched with IDLE when the server offers it and ``use_idle`` is
    true, else polled every ``interval`` seconds (give or take 10 %); POP3 maildrops are
    polled every ``interval`` seconds by UIDL and never changed. Connections are bounded
    by ``limits`` (:class:`~mailoauth.poll.PollLimits`: ``max_connections`` overall,
    ``max_per_host`` per server host and ``max_per_account`` per (host, username), with
    Gmail's and Exchange Online's per-account presets; the three are also accepted as
    keywords of their own), enforced in this process, or by ``budgets`` (a
    :class:`~mailoauth.poll.ConnectionBudgets`, such as
    :class:`~mailoauth.poll.RedisBudgets` for caps shared by a fleet of processes;
    give the limits to it then). A watcher holding a connection gives it up
    when another mailbox waits for its slot (an IDLE watcher at the end of its IDLE
    round of ``idle_timeout`` seconds), so more mailboxes than slots are served in turn.

    **Handled, and resuming.** A :class:`~mailoauth.poll.NewMessage` counts as handled
    when the consumer asks for the next event, or leaves ``async with`` without an
    exception; with ``auto_ack=False``, when the consumer calls :meth:`ack` instead
    (acknowledging an event acknowledges every earlier one of its mailbox). Only then
    is it written to ``state_store``, so a restart with the same store reports no
    handled message again and misses none; an event delivered but not handled before a
    crash or a cancellation is reported again. With no saved state, ``start="new"``
    reports only mail arriving from now on (the starting point is saved at once) and
    ``start="all"`` every message already there. A folder whose UIDVALIDITY changed is
    reported whole again (see :func:`~mailoauth.poll.imap_resume_point`).

    **Failures** are reported in the stream as :class:`~mailoauth.poll.MailboxFailed`.
    Transient ones (network, timeouts, throttling, a token endpoint down) are retried
    after ``backoff_delay(n, backoff.base, backoff.max)`` seconds of full-jitter
    exponential backoff (``backoff``: a :class:`~mailoauth.poll.Backoff`, or the keywords
    ``backoff_base=`` and ``backoff_max=``); permanent ones (a revoked grant, a rejected
    token, a missing folder) set the mailbox aside in :attr:`failed` while the others
    go on. A throttled answer (Gmail's ``Too many simultaneous connections``,
    ``[UNAVAILABLE]``, ``[THROTTLED]``, the token endpoint's 429; see
    :func:`~mailoauth.poll.classify_throttle`) holds back every mailbox of its account
    (or, for the token endpoint, of its credential) for ``max(Retry-After, backoff)``
    through the budgets, fleet-wide with Redis ones.

    **Dying grants.** With ``on_reconsent`` (an async callback), a mailbox whose grant
    died (``invalid_grant``) is reported as failed, then the hook is called with a
    :class:`~mailoauth.poll.ReconsentRequest` in a task of its own, while the other
    mailboxes go on; the mailbox is watched again, by itself, as soon as its
    provider's token store holds a new grant (checked every ``reconsent_interval``
    seconds), whoever saved it. A token source without a store resumes when the hook
    returns. See :mod:`mailoauth.poll.reconsent`.

    **Tokens.** The poller holds one token manager per token source for its whole life:
    mailboxes given the same provider object share one cached token and one refresh.

    Leaving ``async with`` (or cancelling the task in it) stops every watcher and closes
    every connection before returning. ``buffer_size`` events wait at most in the
    stream; beyond that, watchers wait for the consumer. ``rng`` is the random source
    of the jitter (tests pass a seeded one). Asyncio only. Raises
    :class:`~mailoauth.errors.ConfigurationError` for limits or intervals out of range,
    for a group given both as its object and as keywords, and for two mailboxes with one
    key, and for ``budgets`` given with ``limits`` (or their keywords).
    """

    def __init__(
        self,
        mailboxes: Iterable[Mailbox] = (),
        *,
        state_store: PollStateStore | None = None,
        limits: PollLimits | None = None,
        backoff: Backoff | None = None,
        interval: float = 60.0,
        use_idle: bool = True,
        idle_timeout: float = 300.0,
        start: StartPolicy = "new",
        buffer_size: int = 100,
        auto_ack: bool = True,
        fetch_batch: int = DEFAULT_FETCH_BATCH,
        rng: random.Random | None = None,
        on_reconsent: ReconsentHook | None = None,
        reconsent_interval: float = 5.0,
        budgets: ConnectionBudgets | None = None,
        **grouped: Unpack[_GroupedOptions],
    ) -> None:
        if budgets is not None and (limits is not None or set(grouped) & set(_LIMIT_FIELDS)):
            raise ConfigurationError(
                "give the limits to the budgets (e.g. RedisBudgets(redis, limits=...)), "
                "not to the Poller as well"
            )
        limits = _group(PollLimits, "limits", limits, grouped, _LIMIT_FIELDS)
        if budgets is not None:
            limits = budgets.limits
        backoff = _group(Backoff, "backoff", backoff, grouped, _BACKOFF_FIELDS)
        if grouped:
            raise TypeError(f"Poller() got unexpected keyword arguments: {', '.join(grouped)}")
        if isinstance(fetch_batch, bool) or not isinstance(fetch_batch, int) or fetch_batch < 1:
            raise ConfigurationError(f"fetch_batch must be an int >= 1, not {fetch_batch!r}")
        for name, seconds in (
            ("interval", interval),
            ("idle_timeout", idle_timeout),
            ("reconsent_interval", reconsent_interval),
        ):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if start not in ("new", "all"):
            raise ConfigurationError(f"start must be 'new' or 'all', not {start!r}")
        if buffer_size < 0:
            raise ConfigurationError("buffer_size must be >= 0")
        self.state_store: PollStateStore = state_store or MemoryPollStateStore()
        self.limits = limits
        self.backoff = backoff
        self.max_per_host = limits.max_per_host
        self.max_per_account = limits.max_per_account
        self.backoff_base = backoff.base
        self.backoff_max = backoff.max
        self.auto_ack = auto_ack
        self.on_reconsent = on_reconsent
        self.reconsent_interval = reconsent_interval
        self.buffer_size = buffer_size
        self._settings = Settings(interval, use_idle, idle_timeout, start, fetch_batch)
        self._rng = rng or random.Random()
        self._progress = Progress(self.state_store)
        #: The connection budgets in use: ``budgets``, or in-process ones from ``limits``.
        self.budgets: ConnectionBudgets = budgets if budgets is not None else LocalBudgets(limits)
        self._mailboxes: dict[str, Mailbox] = {}
        self._tokens: dict[str, TokenManager] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._failed: dict[str, BaseException] = {}
        self._pending: dict[str, collections.deque[tuple[NewMessage, Commit]]] = {}
        self._unacked: NewMessage | None = None
        # Fleet hook (_forget): a mailbox's events from an older epoch are dropped.
        self._epochs: dict[str, int] = {}
        self._runner: asyncio.Task[None] | None = None
        self._tg: TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._stopping = False
        self._send: MemoryObjectSendStream[_Item] | None = None
        self._receive: MemoryObjectReceiveStream[_Item] | None = None
        for mailbox in mailboxes:
            self.add(mailbox)

    # -- mailboxes --------------------------------------------------------------------

    @property
    def mailboxes(self) -> Mapping[str, Mailbox]:
        """The mailboxes watched (or set aside), by key."""
        return dict(self._mailboxes)

    @property
    def failed(self) -> Mapping[str, BaseException]:
        """Mailboxes set aside after a permanent failure, with the error, by key."""
        return dict(self._failed)

    def add(self, mailbox: Mailbox) -> None:
        """Start watching ``mailbox`` (at once if the poller is running).

        Raises :class:`~mailoauth.errors.ConfigurationError` if a mailbox with the same
        key is watched already.
        """
        if mailbox.key in self._mailboxes:
            raise ConfigurationError(f"a mailbox with key {mailbox.key!r} is watched already")
        self._mailboxes[mailbox.key] = mailbox
        # Held for the poller's life, so that a provider's cached token outlives the
        # connections that use it (wrap_provider shares one manager per provider).
        self._tokens[mailbox.key] = wrap_provider(mailbox.token)
        if self._stopping:
            raise RuntimeError("this Poller is stopping; it watches no new mailbox")
        if self._tg is not None:
            self._start(mailbox)

    def remove(self, key: str) -> None:
        """Stop watching the mailbox ``key`` (its connection is closed). Its saved state
        stays in the store; events already in the stream are still delivered. Raises
        ``KeyError`` for an unknown key."""
        self._mailboxes.pop(key)
        self._tokens.pop(key, None)
        self._failed.pop(key, None)
        scope = self._scopes.pop(key, None)
        if scope is not None:
            scope.cancel()

    def _forget(self, key: str) -> None:
        """Fleet hook (mailoauth.poll.fleet), after :meth:`remove` when a mailbox's lease
        moved to another worker: forget its cached state and its unacknowledged events,
        and drop its events still in the stream (another worker reports them now), so
        that a later :meth:`add` of the same key starts from the store alone."""
        self._progress.forget(key)
        self._pending.pop(key, None)
        self._epochs[key] = self._epochs.get(key, 0) + 1

    # -- running ----------------------------------------------------------------------

    async def __aenter__(self) -> Poller:
        if self._runner is not None or self._stopping:
            raise RuntimeError("a Poller runs once; create a new one")
        self._send, self._receive = anyio.create_memory_object_stream[_Item](self.buffer_size)
        started = anyio.Event()
        # The watchers' task group runs in a task of its own, so the consumer's body is
        # not inside its cancel scope and the consumer's own errors stay ungrouped.
        self._runner = asyncio.get_running_loop().create_task(
            self._run(started), name="mailoauth poller"
        )
        await started.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._unacked is not None:
                with anyio.CancelScope(shield=True):
                    await self.ack(self._unacked)
        finally:
            self._unacked = None
            self.stop()
            await self._join()
            if self._receive is not None:
                self._receive.close()

    async def aclose(self) -> None:
        """Stop every watcher and wait until every connection is closed (what leaving
        ``async with`` does, without marking the last event handled)."""
        self.stop()
        await self._join()

    def stop(self) -> None:
        """Ask every watcher to stop; callable from any task of the loop. Events already
        in the stream are still delivered, then the iteration ends."""
        self._stopping = True
        for scope in self._scopes.values():
            scope.cancel()
        if self._send is not None:
            self._send.close()  # the watchers' clones close as they finish
        if self._stop is not None:
            self._stop.set()

    async def _join(self) -> None:
        """Wait for the watchers to finish closing, even when cancelled meanwhile (the
        cancellation is raised afterwards)."""
        runner = self._runner
        if runner is None:
            return
        interrupted: BaseException | None = None
        with anyio.CancelScope(shield=True):
            while not runner.done():
                try:
                    await asyncio.wait({runner})
                except asyncio.CancelledError as exc:
                    interrupted = exc
        if interrupted is not None:
            raise interrupted
        runner.result()  # a bug in the poller itself surfaces here

    async def _run(self, started: anyio.Event) -> None:
        self._stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for mailbox in self._mailboxes.values():
                    self._start(mailbox)
                started.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            started.set()
            if self._send is not None:
                self._send.close()

    def _start(self, mailbox: Mailbox) -> None:
        assert self._tg is not None and self._send is not None
        scope = anyio.CancelScope()
        self._scopes[mailbox.key] = scope
        send = self._send.clone()
        self._tg.start_soon(self._watch, mailbox, scope, send, name=f"poll {mailbox.key}")

    async def _watch(
        self, mailbox: Mailbox, scope: anyio.CancelScope, send: MemoryObjectSendStream[_Item]
    ) -> None:
        """Run one mailbox's watcher, retrying transient failures, until cancelled or
        failed for good. Never raises (but for cancellation)."""
        key = mailbox.key
        attempts = 0

        def healthy() -> None:
            nonlocal attempts
            attempts = 0

        epoch = self._epochs.get(key, 0)

        async def emit(event: PollEvent, commit: Commit | None) -> None:
            await send.send((event, commit, epoch))

        # A throttled answer is held back while its slots are still held, so that no
        # other mailbox of the scope (in any worker) takes the freed slot and knocks
        # again before the hold-back is in place.
        held_back: tuple[BaseException, float] | None = None

        async def throttled(exc: Exception) -> None:
            nonlocal held_back
            found = classify_throttle(exc)
            if found is not None:
                delay = self._throttle_delay(found, attempts)
                await self.budgets.hold_back(mailbox, found.scope, delay)
                held_back = (exc, delay)

        ctx = WatchContext(
            mailbox=mailbox,
            tokens=self._tokens[key],
            limits=_HoldingBack(self.budgets.slots(mailbox), throttled),
            progress=self._progress,
            settings=self._settings,
            rng=self._rng,
            emit=emit,
            healthy=healthy,
        )
        watcher = ImapWatcher(ctx) if mailbox.protocol == "imap" else Pop3Watcher(ctx)
        with send, scope, contextlib.suppress(anyio.BrokenResourceError):
            while True:
                try:
                    await watcher.run()
                except anyio.BrokenResourceError:
                    raise  # the consumer is gone
                except Exception as exc:
                    if self.on_reconsent is not None and needs_reconsent(exc):
                        self._failed[key] = exc
                        log.debug("%s: the grant is dead; asking for re-consent", key)
                        await emit(MailboxFailed(key, exc, permanent=True), None)
                        if not await self._reconsent(mailbox, exc, self.on_reconsent):
                            return
                        log.debug("%s: a new grant is in the store; resuming", key)
                        self._failed.pop(key, None)
                        attempts = 0
                        continue
                    found = classify_throttle(exc)
                    if found is not None:
                        if held_back is not None and held_back[0] is exc:
                            delay = held_back[1]  # held back already, before the release
                        else:
                            delay = self._throttle_delay(found, attempts)
                            await self.budgets.hold_back(mailbox, found.scope, delay)
                        held_back = None
                        attempts += 1
                        log.info(
                            "%s: throttled (%s); holding its %s back for %.1f s",
                            key,
                            found.reason,
                            found.scope,
                            delay,
                        )
                        await emit(
                            MailboxFailed(key, exc, False, attempt=attempts, retry_in=delay), None
                        )
                        await anyio.sleep(delay)
                        continue
                    if is_permanent(exc):
                        self._failed[key] = exc
                        if isinstance(exc, MailOAuthError):
                            log.debug("%s: set aside: %s: %s", key, type(exc).__name__, exc)
                        else:
                            log.error("%s: unexpected error; set aside", key, exc_info=exc)
                        await emit(MailboxFailed(key, exc, permanent=True), None)
                        return
                    delay = backoff_delay(attempts, self.backoff_base, self.backoff_max, self._rng)
                    attempts += 1
                    log.debug(
                        "%s: %s: %s; retry %d in %.1f s",
                        key,
                        type(exc).__name__,
                        exc,
                        attempts,
                        delay,
                    )
                    await emit(
                        MailboxFailed(key, exc, False, attempt=attempts, retry_in=delay), None
                    )
                    await anyio.sleep(delay)

    def _throttle_delay(self, found: Throttled, attempts: int) -> float:
        """How long a throttled answer holds its scope back: what the server asked
        for, or the backoff if longer."""
        backoff = backoff_delay(attempts, self.backoff_base, self.backoff_max, self._rng)
        return max(found.retry_after or 0.0, backoff)

    async def _reconsent(self, mailbox: Mailbox, exc: Exception, hook: ReconsentHook) -> bool:
        """Call ``hook`` and wait for a new grant; True to resume the mailbox."""
        assert isinstance(exc, PermanentTokenError)
        request = ReconsentRequest(mailbox, exc)
        return await wait_for_reconsent(request, hook, self.reconsent_interval)

    # -- consuming --------------------------------------------------------------------

    def __aiter__(self) -> Poller:
        return self

    async def __anext__(self) -> PollEvent:
        """The next event. With ``auto_ack``, first marks the previous one handled.

        Raises ``StopAsyncIteration`` once the poller is closed, and what the state
        store raises when saving fails.
        """
        if self._receive is None:
            raise RuntimeError("use 'async with Poller(...) as poller' before iterating")
        if self._unacked is not None:
            event, self._unacked = self._unacked, None
            await self.ack(event)
        while True:
            try:
                item, commit, epoch = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            if epoch == self._epochs.get(item.mailbox, 0):
                break  # else forgotten (_forget) since it was emitted: drop it
        if isinstance(item, NewMessage) and commit is not None:
            self._pending.setdefault(item.mailbox, collections.deque()).append((item, commit))
            if self.auto_ack:
                self._unacked = item
        return item

    async def ack(self, event: NewMessage) -> None:
        """Mark ``event`` and every earlier event of its mailbox handled, and save the
        mailbox's state. Acknowledging an event twice does nothing. Raises what the
        state store raises."""
        pending = self._pending.get(event.mailbox)
        if not pending or not any(e is event for e, _ in pending):
            return
        commits: list[Commit] = []
        while pending:
            done, commit = pending.popleft()
            commits.append(commit)
            if done is event:
                break

        def apply(state: PollState | None) -> PollState:
            for commit in commits:
                state = commit(state)
            assert state is not None
            return state

        await self._progress.update(event.mailbox, apply)
