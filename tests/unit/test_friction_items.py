"""Issue 15, "what the new user met": the items that need no socket, one test each
(named test_item_N_...); the others are in tests/integration/test_friction.py."""

from __future__ import annotations

import errno
import socket
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailoauth import GoogleTokenProvider, MicrosoftTokenProvider

# -- 9. one spelling of scope= ------------------------------------------------------------


def _service_account() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {"client_email": "robot@example.iam.gserviceaccount.com", "private_key": pem}


def test_item_9_scope_is_one_spelling_and_scopes_is_deprecated() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one spelling warns nowhere
        providers = [
            MicrosoftTokenProvider.ropc("app", "u@example.test", "pw", scope="a b"),
            MicrosoftTokenProvider.client_credentials("app", "s", tenant="t", scope="a b"),
            MicrosoftTokenProvider.refresh_token("app", "rt", scope="a b"),
            MicrosoftTokenProvider.device_code("app", scope="a b"),
            GoogleTokenProvider("app", "s", "rt", scope="a b"),
            GoogleTokenProvider.from_service_account(_service_account(), scope="a b"),
        ]
    for provider in providers:
        assert provider.store_key.endswith("|a b")
    with pytest.warns(
        DeprecationWarning, match=r"refresh_token\(scopes=...\) is deprecated"
    ) as rec:
        old = MicrosoftTokenProvider.refresh_token("app", "rt", scopes=["a", "b"])
    assert rec[0].filename == __file__  # points at the caller's line
    assert old.store_key == providers[2].store_key
    with pytest.warns(DeprecationWarning, match="pass scope="):
        google = GoogleTokenProvider.from_service_account(_service_account(), scopes="a b")
    assert google.store_key.endswith("|a b")
    with pytest.raises(TypeError, match="both scope= and"):
        MicrosoftTokenProvider.ropc("app", "u", "pw", scope="a", scopes="b")


# -- 3. nothing that looks like a token is printed, whatever slot it came in -----------------

TOKENS = (
    "ya29.a0AfH6SMBx3kq-Jz_8vV0nTq2Lw9YpR4cE",  # Google's shape
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln",  # a JWT
    "1//0gLr4bG9x7Yq2Wk8Zt-Lp3Qm5Nv6Rs1Ju0Ih9Gf",  # a Google refresh token's shape
    "at-8BqdcM1jfgG_f_I8yyz1Xj0E82XWtZes",  # the sandbox's
)
NOT_TOKENS = (
    "outlook.office365.com",
    "Outlook.Office365.com",
    "user1@gmail.com",
    "9e5f94bc-e8a4-4e73-b8be-63364c29d753",  # a client or tenant id
    "deadbeefdeadbeefdeadbeefdeadbeef",
    "IMAP.AccessAsUser.All",
    "test_item_6_debug_works_wherever_it_0",
    "support\\shared",
)


def test_item_3_one_token_test_hides_tokens_in_any_slot() -> None:
    from mailoauth._core.settings import ConnectionSettings
    from mailoauth._util.text import hide_tokens, looks_like_token, shown
    from mailoauth.errors import ConfigurationError
    from mailoauth.imap.client import ImapClient

    assert all(looks_like_token(t) for t in TOKENS)
    assert not any(looks_like_token(v) for v in NOT_TOKENS)
    for token in TOKENS:
        assert token not in shown(token, "username")
        line = hide_tokens(f"logged in as {token} (at {token}): fine")
        assert token not in line and "…" in line
        # Swapped username and token: refused, neither echoed.
        with pytest.raises(ConfigurationError, match="seem swapped") as info:
            ImapClient("imap.gmail.com", 993, token, "me@gmail.com")
        assert token not in str(info.value) and "me@gmail.com" not in str(info.value)
        with pytest.raises(ConfigurationError, match="host looks like an access token") as info:
            ConnectionSettings(token, 993)
        assert token not in str(info.value)
    for value in NOT_TOKENS:
        assert shown(value, "username") == value
    url = "https://h.example/auth?code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert hide_tokens(f"open {url}") == f"open {url}"  # a URL to open stays whole


# -- 5. every hint fits where it is shown ----------------------------------------------------


def test_item_5_hints_fit_the_command_and_what_happened() -> None:
    from mailoauth._core.auth import BARE_TOKEN_FIX
    from mailoauth._core.connection import PRIVATE_CA_FIX
    from mailoauth._providers import HINT_FIXES_IN_CHECK, auth_failure_hint
    from mailoauth.cli.diagnose import Situation, diagnose, for_the_command
    from mailoauth.tokens.static import PASS_A_PROVIDER

    # "even after a refresh" only when a stored credential was refreshed.
    bare = Situation("imap", host="mail.example.test", username="me", kind="auth")
    [text] = diagnose(bare)
    assert text.startswith("the server rejected the token:") and "refresh" not in text
    [text] = diagnose(
        Situation("imap", host="h", username="me", kind="auth", has_refresh_token=True)
    )
    assert "even after a refresh" in text
    # The library's fixes name arguments; the command's name options.
    exchange = auth_failure_hint("imap", "NO AUTHENTICATE failed.", "outlook.office365.com")
    assert HINT_FIXES_IN_CHECK in exchange
    for library in (BARE_TOKEN_FIX, PASS_A_PROVIDER, PRIVATE_CA_FIX, exchange):
        reworded = for_the_command(f"it failed; {library}")
        for word in ("TokenProvider", "token provider", "ssl_context=", "mailoauth check names"):
            assert word not in reworded
    assert "--store-key" in for_the_command(BARE_TOKEN_FIX)
    assert "--cafile" in for_the_command(PRIVATE_CA_FIX)


# -- 1. why a connection failed, in words ------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            "mail.test:993 refused the connection",
        ),
        (
            OSError(errno.ENETUNREACH, "Network is unreachable"),
            "the network or host is unreachable",
        ),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "the network or host is unreachable"),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "'mail.test' does not resolve",
        ),
    ],
)
def test_item_1_connect_failures_say_what_happened(raised: OSError, expected: str) -> None:
    from mailoauth._core.connection import map_io_errors
    from mailoauth.errors import MailConnectionError

    with (
        pytest.raises(MailConnectionError) as info,
        map_io_errors("connecting to", "mail.test", 993),
    ):
        raise raised
    message = str(info.value)
    assert expected in message and "to:" not in message and "lost" not in message


def test_item_1_a_connection_lost_later_says_lost_and_while_doing_what() -> None:
    from mailoauth._core.connection import map_io_errors
    from mailoauth.errors import ConnectionLostError

    with (
        pytest.raises(ConnectionLostError) as info,
        map_io_errors("reading from", "mail.test", 993),
    ):
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert str(info.value) == (
        "the connection to mail.test:993 was lost while reading from it: Connection reset by peer"
    )
