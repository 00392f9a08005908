"""The contract's public names: __all__ is exact and the constructors keep their order."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

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
    "ConnectionSettings",
    "DialResult",
    "Dialer",
    "DirectDialer",
    "ProxyDialer",
    "ProxyURL",
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
    assert issubclass(mailoauth.MailTimeoutError, mailoauth.TransportError)
    assert issubclass(mailoauth.MailConnectionError, mailoauth.TransportError)
    assert not issubclass(mailoauth.UsageError, mailoauth.ConfigurationError)
    for name in mailoauth.__all__:
        obj = getattr(mailoauth, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, mailoauth.MailOAuthError), name


# The lazy package roots (PEP 562, mailoauth/_util/lazy.py): each lists its names twice,
# in the table read at run time and in the TYPE_CHECKING imports that type checkers read.
LAZY_PACKAGES = [
    "mailoauth",
    "mailoauth.tokens",
    "mailoauth.pop3",
    "mailoauth.poll",
    "mailoauth.poll.fleet",
    "mailoauth.smtp",
    "mailoauth.testing",
]


def _type_checking_imports(module: ModuleType) -> dict[str, str]:
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for child in node.body:
                assert isinstance(child, ast.ImportFrom) and child.module is not None
                found.update((alias.name, child.module) for alias in child.names)
    return found


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_lazy_table_and_type_checking_imports_agree(name: str) -> None:
    module = importlib.import_module(name)
    table = {n: mod for mod, names in module._LAZY.items() for n in names}
    assert table == _type_checking_imports(module)
    assert set(table) <= set(module.__all__)


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_every_lazy_name_loads_and_is_listed_by_dir(name: str) -> None:
    module = importlib.import_module(name)
    for public in module.__all__:
        assert public in dir(module), public
        value = getattr(module, public)
        assert vars(module)[public] is value  # cached: the next access is a plain read
    with pytest.raises(AttributeError, match=f"module '{name}' has no attribute 'nope'"):
        _ = module.nope


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from mailoauth import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(mailoauth.__all__)
