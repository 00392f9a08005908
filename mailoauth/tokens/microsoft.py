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

from mailoauth._providers import MS_CLOUDS, MS_OFFLINE_ACCESS, MicrosoftCloud
from mailoauth._util.deprecated import renamed_keyword
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

__all__ = [
    "MicrosoftCloud",
    "MicrosoftTokenProvider",
    "microsoft_cloud",
    "microsoft_endpoint",
    "microsoft_mail_host",
]

#: The port each protocol listens on in every Microsoft cloud (implicit TLS for IMAP
#: and POP, STARTTLS submission for SMTP), from the endpoint lists cited at MS_CLOUDS.
_MAIL_PORTS = {"imap": 993, "pop3": 995, "smtp": 587}


def microsoft_cloud(cloud: str | MicrosoftCloud) -> MicrosoftCloud:
    """The preset for ``cloud``: ``"global"``, ``"gcc"``, ``"us_gov_high"``,
    ``"us_gov_dod"`` or ``"china"`` (or a :class:`MicrosoftCloud` of your own, returned
    as is). Raises ConfigurationError for another name, listing the known ones."""
    if isinstance(cloud, MicrosoftCloud):
        return cloud
    preset = MS_CLOUDS.get(cloud.lower().replace("-", "_"))
    if preset is None:
        raise ConfigurationError(
            f"unknown Microsoft cloud {cloud!r}: use one of {', '.join(MS_CLOUDS)}"
        )
    return preset


def microsoft_mail_host(protocol: str, cloud: str | MicrosoftCloud = "global") -> tuple[str, int]:
    """``(host, port)`` of Exchange Online's ``protocol`` (``"imap"``, ``"pop3"`` or
    ``"smtp"``) in ``cloud``. Raises ConfigurationError for an unknown protocol or cloud,
    or where Microsoft does not document the host for that cloud (21Vianet)."""
    preset = microsoft_cloud(cloud)
    if protocol not in _MAIL_PORTS:
        raise ConfigurationError(f"protocol must be imap, pop3 or smtp, not {protocol!r}")
    host = getattr(preset, f"{protocol}_host")
    if host is None:
        raise ConfigurationError(
            f"Microsoft's documentation gives no {protocol} host for the {preset.name!r} "
            "cloud: pass the host your tenant's admin gives you"
        )
    return host, _MAIL_PORTS[protocol]


def _delegated(preset: MicrosoftCloud, offline: bool) -> tuple[str, ...]:
    scopes = preset.delegated_scopes()
    if scopes is None:  # pragma: no cover - every preset has a resource today
        raise ConfigurationError(
            f"no documented mail scope for the {preset.name!r} cloud: pass scope="
        )
    return (*scopes, MS_OFFLINE_ACCESS) if offline else scopes


def _app_only(preset: MicrosoftCloud) -> tuple[str, ...]:
    scope = preset.app_only_scope()
    if scope is None:  # pragma: no cover - every preset has a resource today
        raise ConfigurationError(
            f"no documented app-only scope for the {preset.name!r} cloud: pass scope="
        )
    return (scope,)


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
        scope: str | Iterable[str] | None = None,
        scopes: str | Iterable[str] | None = None,
        authority: str | None = None,
        cloud: str | MicrosoftCloud = "global",
        token_url: str | None = None,
        client_secret: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """The resource owner password credentials grant (no MFA; "Allow public client
        flows" must be on). Wrong credentials give PermanentTokenError (invalid_grant).
        ``cloud`` picks the sign-in authority and the default scopes (see
        :func:`microsoft_cloud`); ``authority=`` and ``scope=`` override it (``scopes=``, the old
        spelling, still works with a DeprecationWarning)."""
        preset = microsoft_cloud(cloud)
        scope = renamed_keyword("MicrosoftTokenProvider.ropc", "scope", scope, "scopes", scopes)
        scope = _delegated(preset, offline=False) if scope is None else scope
        authority = authority or preset.authority
        return cls(
            token_url or microsoft_endpoint(authority, tenant),
            PasswordGrant(username, password),
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
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
        scope: str | Iterable[str] | None = None,
        scopes: str | Iterable[str] | None = None,
        authority: str | None = None,
        cloud: str | MicrosoftCloud = "global",
        token_url: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """App-only tokens, with a client secret or ``certificate=(private_key_pem,
        certificate_pem)`` (a signed client assertion). Raises ConfigurationError unless
        exactly one is given, for an unreadable key or certificate, or without the
        ``cryptography`` package, or for an unknown ``cloud``."""
        preset = microsoft_cloud(cloud)
        scope = renamed_keyword(
            "MicrosoftTokenProvider.client_credentials", "scope", scope, "scopes", scopes
        )
        scope = _app_only(preset) if scope is None else scope
        authority = authority or preset.authority
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
            scope=scope,
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
        scope: str | Iterable[str] | None = None,
        scopes: str | Iterable[str] | None = None,
        authority: str | None = None,
        cloud: str | MicrosoftCloud = "global",
        token_url: str | None = None,
        client_secret: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """The refresh_token grant. Each response brings a new refresh token, used from
        then on and saved to ``store`` (pass one, or the newest token is lost at exit).
        ``cloud`` as for :meth:`ropc`."""
        preset = microsoft_cloud(cloud)
        scope = renamed_keyword(
            "MicrosoftTokenProvider.refresh_token", "scope", scope, "scopes", scopes
        )
        scope = _delegated(preset, offline=True) if scope is None else scope
        authority = authority or preset.authority
        return cls(
            token_url or microsoft_endpoint(authority, tenant),
            RefreshTokenGrant(refresh_token),
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            store=store,
            **options,
        )

    @classmethod
    def device_code(
        cls,
        client_id: str,
        *,
        tenant: str = "organizations",
        scope: str | Iterable[str] | None = None,
        scopes: str | Iterable[str] | None = None,
        on_prompt: PromptCallback | None = None,
        authority: str | None = None,
        cloud: str | MicrosoftCloud = "global",
        token_url: str | None = None,
        device_authorization_url: str | None = None,
        interval: float | None = None,
        account: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> MicrosoftTokenProvider:
        """The device code flow: ``on_prompt`` shows the user where to sign in (default:
        print to stderr); later refreshes use the refresh token it brings. ``account``
        names the user in the store key. ``cloud`` as for :meth:`ropc`."""
        preset = microsoft_cloud(cloud)
        scope = renamed_keyword(
            "MicrosoftTokenProvider.device_code", "scope", scope, "scopes", scopes
        )
        scope = _delegated(preset, offline=True) if scope is None else scope
        authority = authority or preset.authority
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
            scope=scope,
            store=store,
            **options,
        )
