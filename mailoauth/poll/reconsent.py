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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailoauth.errors import ConfigurationError, PermanentTokenError
from mailoauth.poll.spec import Mailbox
from mailoauth.tokens.access_token import AccessToken
from mailoauth.tokens.grants import DeviceCodeGrant, PromptCallback
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.stores import StoredCredential, TokenStore

__all__ = ["ReconsentHook", "ReconsentRequest", "needs_reconsent"]


def needs_reconsent(exc: BaseException) -> bool:
    """Whether ``exc`` says the grant is dead and only its owner can renew it."""
    return isinstance(exc, PermanentTokenError) and exc.error == "invalid_grant"


@dataclass(frozen=True)
class ReconsentRequest:
    """What the ``on_reconsent`` hook gets: the mailbox whose grant died, and why.

    ``error`` names the cause (its ``error_description`` holds the vendor's code, e.g.
    AADSTS700082 for Microsoft's 90 idle days).
    """

    mailbox: Mailbox
    error: PermanentTokenError

    @property
    def provider(self) -> OAuth2TokenProvider | None:
        """The mailbox's OAuth 2.0 provider, or None for a token source of another kind."""
        token = self.mailbox.token
        return token if isinstance(token, OAuth2TokenProvider) else None

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
                f"mailbox {self.mailbox.key!r}: re-consent needs an OAuth2TokenProvider "
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
