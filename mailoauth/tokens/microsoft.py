"""MicrosoftTokenProvider: Microsoft identity platform (v2.0) tokens for Microsoft 365 mail.

Token URL ``{authority}/{tenant}/oauth2/v2.0/token``, device endpoint
``{authority}/{tenant}/oauth2/v2.0/devicecode``; ``token_url=`` (and
``device_authorization_url=``) override them. Microsoft rotates refresh tokens: the
provider always uses the newest one and saves it to its store before returning.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mailoauth._providers import (
    MS_APP_ONLY_SCOPE,
    MS_AUTHORITY,
    MS_DELEGATED_SCOPES,
    MS_OFFLINE_ACCESS,
)
from mailoauth.errors import ConfigurationError
from mailoauth.tokens.grants import (
    ClientCredentialsGrant,
    DeviceCodeGrant,
    PasswordGrant,
    PromptCallback,
    RefreshTokenGrant,
)
from mailoauth.tokens.jwt import certificate_thumbprint, load_rsa_private_key, make_client_assertion
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.stores import TokenStore

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mailoauth.tokens.oauth2 import ProviderOptions

__all__ = ["MicrosoftTokenProvider", "microsoft_endpoint"]


def microsoft_endpoint(authority: str, tenant: str, name: str = "token") -> str:
    """``{authority}/{tenant}/oauth2/v2.0/{name}``; raises ConfigurationError for a bad
    tenant (empty or containing ``/``)."""
    if not tenant or "/" in tenant or "?" in tenant:
        raise ConfigurationError(
            f"tenant must be a tenant id, a domain, 'organizations', 'consumers' or "
            f"'common', not {tenant!r}"
        )
    return f"{authority.rstrip('/')}/{tenant}/oauth2/v2.0/{name}"


class MicrosoftTokenProvider(OAuth2TokenProvider):
    """Tokens for Outlook / Exchange Online IMAP, POP3 and SMTP.

    Build it with :meth:`ropc`, :meth:`client_credentials`, :meth:`refresh_token` or
    :meth:`device_code`; options as for :class:`OAuth2TokenProvider`.

    Refreshes send the scopes asked for, not the granted ones the response lists:
    Microsoft's refresh request requires ``scope``, equal to or a subset of the scopes
    of the original request
    (https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow#refresh-the-access-token),
    and ``offline_access`` is never listed in a response's scope although it must be
    asked for to keep getting refresh tokens
    (https://learn.microsoft.com/en-us/answers/questions/806413/scope-offline-access-isnt-being-returned-in-the-to,
    https://learn.microsoft.com/en-us/answers/a/1898617).
    """

    vendor = "microsoft"
    keep_requested_scope = True

    @classmethod
    def ropc(
        cls,
        client_id: str,
        username: str,
        password: str,
        *,
        tenant: str = "organizations",
        scopes: str | Iterable[str] = MS_DELEGATED_SCOPES,
        authority: str = MS_AUTHORITY,
        token_url: str | None = None,
        client_secret: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """The resource owner password credentials grant (no MFA; "Allow public client
        flows" must be on). Wrong credentials give PermanentTokenError (invalid_grant)."""
        return cls(
            token_url or microsoft_endpoint(authority, tenant),
            PasswordGrant(username, password),
            client_id=client_id,
            client_secret=client_secret,
            scope=scopes,
            store=store,
            **options,
        )

    @classmethod
    def client_credentials(
        cls,
        client_id: str,
        client_secret: str | None = None,
        *,
        tenant: str,
        certificate: tuple[str | bytes, str | bytes] | None = None,
        scopes: str | Iterable[str] = (MS_APP_ONLY_SCOPE,),
        authority: str = MS_AUTHORITY,
        token_url: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """App-only tokens, with a client secret or ``certificate=(private_key_pem,
        certificate_pem)`` (a signed client assertion). Raises ConfigurationError unless
        exactly one is given, for an unreadable key or certificate, or without the
        ``cryptography`` package."""
        if (client_secret is None) == (certificate is None):
            raise ConfigurationError(
                "client_credentials needs exactly one of client_secret and certificate="
            )
        url = token_url or microsoft_endpoint(authority, tenant)
        assertion = None
        if certificate is not None:
            key_pem, cert_pem = certificate
            load_rsa_private_key(key_pem)  # fail now, not at the first refresh
            certificate_thumbprint(cert_pem)

            def assertion(audience: str, now: dt.datetime) -> str:
                return make_client_assertion(
                    client_id=client_id,
                    audience=audience,
                    private_key=key_pem,
                    certificate=cert_pem,
                    now=now,
                )

        return cls(
            url,
            ClientCredentialsGrant(),
            client_id=client_id,
            client_secret=client_secret,
            client_assertion=assertion,
            scope=scopes,
            store=store,
            **options,
        )

    @classmethod
    def refresh_token(
        cls,
        client_id: str,
        refresh_token: str,
        *,
        tenant: str = "common",
        scopes: str | Iterable[str] = (*MS_DELEGATED_SCOPES, MS_OFFLINE_ACCESS),
        authority: str = MS_AUTHORITY,
        token_url: str | None = None,
        client_secret: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """The refresh_token grant. Each response brings a new refresh token, used from
        then on and saved to ``store`` (pass one, or the newest token is lost at exit)."""
        return cls(
            token_url or microsoft_endpoint(authority, tenant),
            RefreshTokenGrant(refresh_token),
            client_id=client_id,
            client_secret=client_secret,
            scope=scopes,
            store=store,
            **options,
        )

    @classmethod
    def device_code(
        cls,
        client_id: str,
        *,
        tenant: str = "organizations",
        scopes: str | Iterable[str] = (*MS_DELEGATED_SCOPES, MS_OFFLINE_ACCESS),
        on_prompt: PromptCallback | None = None,
        authority: str = MS_AUTHORITY,
        token_url: str | None = None,
        device_authorization_url: str | None = None,
        interval: float | None = None,
        account: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """The device code flow: ``on_prompt`` shows the user where to sign in (default:
        print to stderr); later refreshes use the refresh token it brings. ``account``
        names the user in the store key."""
        grant = DeviceCodeGrant(
            device_authorization_url or microsoft_endpoint(authority, tenant, "devicecode"),
            on_prompt=on_prompt,
            interval=interval,
            account=account,
        )
        return cls(
            token_url or microsoft_endpoint(authority, tenant),
            grant,
            client_id=client_id,
            scope=scopes,
            store=store,
            **options,
        )
