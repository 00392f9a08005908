"""mailoauth: asyncio SMTP, IMAP and POP3 clients with OAuth 2.0 bearer tokens.

    from mailoauth import ImapClient, GoogleTokenProvider

    provider = GoogleTokenProvider(client_id, client_secret, refresh_token)
    async with ImapClient("imap.gmail.com", 993, "me@gmail.com", provider) as imap:
        await imap.select()

Asyncio only (aiosmtplib and aioimaplib are asyncio libraries).
"""

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
)
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
from mailoauth.smtp import SendResult, SmtpClient
from mailoauth.tokens import (
    AccessToken,
    FileTokenStore,
    GoogleTokenProvider,
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
    "FilePollStateStore",
    "FileTokenStore",
    "GoogleTokenProvider",
    "IdleEvent",
    "ImapClient",
    "InsecureTransportError",
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
    "RedisTokenStore",
    "SecurityOptions",
    "SendResult",
    "SmtpClient",
    "StaticTokenProvider",
    "TLSError",
    "TokenError",
    "TokenExpiredError",
    "TokenManager",
    "TokenProvider",
    "TokenStore",
    "TransientTokenError",
    "__version__",
]
