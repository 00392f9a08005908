"""Re-consent without a restart: a dead grant's owner signs in again while the rest runs.

When a mailbox's grant dies (the token endpoint answers ``invalid_grant``: revoked, a
password change, Microsoft's 90 idle days, Google's 7-day "Testing" tokens), the
:class:`~mailoauth.poll.Poller` given ``on_reconsent=`` calls that hook with a
:class:`ReconsentRequest` and keeps the other mailboxes running. The hook reaches the
mailbox's owner, typically with :meth:`ReconsentRequest.sign_in_with_device_code`
(the owner gets a URL and a code), which saves the new grant in the provider's token
store. The poller watches that store and resumes the mailbox as soon as a new grant is
there, whoever saved it (the hook, or ``mailoauth login`` in another process).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from mailoauth.errors import ConfigurationError, PermanentTokenError
from mailoauth.poll.spec import Mailbox
from mailoauth.tokens.access_token import AccessToken
from mailoauth.tokens.grants import DeviceCodeGrant, PromptCallback
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.stores import StoredCredential, TokenStore

__all__ = ["ReconsentHook", "ReconsentRequest", "ReconsentingProvider", "needs_reconsent"]


log = logging.getLogger("mailoauth.poll")


def needs_reconsent(exc: BaseException) -> bool:
    """Whether ``exc`` says the grant is dead and only its owner can renew it."""
    return isinstance(exc, PermanentTokenError) and exc.error == "invalid_grant"


@dataclass(frozen=True)
class ReconsentRequest:
    """What the ``on_reconsent`` hook gets: the mailbox whose grant died (None for a
    :class:`ReconsentingProvider` on its own), and why.

    ``error`` names the cause: its ``error_description`` holds the vendor's code, and
    its message the meaning and the fix from the one table of known failures
    (:data:`mailoauth._providers.DIAGNOSES`).
    """

    mailbox: Mailbox | None
    error: PermanentTokenError
    token_source: object = None
    """The dead grant's token source (by default the mailbox's)."""

    @property
    def provider(self) -> OAuth2TokenProvider | None:
        """The OAuth 2.0 provider of the dead grant, or None for a token source of
        another kind."""
        token = self.token_source
        if token is None and self.mailbox is not None:
            token = self.mailbox.token
        return token if isinstance(token, OAuth2TokenProvider) else None

    @property
    def name(self) -> str:
        """The mailbox's key, or the provider's store key: what to name in messages."""
        if self.mailbox is not None:
            return self.mailbox.key
        provider = self.provider
        return provider.store_key if provider is not None else "?"

    async def sign_in_with_device_code(
        self,
        device_authorization_url: str,
        *,
        on_prompt: PromptCallback | None = None,
        client_secret: str | None = None,
        interval: float | None = None,
    ) -> AccessToken:
        """Run the device code flow (RFC 8628) for the mailbox's owner and save the new
        grant where the mailbox's provider reads it, so the poller resumes it.

        ``on_prompt`` gets the URL and code to pass to the owner (default: stderr); the
        same client id, token endpoint and scope as the provider's are used. Raises
        ConfigurationError when the mailbox's token source is not an
        :class:`~mailoauth.tokens.OAuth2TokenProvider` with a store, and what the flow
        raises (PermanentTokenError when the owner denies or the code expires).
        """
        provider = self.provider
        store = provider.store if provider is not None else None
        if provider is None or store is None:
            raise ConfigurationError(
                f"{self.name!r}: re-consent needs an OAuth2TokenProvider "
                "with a token store (store=), where the new grant is saved"
            )
        flow = OAuth2TokenProvider(
            provider.token_url,
            DeviceCodeGrant(device_authorization_url, on_prompt=on_prompt, interval=interval),
            client_id=provider.client_id,
            client_secret=client_secret,
            scope=provider.scope,
        )
        try:
            token = await flow.get_access_token()
        finally:
            await flow.aclose()
        await save_grant(provider, store, token)
        return token


ReconsentHook = Callable[[ReconsentRequest], Awaitable[None]]
"""``async def hook(request: ReconsentRequest) -> None``: get the owner to sign in again."""


async def save_grant(provider: OAuth2TokenProvider, store: TokenStore, token: AccessToken) -> None:
    """Save ``token`` (and its refresh token) under the keys ``provider`` reads."""
    if provider.grant_store_key != provider.store_key and token.refresh_token:
        await store.save(
            provider.grant_store_key, StoredCredential(refresh_token=token.refresh_token)
        )
    await store.save(provider.store_key, StoredCredential.from_token(token))


async def new_grant_in_store(provider: OAuth2TokenProvider, dead: str | None) -> bool:
    """Whether the refresh token the provider would take from its store (the grant's
    key first, as the provider reads it) is another than ``dead``."""
    store = provider.store
    if store is None:
        return False
    for key in dict.fromkeys((provider.grant_store_key, provider.store_key)):
        stored = await store.load(key)
        if stored is not None and stored.refresh_token:
            return stored.refresh_token != dead
    return False


async def wait_for_reconsent(
    request: ReconsentRequest, hook: ReconsentHook, interval: float
) -> bool:
    """Call ``hook`` in a task of its own and wait until the provider's store holds a
    new grant (True), or, without a store, until the hook returns (True when it did not
    raise). A grant saved by anyone ends the hook. The hook's exceptions are logged by
    their type (never their text, which may hold a secret)."""
    provider = request.provider
    watch = provider is not None and provider.store is not None
    dead = provider.current_refresh_token if provider is not None else None
    hook_done = anyio.Event()
    hook_ok = False

    async def run_hook() -> None:
        nonlocal hook_ok
        try:
            await hook(request)
            hook_ok = True
        except Exception as failure:  # the store may still get a grant from elsewhere
            log.warning(
                "%s: the re-consent hook failed (%s)%s",
                request.name,
                type(failure).__name__,
                "; still watching the token store" if watch else "",
            )
        finally:
            hook_done.set()

    resume = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_hook, name=f"reconsent {request.name}")
        if provider is not None and watch:
            # The store lives outside this process (a file, Redis, the keyring): polled.
            while True:
                if await new_grant_in_store(provider, dead):
                    break
                await anyio.sleep(interval)
            tg.cancel_scope.cancel()  # a grant saved elsewhere ends the hook too
            resume = True
        else:
            await hook_done.wait()
            resume = hook_ok
    return resume


class ReconsentingProvider:
    """A provider on its own that heals a dead grant: when ``provider`` says
    ``invalid_grant``, :meth:`get_access_token` calls ``on_reconsent`` (as the Poller
    does), waits until the new grant is in the provider's store (checked every
    ``reconsent_interval`` seconds; without a store, until the hook returns), and tries
    once more. Raises the original PermanentTokenError when the hook failed and there
    is no store, and what the provider raises otherwise. Give clients this object
    instead of the provider."""

    def __init__(
        self,
        provider: OAuth2TokenProvider,
        on_reconsent: ReconsentHook,
        *,
        reconsent_interval: float = 5.0,
    ) -> None:
        self.provider = provider
        self.on_reconsent = on_reconsent
        self.reconsent_interval = reconsent_interval
        self._healing = anyio.Lock()
        self._generation = 0  # grants healed so far

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        generation = self._generation
        try:
            return await self.provider.get_access_token(force_refresh=force_refresh)
        except PermanentTokenError as exc:
            if not needs_reconsent(exc):
                raise
            async with self._healing:  # callers at once share one re-consent
                if self._generation == generation:
                    request = ReconsentRequest(None, exc, self.provider)
                    if not await wait_for_reconsent(
                        request, self.on_reconsent, self.reconsent_interval
                    ):
                        raise
                    self._generation += 1
        # The store holds the new grant now: the provider takes it from there.
        return await self.provider.get_access_token(force_refresh=force_refresh)

    async def aclose(self) -> None:
        await self.provider.aclose()

    def __repr__(self) -> str:
        return f"ReconsentingProvider({self.provider!r})"
