"""The contract's public names: __all__ is exact and the constructors keep their order."""

from __future__ import annotations

import inspect

import mailoauth

EXPECTED = {
    "FilePollStateStore",
    "Mailbox",
    "MailboxFailed",
    "MemoryPollStateStore",
    "NewMessage",
    "PollEvent",
    "Poller",
    "PollStateStore",
    "AccessToken",
    "AuthenticationError",
    "CommandError",
    "ConfigurationError",
    "ConnectionLostError",
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
    "MailboxStat",
    "Pop3Client",
    "RedisTokenStore",
    "MemoryTokenStore",
    "MicrosoftTokenProvider",
    "OAuth2TokenProvider",
    "PermanentTokenError",
    "ProtocolError",
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
}


def test_all_is_exact() -> None:
    assert set(mailoauth.__all__) == EXPECTED
    for name in mailoauth.__all__:
        assert hasattr(mailoauth, name), name


def test_positional_order_of_clients() -> None:
    for cls in (mailoauth.SmtpClient, mailoauth.ImapClient, mailoauth.Pop3Client):
        params = list(inspect.signature(cls).parameters)
        assert params[:5] == ["host", "port", "username", "token", "security"]


def test_errors_inherit_stdlib_where_it_fits() -> None:
    assert issubclass(mailoauth.MailTimeoutError, TimeoutError)
    assert issubclass(mailoauth.MailConnectionError, ConnectionError)
    assert issubclass(mailoauth.ConfigurationError, ValueError)
    for name in mailoauth.__all__:
        obj = getattr(mailoauth, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, mailoauth.MailOAuthError), name
