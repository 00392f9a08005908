"""Re-consent without a restart: a mailbox whose grant dies is reported, its owner is
asked (device code flow, the test acting as the owner), the other mailboxes go on, and
the mailbox resumes by itself once the new grant is in the token store. Against real
Dovecot introspecting at the fake OAuth server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from mailoauth.errors import ConfigurationError, PermanentTokenError
from mailoauth.poll import (
    Mailbox,
    MailboxFailed,
    MemoryPollStateStore,
    NewMessage,
    Poller,
    PollStateStore,
    ReconsentingProvider,
    ReconsentRequest,
)
from mailoauth.security import SecurityOptions
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.tokens import (
    DeviceAuthorization,
    FileTokenStore,
    MemoryTokenStore,
    OAuth2TokenProvider,
    RefreshTokenGrant,
    StoredCredential,
    TokenStore,
)
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

WAIT = 30.0  # seconds any expected event may take (shared, loaded CI machines)


def new_user() -> str:
    return f"r{uuid.uuid4().hex[:10]}@example.test"


def pop3_box(ms: MailServers, user: str, provider: OAuth2TokenProvider) -> Mailbox:
    """POP3 logs in at every poll, so a dead grant shows at the next one."""
    return Mailbox(
        "pop3",
        "localhost",
        ms.dovecot.pop3s_port,
        user,
        provider,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=ms.client_context(),
    )


def provider_for(ms: MailServers, user: str, store: TokenStore) -> OAuth2TokenProvider:
    rt = ms.oauth.issue_refresh_token(user, client_id="poller-app")
    return OAuth2TokenProvider(
        ms.oauth.token_url, RefreshTokenGrant(rt), client_id="poller-app", store=store
    )


def deliver(ms: MailServers, user: str, subject: str) -> None:
    ms.dovecot.deliver(user, f"From: a@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n")


async def baselines(store: PollStateStore, boxes: list[Mailbox]) -> None:
    async with asyncio.timeout(WAIT):
        pending = list(boxes)
        while pending:
            pending = [b for b in pending if await store.load(b.key) is None]
            await asyncio.sleep(0.02 if pending else 0)


async def next_message(poller: Poller, failures: list[MailboxFailed]) -> NewMessage:
    async with asyncio.timeout(WAIT):
        async for event in poller:
            if isinstance(event, MailboxFailed):
                failures.append(event)
                continue
            return event
    raise AssertionError("the poller stopped")


async def test_dead_grant_is_healed_by_the_owner_while_the_others_go_on(
    mail_servers: MailServers, tmp_path: Path
) -> None:
    ms = mail_servers
    alive, dying = new_user(), new_user()
    tokens = FileTokenStore(tmp_path / "tokens.json")
    providers = {u: provider_for(ms, u, tokens) for u in (alive, dying)}
    boxes = [pop3_box(ms, u, providers[u]) for u in (alive, dying)]
    requests: list[ReconsentRequest] = []
    prompts: list[DeviceAuthorization] = []
    prompted = asyncio.Event()

    async def on_prompt(auth: DeviceAuthorization) -> None:
        prompts.append(auth)  # what reaches the owner: a URL and a code
        prompted.set()

    async def on_reconsent(request: ReconsentRequest) -> None:
        requests.append(request)
        await request.sign_in_with_device_code(
            ms.oauth.device_authorization_url, on_prompt=on_prompt, interval=0.05
        )

    state = MemoryPollStateStore()
    failures: list[MailboxFailed] = []
    async with Poller(
        boxes,
        state_store=state,
        interval=0.3,
        on_reconsent=on_reconsent,
        reconsent_interval=0.05,
    ) as poller:
        await baselines(state, boxes)
        # The grant dies while watched: Dovecot refuses the token at the next poll, the
        # refresh gets invalid_grant, the owner is asked.
        ms.oauth.revoke_user(dying)
        async with asyncio.timeout(WAIT):
            event = await poller.__anext__()
            assert isinstance(event, MailboxFailed), event
            failures.append(event)
            await prompted.wait()
        assert failures[0].mailbox == boxes[1].key and failures[0].permanent
        assert isinstance(failures[0].error, PermanentTokenError)
        assert failures[0].error.error == "invalid_grant"
        assert set(poller.failed) == {boxes[1].key}
        assert requests[0].mailbox is boxes[1] and requests[0].provider is providers[dying]

        # Waiting for the owner does not hold the others up.
        deliver(ms, alive, "meanwhile")
        got = await next_message(poller, failures)
        assert (got.mailbox, got.message()["Subject"]) == (boxes[0].key, "meanwhile")

        # The owner approves; the poller sees the new grant in the store and resumes.
        ms.oauth.approve_device(prompts[0].user_code, dying)
        async with asyncio.timeout(WAIT):
            while True:
                if boxes[1].key not in poller.failed:
                    break
                await asyncio.sleep(0.02)
        deliver(ms, dying, "after re-consent")
        subjects: set[object] = set()
        while "after re-consent" not in subjects:
            got = await next_message(poller, failures)
            if got.mailbox == boxes[1].key:
                subjects.add(got.message()["Subject"])
    assert len(requests) == 1 and len(prompts) == 1
    saved = await tokens.load(providers[dying].store_key)
    assert saved is not None and saved.refresh_token is not None
    assert ms.oauth.is_refresh_token_active(saved.refresh_token)
    assert all(f.mailbox == boxes[1].key for f in failures)
    for p in providers.values():
        await p.aclose()


async def test_a_grant_saved_by_another_process_resumes_the_mailbox(
    mail_servers: MailServers,
) -> None:
    """The hook need not finish: a grant saved in the store by anyone (here, the test,
    as ``mailoauth login`` in another process would) resumes the mailbox and ends it."""
    ms = mail_servers
    user = new_user()
    tokens = MemoryTokenStore()
    provider = provider_for(ms, user, tokens)
    box = pop3_box(ms, user, provider)
    hook_cancelled = asyncio.Event()

    async def on_reconsent(request: ReconsentRequest) -> None:
        try:
            await asyncio.Event().wait()  # an owner who never answers here
        finally:
            hook_cancelled.set()

    state = MemoryPollStateStore()
    failures: list[MailboxFailed] = []
    async with Poller(
        [box], state_store=state, interval=0.3, on_reconsent=on_reconsent, reconsent_interval=0.05
    ) as poller:
        await baselines(state, [box])
        ms.oauth.revoke_user(user)
        async with asyncio.timeout(WAIT):
            event = await poller.__anext__()
        assert isinstance(event, MailboxFailed) and event.permanent
        fresh = ms.oauth.issue_refresh_token(user, client_id="poller-app")
        await tokens.save(provider.grant_store_key, StoredCredential(refresh_token=fresh))
        async with asyncio.timeout(WAIT):
            await hook_cancelled.wait()
        deliver(ms, user, "back")
        got = await next_message(poller, failures)
        while got.message()["Subject"] != "back":
            got = await next_message(poller, failures)
    assert poller.failed == {}
    await provider.aclose()


async def test_without_a_store_the_hook_says_what_is_missing(mail_servers: MailServers) -> None:
    ms = mail_servers
    user = new_user()
    rt = ms.oauth.issue_refresh_token(user)
    provider = OAuth2TokenProvider(ms.oauth.token_url, RefreshTokenGrant(rt), client_id="c")
    request = ReconsentRequest(
        pop3_box(ms, user, provider), PermanentTokenError("dead", error="invalid_grant")
    )
    with pytest.raises(ConfigurationError, match="token store"):
        await request.sign_in_with_device_code(ms.oauth.device_authorization_url)
    await provider.aclose()


async def test_a_provider_on_its_own_heals_its_grant_through_the_owner() -> None:
    """No poller: ReconsentingProvider asks the owner when the grant is dead, and the
    concurrent callers waiting meanwhile get the new grant's token (one sign-in)."""
    with FakeOAuthServer(rotate_refresh_tokens=True) as oauth:
        user = "owner@example.test"
        store = MemoryTokenStore()
        rt = oauth.issue_refresh_token(user, client_id="app")
        provider = OAuth2TokenProvider(
            oauth.token_url, RefreshTokenGrant(rt), client_id="app", store=store
        )
        requests: list[ReconsentRequest] = []

        async def owner_approves(auth: DeviceAuthorization) -> None:
            oauth.approve_device(auth.user_code, user)  # the test acts as the owner

        async def on_reconsent(request: ReconsentRequest) -> None:
            requests.append(request)
            await request.sign_in_with_device_code(
                oauth.device_authorization_url, on_prompt=owner_approves, interval=0.05
            )

        healing = ReconsentingProvider(provider, on_reconsent, reconsent_interval=0.05)
        first = await healing.get_access_token()
        oauth.revoke_user(user)
        async with asyncio.timeout(WAIT):
            tokens = await asyncio.gather(
                *(healing.get_access_token(force_refresh=True) for _ in range(3))
            )
        await healing.aclose()
    assert len(requests) == 1 and requests[0].mailbox is None
    assert requests[0].error.error == "invalid_grant" and requests[0].provider is provider
    assert all(t.value != first.value for t in tokens)
    assert all(oauth.is_active(t.value) for t in tokens)
    assert "rt-" not in repr(healing)
