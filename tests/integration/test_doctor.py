"""The app-only doctor, end to end: the Office 365 personality put into each Exchange
tenant state (:class:`~mailoauth.testing.personality.TenantState`) and the fake token
endpoint answering Entra's and Google's errors, each diagnosis checked twice: through
the library (the hint in the exception) and through the real command (``mailoauth
check``). Both read one table, :data:`mailoauth._providers.DIAGNOSES`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from mailoauth import (
    AuthenticationError,
    ImapClient,
    OAuth2TokenProvider,
    PermanentTokenError,
    Pop3Client,
    SecurityOptions,
    SmtpClient,
)
from mailoauth._providers import GOOGLE_TOKEN_URL, diagnosis
from mailoauth.cli import main
from mailoauth.cli.profiles import Profile, save_profile
from mailoauth.testing.oauth_server import ScriptedResponse
from mailoauth.testing.personality import Personality, TenantState
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens import FileTokenStore, RefreshTokenGrant, StoredCredential

S = SecurityOptions

#: state, the protocol it is seen on, the table entry `mailoauth check` must print,
#: and the reply Exchange gives.
STATES = [
    (TenantState.WRONG_SERVICE_PRINCIPAL, "imap", "exchange_wrong_service_principal",
     "NO AUTHENTICATE failed."),
    (TenantState.NO_MAILBOX_PERMISSION, "pop3", "exchange_no_mailbox_permission",
     "-ERR Authentication failure: unknown user name or bad password."),
    (TenantState.IMAP_DISABLED, "imap", "exchange_imap_disabled", "NO AUTHENTICATE failed."),
    (TenantState.POP_DISABLED, "pop3", "exchange_pop_disabled",
     "-ERR Authentication failure: unknown user name or bad password."),
    (TenantState.SMTP_AUTH_DISABLED, "smtp", "exchange_smtp_auth_disabled",
     "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"),
    (TenantState.SECURITY_DEFAULTS, "smtp", "exchange_security_defaults",
     "535 5.7.139 Authentication unsuccessful, user is locked by your organization's "
     "security defaults policy"),
    (TenantState.MAILBOX_UNAVAILABLE, "smtp", "exchange_mailbox_unavailable",
     "535 5.7.3 Authentication unsuccessful"),
]  # fmt: skip
#: Replies that name their cause: the library's hint is the table's entry itself.
PRECISE = {TenantState.SMTP_AUTH_DISABLED, TenantState.SECURITY_DEFAULTS}


@pytest.fixture(scope="module")
def office365() -> Iterator[MailSandbox]:
    with MailSandbox(personality=Personality.OFFICE365) as box:
        yield box


@pytest_asyncio.fixture
async def box() -> AsyncIterator[MailSandbox]:
    async with MailSandbox(personality=Personality.OFFICE365) as sandbox:
        yield sandbox


def _client(
    box: MailSandbox, protocol: str, user: str, provider: OAuth2TokenProvider
) -> SmtpClient | ImapClient | Pop3Client:
    # Exchange Online's own host names, reached through the sandbox's dialer.
    host, port = {
        "smtp": ("smtp.office365.com", 465),
        "imap": ("outlook.office365.com", 993),
        "pop3": ("outlook.office365.com", 995),
    }[protocol]
    cls: type[SmtpClient] | type[ImapClient] | type[Pop3Client] = {
        "smtp": SmtpClient,
        "imap": ImapClient,
        "pop3": Pop3Client,
    }[protocol]
    return cls(
        host,
        port,
        user,
        provider,
        S.SSL_IMPLICIT,
        dialer=box.dialer,
        ssl_context=box.ssl_context,
    )


# -- the library ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(("state", "protocol", "key", "reply"), STATES, ids=lambda v: str(v))
async def test_library_error_for_each_tenant_state(
    box: MailSandbox, state: TenantState, protocol: str, key: str, reply: str
) -> None:
    user = box.user(f"{state.value}@contoso.test")
    provider = OAuth2TokenProvider(
        user.token_url, RefreshTokenGrant(user.refresh_token), client_id="doctor"
    )
    others = [p for p in ("smtp", "imap", "pop3") if p != protocol]
    async with _client(box, protocol, user.username, provider):
        pass  # healthy: the token is good
    box.tenant_state(user.username, state.value)
    with pytest.raises(AuthenticationError) as info:
        async with _client(box, protocol, user.username, provider):
            pass
    assert info.value.server_reply.startswith(reply)
    if state in PRECISE:
        assert diagnosis(key).text() in str(info.value)
    else:  # Exchange's bare refusal: the hint names every cause it may stand for
        assert "Exchange Online gives the same answer when" in str(info.value)
        assert diagnosis(key).meaning in str(info.value)
    # A protocol switch leaves the others working; the rest refuse every protocol.
    affects_others = state not in PRECISE | {TenantState.IMAP_DISABLED, TenantState.POP_DISABLED}
    for other in others:
        if affects_others:
            with pytest.raises(AuthenticationError):
                async with _client(box, other, user.username, provider):
                    pass
        else:
            async with _client(box, other, user.username, provider):
                pass
    box.tenant_state(user.username, None)  # the admin fixed it
    async with _client(box, protocol, user.username, provider):
        pass
    await provider.aclose()


# -- the command ------------------------------------------------------------------------


def check_args(box: MailSandbox, protocol: str, *extra: str) -> list[str]:
    port = {"smtp": box.smtp.tls_port, "imap": box.imap.tls_port, "pop3": box.pop3.tls_port}
    return [
        "check", protocol, "127.0.0.1", "--port", str(port[protocol]), "--security", "ssl",
        "--cafile", str(box.ca.files.ca), "--timeout", "5", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(("state", "protocol", "key", "reply"), STATES, ids=lambda v: str(v))
def test_check_names_the_fix_for_each_tenant_state(
    office365: MailSandbox,
    capsys: pytest.CaptureFixture[str],
    state: TenantState,
    protocol: str,
    key: str,
    reply: str,
) -> None:
    user = office365.user(f"check-{state.value}@contoso.test")
    token = user.access_token()
    argv = check_args(office365, protocol, "--user", user.username, "--token", token)
    office365.tenant_state(user.username, state)
    assert main(argv) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"server reply: {reply}" in out
    # The command fills in the mailbox it checked.
    text = diagnosis(key).text().replace("<mailbox>", user.username)
    assert " ".join(text.split()) in out
    assert token not in out
    office365.tenant_state(user.username, None)
    assert main(argv) == 0
    assert "all steps passed" in capsys.readouterr().out


# -- the token endpoint -------------------------------------------------------------------

AADSTS = [
    ("invalid_client", "AADSTS7000222: The provided client secret keys for app 'x' are "
     "expired.", "aadsts_secret_expired"),
    ("invalid_grant", "AADSTS65001: The user or administrator has not consented to use "
     "the application.", "aadsts_consent_missing"),
    ("invalid_request", "AADSTS90002: Tenant 'contoso.onmicrosft.com' not found.",
     "aadsts_tenant_not_found"),
    ("invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.",
     "aadsts_refresh_idle"),
    ("invalid_grant", "AADSTS70043: The refresh token has expired or is invalid due to "
     "sign-in frequency checks by conditional access.", "aadsts_sign_in_frequency"),
]  # fmt: skip


@pytest.mark.parametrize(("error", "description", "key"), AADSTS, ids=lambda v: str(v)[:14])
def test_token_endpoint_errors_library_and_check(
    office365: MailSandbox,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    error: str,
    description: str,
    key: str,
) -> None:
    user = office365.user(f"grant-{key}@contoso.test")
    answer = ScriptedResponse(400, {"error": error, "error_description": description})
    office365.oauth.script(answer)

    async def library() -> None:
        provider = OAuth2TokenProvider(
            user.token_url, RefreshTokenGrant(user.refresh_token), client_id="doctor"
        )
        try:
            with pytest.raises(PermanentTokenError) as info:
                await provider.get_access_token()
        finally:
            await provider.aclose()
        assert diagnosis(key).text() in str(info.value)

    asyncio.run(library())

    store = tmp_path / "tokens.json"
    profile = Profile("work", "oauth2", user.token_url, "doctor", username=user.username)
    save_profile(store, profile)
    credential = StoredCredential(refresh_token=user.refresh_token)
    asyncio.run(FileTokenStore(store).save("work", credential))
    office365.oauth.script(answer)
    argv = check_args(office365, "imap", "--store", str(store), "--store-key", "work")
    assert main(argv) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "✗ TOKEN" in out and " ".join(diagnosis(key).text().split()) in out
    assert user.refresh_token not in out


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("error", "description", "keys"),
    [
        ("invalid_grant", "Token has been expired or revoked.",
         ("google_testing_app", "google_token_limit")),
        ("unauthorized_client", "Client is unauthorized to retrieve access tokens using "
         "this method, or client not authorized for any of the scopes requested.",
         ("google_delegation_scope",)),
    ],
)  # fmt: skip
async def test_google_token_errors_name_their_causes(
    box: MailSandbox, error: str, description: str, keys: tuple[str, ...]
) -> None:
    # Google's real token URL, routed to the fake server: the library knows the vendor.
    user = box.user("sa-subject@workspace.test")
    box.oauth.script(ScriptedResponse(400, {"error": error, "error_description": description}))
    async with box.http_client() as http:
        provider = OAuth2TokenProvider(
            GOOGLE_TOKEN_URL,
            RefreshTokenGrant(user.refresh_token),
            client_id="doctor",
            http_client=http,
        )
        with pytest.raises(PermanentTokenError) as info:
            await provider.get_access_token()
    for key in keys:
        assert diagnosis(key).text() in str(info.value)


# -- docs/guides/app-only.md ----------------------------------------------------------


def test_app_only_guide_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("cryptography")
    guide = Path(__file__).resolve().parents[2] / "docs" / "guides" / "app-only.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(encoding="utf-8"), re.S)
    runnable = next(b for b in blocks if "async def main" in b)
    namespace: dict[str, object] = {"__name__": "app_only_guide"}
    exec(compile(runnable, str(guide), "exec"), namespace)
    main_coro = namespace["main"]
    assert callable(main_coro)
    assert asyncio.run(main_coro()) == 0
    assert "app-only IMAP into reports@contoso.test: 0 messages" in capsys.readouterr().out


# -- dying grants in the Poller (issue 11 section 5: the cause named) ------------------


@pytest.mark.asyncio
async def test_poller_failure_names_the_dead_grants_cause(box: MailSandbox) -> None:
    from mailoauth.poll import Mailbox, MailboxFailed, Poller

    user = box.user("idle90@contoso.test")
    provider = OAuth2TokenProvider(
        user.token_url, RefreshTokenGrant(user.refresh_token), client_id="doctor"
    )
    description = "AADSTS700082: The refresh token has expired due to inactivity."
    box.oauth.script(
        ScriptedResponse(400, {"error": "invalid_grant", "error_description": description})
    )
    mailbox = Mailbox(
        "imap",
        box.imap.host,
        box.imap.tls_port,
        user.username,
        provider,
        S.SSL_IMPLICIT,
        ssl_context=box.ssl_context,
    )
    async with Poller([mailbox], interval=0.3) as poller:
        async with asyncio.timeout(30):
            event = await anext(aiter(poller))
    await provider.aclose()
    assert isinstance(event, MailboxFailed) and event.permanent
    assert isinstance(event.error, PermanentTokenError)
    assert event.error.error_description == description
    # The failure says what happened and what to do, from the table.
    assert diagnosis("aadsts_refresh_idle").text() in str(event.error)
    assert str(event.error) == str(poller.failed[mailbox.key])


def test_which_protocols_each_tenant_state_refuses() -> None:
    replies = Personality.OFFICE365.replies
    refused = {
        state: {p for p in ("smtp", "imap", "pop3") if state.refusal(p, replies) is not None}
        for state in TenantState
    }
    everything = {"smtp", "imap", "pop3"}
    assert refused == {
        TenantState.WRONG_SERVICE_PRINCIPAL: everything,
        TenantState.NO_MAILBOX_PERMISSION: everything,
        TenantState.MAILBOX_UNAVAILABLE: everything,
        TenantState.IMAP_DISABLED: {"imap"},
        TenantState.POP_DISABLED: {"pop3"},
        TenantState.SMTP_AUTH_DISABLED: {"smtp"},
        TenantState.SECURITY_DEFAULTS: {"smtp"},
    }
    # Each state is named after the table entry that explains it.
    for state in TenantState:
        assert diagnosis(f"exchange_{state.value}").vendor == "microsoft"
