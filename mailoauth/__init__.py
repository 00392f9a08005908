"""mailoauth: asyncio SMTP, IMAP and POP3 clients with OAuth 2.0 bearer tokens.

    from mailoauth import ImapClient, GoogleTokenProvider

    provider = GoogleTokenProvider(client_id, client_secret, refresh_token)
    async with ImapClient("imap.gmail.com", 993, "me@gmail.com", provider) as imap:
        await imap.select()

Asyncio only (aiosmtplib and aioimaplib are asyncio libraries).
"""

from typing import TYPE_CHECKING

from mailoauth._util.lazy import lazy_exports

# The errors are stdlib-only and imported here at once; every other public name is
# imported on first use (PEP 562), so that the sans-IO modules (mailoauth.pop3.protocol,
# mailoauth.sasl) import without the network libraries. See docs/architecture.md.
from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    InsecureTransportError,
    LimitExceededError,
    LockLostError,
    MailConnectionError,
    MailOAuthError,
    MailTimeoutError,
    PermanentTokenError,
    ProtocolError,
    TLSError,
    TokenError,
    TokenExpiredError,
    TransientTokenError,
    TransportError,
    UsageError,
)

#: Where each public name is imported from, on first access.
_LAZY = {
    "mailoauth._core.dialer": ["DialResult", "Dialer", "DirectDialer"],
    "mailoauth._core.proxy": ["ProxyDialer", "ProxyURL"],
    "mailoauth._core.settings": ["ConnectionSettings"],
    "mailoauth.imap.client": ["IdleEvent", "ImapClient"],
    "mailoauth.poll": [
        "FilePollStateStore",
        "Mailbox",
        "MailboxFailed",
        "MemoryPollStateStore",
        "NewMessage",
        "PollEvent",
        "PollStateStore",
        "Poller",
    ],
    "mailoauth.pop3.client": ["MailboxStat", "Pop3Client"],
    "mailoauth.security": ["SecurityOptions"],
    "mailoauth.smtp": ["SendResult", "SmtpClient", "SmtpPool"],
    "mailoauth.tokens": [
        "AccessToken",
        "FileTokenStore",
        "GoogleTokenProvider",
        "KeyringTokenStore",
        "MemoryTokenStore",
        "MicrosoftTokenProvider",
        "OAuth2TokenProvider",
        "RedisTokenStore",
        "StaticTokenProvider",
        "TokenManager",
        "TokenProvider",
        "TokenStore",
    ],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

if TYPE_CHECKING:
    from mailoauth._core.dialer import Dialer, DialResult, DirectDialer
    from mailoauth._core.proxy import ProxyDialer, ProxyURL
    from mailoauth._core.settings import ConnectionSettings
    from mailoauth.imap.client import IdleEvent, ImapClient
    from mailoauth.poll import (
        FilePollStateStore,
        Mailbox,
        MailboxFailed,
        MemoryPollStateStore,
        NewMessage,
        Poller,
        PollEvent,
        PollStateStore,
    )
    from mailoauth.pop3.client import MailboxStat, Pop3Client
    from mailoauth.security import SecurityOptions
    from mailoauth.smtp import SendResult, SmtpClient, SmtpPool
    from mailoauth.tokens import (
        AccessToken,
        FileTokenStore,
        GoogleTokenProvider,
        KeyringTokenStore,
        MemoryTokenStore,
        MicrosoftTokenProvider,
        OAuth2TokenProvider,
        RedisTokenStore,
        StaticTokenProvider,
        TokenManager,
        TokenProvider,
        TokenStore,
    )

__version__ = "0.1.0"

__all__ = [
    "AccessToken",
    "AuthenticationError",
    "CommandError",
    "ConfigurationError",
    "ConnectionLostError",
    "ConnectionSettings",
    "DialResult",
    "Dialer",
    "DirectDialer",
    "FilePollStateStore",
    "FileTokenStore",
    "GoogleTokenProvider",
    "IdleEvent",
    "ImapClient",
    "InsecureTransportError",
    "KeyringTokenStore",
    "LimitExceededError",
    "LockLostError",
    "MailConnectionError",
    "MailOAuthError",
    "MailTimeoutError",
    "Mailbox",
    "MailboxFailed",
    "MailboxStat",
    "MemoryPollStateStore",
    "MemoryTokenStore",
    "MicrosoftTokenProvider",
    "NewMessage",
    "OAuth2TokenProvider",
    "PermanentTokenError",
    "PollEvent",
    "PollStateStore",
    "Poller",
    "Pop3Client",
    "ProtocolError",
    "ProxyDialer",
    "ProxyURL",
    "RedisTokenStore",
    "SecurityOptions",
    "SendResult",
    "SmtpClient",
    "SmtpPool",
    "StaticTokenProvider",
    "TLSError",
    "TokenError",
    "TokenExpiredError",
    "TokenManager",
    "TokenProvider",
    "TokenStore",
    "TransientTokenError",
    "TransportError",
    "UsageError",
    "__version__",
]
