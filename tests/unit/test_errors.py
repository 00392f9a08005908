"""The exception tree: its shape, the one ``retryable`` notion, and the structured
fields of CommandError and AuthenticationError (pure: no sockets)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailoauth.errors as errors_module
from mailoauth.errors import (
    PERMANENT_RESPONSE_CODES,
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
    _NotOpenError,
    _NotSelectedError,
)
from mailoauth.imap.parsing import parse_response_code
from mailoauth.poll import backoff
from mailoauth.smtp import enhanced_status

TREE: dict[type[BaseException], tuple[type[BaseException], ...]] = {
    ConfigurationError: (MailOAuthError, ValueError),
    InsecureTransportError: (ConfigurationError,),
    UsageError: (MailOAuthError,),
    TokenError: (MailOAuthError,),
    TokenExpiredError: (TokenError,),
    PermanentTokenError: (TokenError,),
    TransientTokenError: (TokenError,),
    LockLostError: (TokenError,),
    AuthenticationError: (MailOAuthError,),
    TransportError: (MailOAuthError,),
    MailConnectionError: (TransportError, ConnectionError),
    TLSError: (MailConnectionError,),
    ConnectionLostError: (MailConnectionError,),
    MailTimeoutError: (TransportError, TimeoutError),
    ProtocolError: (MailOAuthError,),
    LimitExceededError: (ProtocolError,),
    CommandError: (MailOAuthError,),
}


@pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
def test_tree_shape(cls: type[BaseException]) -> None:
    for parent in TREE[cls]:
        assert issubclass(cls, parent)


def test_every_public_error_is_in_the_tree_and_drawn_in_the_docstring() -> None:
    names = {n for n in errors_module.__all__ if n.endswith("Error")}
    assert names == {c.__name__ for c in TREE} | {"MailOAuthError"}
    doc = errors_module.__doc__ or ""
    for name in names:
        assert f" {name}" in doc, name


@pytest.mark.parametrize(
    "cls", [UsageError, ConfigurationError, TokenError, AuthenticationError, CommandError]
)
def test_misuse_auth_and_commands_are_not_transport_errors(cls: type[BaseException]) -> None:
    assert not issubclass(cls, TransportError)
    assert not issubclass(UsageError, ConfigurationError | ConnectionError)


RETRYABLE = [
    TransportError("network"),
    MailConnectionError("refused"),
    ConnectionLostError("reset"),
    TLSError("handshake"),
    MailTimeoutError("timed out"),
    TransientTokenError("503", status_code=503),
    LockLostError("lease lapsed"),
    ProtocolError("garbage"),
    LimitExceededError("line too long"),
    AuthenticationError("try later", temporary=True),
    CommandError("busy", response_code="UNAVAILABLE"),
    CommandError("greylisted", code=451, enhanced_code="4.7.1"),
    CommandError("no code", reply="NO Server busy"),
]
NOT_RETRYABLE = [
    MailOAuthError("root"),
    UsageError("connect() first"),
    ConfigurationError("bad port"),
    InsecureTransportError("plaintext"),
    TokenError("generic"),
    TokenExpiredError("static token expired"),
    PermanentTokenError("invalid_grant", error="invalid_grant"),
    AuthenticationError("rejected twice"),
    CommandError("no such folder", response_code="NONEXISTENT"),
    CommandError("rejected", code=550, enhanced_code="5.7.1"),
    CommandError("no IDLE", command="IDLE", retryable=False),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: f"{type(e).__name__}-{e}")
def test_retryable(exc: MailOAuthError) -> None:
    assert exc.retryable is True
    assert backoff.is_permanent(exc) is False  # the poller reads the same property


@pytest.mark.parametrize("exc", NOT_RETRYABLE, ids=lambda e: f"{type(e).__name__}-{e}")
def test_not_retryable(exc: MailOAuthError) -> None:
    assert exc.retryable is False
    assert backoff.is_permanent(exc) is True


def test_the_old_names_say_the_same_as_retryable() -> None:
    assert AuthenticationError("x", temporary=True).temporary is True
    assert AuthenticationError("x").temporary is False
    assert issubclass(TransientTokenError, TokenError)
    assert TransientTokenError("x").retryable and not PermanentTokenError("x").retryable


def test_retryable_is_read_only() -> None:
    exc = CommandError("x", code=550)
    with pytest.raises(AttributeError):
        exc.retryable = True  # type: ignore[misc]


@pytest.mark.parametrize("code", sorted(PERMANENT_RESPONSE_CODES))
def test_each_permanent_response_code(code: str) -> None:
    assert not CommandError("x", response_code=code).retryable
    assert not CommandError("x", response_code=code.lower()).retryable  # case-insensitive
    assert backoff.PERMANENT_RESPONSE_CODES is PERMANENT_RESPONSE_CODES


def test_explicit_fields_are_kept_and_win_over_the_text() -> None:
    exc = CommandError(
        "m",
        command="MAIL",
        reply="451 4.3.0 try later",
        code=550,
        enhanced_code="5.1.8",
        host="smtp.example.test",
        port=587,
    )
    assert (exc.code, exc.enhanced_code, exc.response_code) == (550, "5.1.8", None)
    assert (exc.host, exc.port, exc.command) == ("smtp.example.test", 587, "MAIL")
    assert not exc.retryable


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("550 5.7.1 relaying denied", (550, "5.7.1", None)),
        ("421 too busy", (421, None, None)),
        ("NO [NONEXISTENT] Unknown Mailbox", (None, None, "NONEXISTENT")),
        ("NO [BADCHARSET (UTF-8)] no", (None, None, "BADCHARSET")),
        ("-ERR [SYS/TEMP] try later", (None, None, "SYS/TEMP")),
        ("-ERR [in-use] locked", (None, None, "IN-USE")),
        ("NO Server busy", (None, None, None)),
        ("", (None, None, None)),
    ],
)
def test_codes_read_from_the_reply_when_not_given(
    reply: str, expected: tuple[int | None, str | None, str | None]
) -> None:
    exc = CommandError("m", reply=reply)
    assert (exc.code, exc.enhanced_code, exc.response_code) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.7.1 Relaying denied", "5.7.1"),
        ("4.7.0 Temporary authentication failure", "4.7.0"),
        ("2.1.5 Ok", "2.1.5"),
        (" 5.1.10 Recipient not found", "5.1.10"),
        ("5.7.139 Authentication unsuccessful", "5.7.139"),
        ("Relaying denied 5.7.1", None),
        ("5.7.1234 too many digits", None),
        ("3.1.1 not a class", None),
        ("", None),
    ],
)
def test_enhanced_status(text: str, expected: str | None) -> None:
    assert enhanced_status(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[UNAVAILABLE] Try again", "UNAVAILABLE"),
        ("[nonexistent] no such mailbox", "NONEXISTENT"),
        ("[BADCHARSET (UTF-8 US-ASCII)] not supported", "BADCHARSET"),
        ("Server busy [LIMIT]", None),
        ("[UNCLOSED Try", None),
        ("", None),
    ],
)
def test_imap_response_code(text: str, expected: str | None) -> None:
    assert parse_response_code(text) == expected


def test_authentication_error_carries_host_and_port() -> None:
    exc = AuthenticationError("m", host="imap.example.test", port=993, mechanism="XOAUTH2")
    assert (exc.host, exc.port, exc.mechanism, exc.retryable) == (
        "imap.example.test",
        993,
        "XOAUTH2",
        False,
    )
    assert AuthenticationError("m").host == "" and AuthenticationError("m").port is None


def _raise_sites(name: str) -> list[tuple[str, int, set[str]]]:
    """Every ``name(...)`` call in the package: (file, line, keyword names)."""
    root = Path(errors_module.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == name
            ):
                keywords = {k.arg for k in node.keywords if k.arg is not None}
                found.append((str(path.relative_to(root)), node.lineno, keywords))
    return found


@pytest.mark.parametrize("name", ["CommandError", "AuthenticationError"])
def test_every_raise_site_names_the_server(name: str) -> None:
    sites = _raise_sites(name)
    assert len(sites) >= 5  # the walk found the clients' raise sites
    missing = [(f, line) for f, line, keywords in sites if not {"host", "port"} <= keywords]
    assert missing == []


def test_every_command_error_says_what_was_refused() -> None:
    for path, line, keywords in _raise_sites("CommandError"):
        assert "command" in keywords, (path, line)


def test_the_deprecated_bases_of_usage_error() -> None:
    not_open = _NotOpenError("connect() first")
    assert isinstance(not_open, UsageError) and isinstance(not_open, ConnectionLostError)
    assert not not_open.retryable and backoff.is_permanent(not_open)
    not_selected = _NotSelectedError("select() first")
    assert isinstance(not_selected, UsageError) and isinstance(not_selected, ConfigurationError)
    assert isinstance(not_selected, ValueError) and not not_selected.retryable
    assert not issubclass(UsageError, ConnectionLostError | ConfigurationError)
