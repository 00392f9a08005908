"""Access tokens: providers, the single-flight manager, OAuth 2.0 grants, token stores."""

from typing import TYPE_CHECKING

from mailoauth._util.lazy import lazy_exports

#: Where each public name is imported from, on first access (PEP 562): importing a
#: submodule does not import its siblings.
_LAZY = {
    "mailoauth.tokens.access_token": ["AccessToken", "TokenProvider", "utcnow"],
    "mailoauth.tokens.authcode": ["AuthorizationCodeGrant", "authorization_code_flow"],
    "mailoauth.tokens.discovery": ["ServerMetadata", "discover"],
    "mailoauth.tokens.endpoint": ["TokenEndpoint"],
    "mailoauth.tokens.google": ["GoogleTokenProvider"],
    "mailoauth.tokens.grants": [
        "ClientCredentialsGrant",
        "DeviceCodeGrant",
        "Grant",
        "JwtBearerGrant",
        "PasswordGrant",
        "RefreshTokenGrant",
    ],
    "mailoauth.tokens.manager": ["DEFAULT_REFRESH_MARGIN", "TokenManager", "wrap_provider"],
    "mailoauth.tokens.microsoft": [
        "MicrosoftCloud",
        "MicrosoftTokenProvider",
        "microsoft_cloud",
        "microsoft_mail_host",
    ],
    "mailoauth.tokens.oauth2": ["OAuth2TokenProvider", "ProviderOptions"],
    "mailoauth.tokens.keyring_store": ["KeyringTokenStore"],
    "mailoauth.tokens.redis_store": ["RedisTokenStore"],
    "mailoauth.tokens.responses": ["DeviceAuthorization", "parse_token_response"],
    "mailoauth.tokens.scopes": [
        "GOOGLE_MAIL_SCOPE",
        "GOOGLE_TOKEN_URL",
        "MS_APP_ONLY_SCOPE",
        "MS_AUTHORITY",
        "MS_DELEGATED_SCOPES",
        "MS_IMAP_SCOPE",
        "MS_OFFLINE_ACCESS",
        "MS_POP_SCOPE",
        "MS_SMTP_SCOPE",
    ],
    "mailoauth.tokens.static": ["StaticTokenProvider"],
    "mailoauth.tokens.stores": [
        "FileTokenStore",
        "LockingTokenStore",
        "MemoryTokenStore",
        "StoredCredential",
        "TokenStore",
    ],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

if TYPE_CHECKING:
    from mailoauth.tokens.access_token import AccessToken, TokenProvider, utcnow
    from mailoauth.tokens.authcode import AuthorizationCodeGrant, authorization_code_flow
    from mailoauth.tokens.discovery import ServerMetadata, discover
    from mailoauth.tokens.endpoint import TokenEndpoint
    from mailoauth.tokens.google import GoogleTokenProvider
    from mailoauth.tokens.grants import (
        ClientCredentialsGrant,
        DeviceCodeGrant,
        Grant,
        JwtBearerGrant,
        PasswordGrant,
        RefreshTokenGrant,
    )
    from mailoauth.tokens.keyring_store import KeyringTokenStore
    from mailoauth.tokens.manager import DEFAULT_REFRESH_MARGIN, TokenManager, wrap_provider
    from mailoauth.tokens.microsoft import (
        MicrosoftCloud,
        MicrosoftTokenProvider,
        microsoft_cloud,
        microsoft_mail_host,
    )
    from mailoauth.tokens.oauth2 import OAuth2TokenProvider, ProviderOptions
    from mailoauth.tokens.redis_store import RedisTokenStore
    from mailoauth.tokens.responses import DeviceAuthorization, parse_token_response
    from mailoauth.tokens.scopes import (
        GOOGLE_MAIL_SCOPE,
        GOOGLE_TOKEN_URL,
        MS_APP_ONLY_SCOPE,
        MS_AUTHORITY,
        MS_DELEGATED_SCOPES,
        MS_IMAP_SCOPE,
        MS_OFFLINE_ACCESS,
        MS_POP_SCOPE,
        MS_SMTP_SCOPE,
    )
    from mailoauth.tokens.static import StaticTokenProvider
    from mailoauth.tokens.stores import (
        FileTokenStore,
        LockingTokenStore,
        MemoryTokenStore,
        StoredCredential,
        TokenStore,
    )

__all__ = [
    "DEFAULT_REFRESH_MARGIN",
    "GOOGLE_MAIL_SCOPE",
    "GOOGLE_TOKEN_URL",
    "MS_APP_ONLY_SCOPE",
    "MS_AUTHORITY",
    "MS_DELEGATED_SCOPES",
    "MS_IMAP_SCOPE",
    "MS_OFFLINE_ACCESS",
    "MS_POP_SCOPE",
    "MS_SMTP_SCOPE",
    "AccessToken",
    "AuthorizationCodeGrant",
    "ClientCredentialsGrant",
    "DeviceAuthorization",
    "DeviceCodeGrant",
    "FileTokenStore",
    "GoogleTokenProvider",
    "Grant",
    "JwtBearerGrant",
    "KeyringTokenStore",
    "LockingTokenStore",
    "MemoryTokenStore",
    "MicrosoftCloud",
    "MicrosoftTokenProvider",
    "OAuth2TokenProvider",
    "PasswordGrant",
    "ProviderOptions",
    "RedisTokenStore",
    "RefreshTokenGrant",
    "ServerMetadata",
    "StaticTokenProvider",
    "StoredCredential",
    "TokenEndpoint",
    "TokenManager",
    "TokenProvider",
    "TokenStore",
    "authorization_code_flow",
    "discover",
    "microsoft_cloud",
    "microsoft_mail_host",
    "parse_token_response",
    "utcnow",
    "wrap_provider",
]
