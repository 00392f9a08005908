"""Token endpoint faults, end to end: an ImapClient with an OAuth2TokenProvider whose
token endpoint (the FakeOAuthServer that Dovecot also introspects against) fails.

Transient failures (5xx, an HTML error page with a 5xx, a slow answer) are retried
with bounded backoff and the client then connects; permanent ones (invalid_grant,
malformed JSON, an HTML page with 200/404) are reported at once, after exactly one
request. A permanent failure is not cached: the next connect asks once more (the grant
may have been fixed meanwhile), so a caller retrying in a loop costs one request per
attempt, never a burst. The parser-level cases live in tests/integration/
test_tokens_oauth2.py; these prove the errors reach the mail client's caller intact.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from mailoauth.errors import PermanentTokenError, TransientTokenError
from mailoauth.imap.client import ImapClient
from mailoauth.security import SecurityOptions
from mailoauth.testing.clock import FakeClock
from mailoauth.testing.oauth_server import ScriptedResponse
from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant
from tests.integration.conftest import MailServers

pytestmark = pytest.mark.asyncio

CLIENT, SECRET = "tf-client", "tf-client-secret"
GUARD = 20.0


def new_user() -> str:
    return f"t{uuid.uuid4().hex[:10]}@example.test"


def setup(servers: MailServers, **kw: Any) -> tuple[str, str, OAuth2TokenProvider]:
    servers.oauth.add_client(CLIENT, SECRET)
    user = new_user()
    rt = servers.oauth.issue_refresh_token(user)
    provider = OAuth2TokenProvider(
        servers.oauth.token_url,
        RefreshTokenGrant(rt),
        client_id=CLIENT,
        client_secret=SECRET,
        backoff=kw.pop("backoff", 0.05),
        **kw,
    )
    return user, rt, provider


def imap(servers: MailServers, user: str, provider: OAuth2TokenProvider) -> ImapClient:
    return ImapClient(
        "localhost",
        servers.dovecot.imaps_port,
        user,
        provider,
        SecurityOptions.SSL_IMPLICIT,
        ssl_context=servers.client_context(),
        timeout=5.0,
    )


async def connect(servers: MailServers, user: str, provider: OAuth2TokenProvider) -> None:
    async with imap(servers, user, provider) as client:
        await asyncio.wait_for(client.select(), GUARD)


@pytest.mark.parametrize(
    "failures",
    [
        [ScriptedResponse(500)],
        [ScriptedResponse(500), ScriptedResponse(503, "<html><h1>Service Unavailable</h1>")],
        [ScriptedResponse(502, "<html>Bad gateway</html>"), ScriptedResponse(429, {})],
    ],
    ids=["500", "500-then-html-503", "html-502-then-429"],
)
async def test_transient_failures_are_retried_then_the_client_connects(
    mail_servers: MailServers, failures: list[ScriptedResponse]
) -> None:
    user, _, provider = setup(mail_servers)
    oauth = mail_servers.oauth
    before = oauth.stats.token_requests
    oauth.script(*failures)
    async with provider:
        await asyncio.wait_for(connect(mail_servers, user, provider), GUARD)
    assert oauth.stats.token_requests - before == len(failures) + 1


async def test_500_forever_is_transient_after_bounded_attempts(mail_servers: MailServers) -> None:
    clock = FakeClock()
    user, rt, provider = setup(mail_servers, max_attempts=3, backoff=0.1, sleep=clock.sleep)
    oauth = mail_servers.oauth
    before = oauth.stats.token_requests
    oauth.script(*[ScriptedResponse(500)] * 3)
    async with provider:
        with pytest.raises(TransientTokenError, match="after 3 attempts") as info:
            await asyncio.wait_for(connect(mail_servers, user, provider), GUARD)
    assert oauth.stats.token_requests - before == 3
    # Two waits between three attempts: the backoff, doubled, with jitter (x0.5 to x1).
    assert len(clock.sleeps) == 2
    assert 0.05 <= clock.sleeps[0] <= 0.1 and 0.1 <= clock.sleeps[1] <= 0.2
    assert rt not in str(info.value) and SECRET not in str(info.value)


async def test_slow_endpoint_beyond_timeout_is_transient(mail_servers: MailServers) -> None:
    user, _, provider = setup(mail_servers, timeout=0.3, max_attempts=2)
    # Answers that would come after GUARD: only the 0.3 s timeout ends each attempt (a
    # wait for them would end in GUARD's TimeoutError instead), no clock read needed.
    mail_servers.oauth.script(*[ScriptedResponse(status=0, delay=2 * GUARD)] * 2)
    async with provider:
        with pytest.raises(TransientTokenError, match="did not answer in time"):
            await asyncio.wait_for(connect(mail_servers, user, provider), GUARD)


async def test_slow_endpoint_within_timeout_is_waited_for(mail_servers: MailServers) -> None:
    user, _, provider = setup(mail_servers, timeout=3.0)
    mail_servers.oauth.script(ScriptedResponse(status=0, delay=0.5))
    async with provider:
        await asyncio.wait_for(connect(mail_servers, user, provider), GUARD)


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (None, "invalid_grant"),
        (ScriptedResponse(200, '{"access_token": "at-half", "expires_in": '), "not a JSON"),
        (ScriptedResponse(200, "<html><body>Sign in</body></html>"), "not a JSON object"),
        (ScriptedResponse(404, "<html><body>Not Found</body></html>"), "text/html"),
    ],
    ids=["invalid_grant", "malformed-json", "html-200", "html-404"],
)
async def test_permanent_failures_are_reported_once_per_attempt(
    mail_servers: MailServers, response: ScriptedResponse | None, match: str
) -> None:
    user, rt, provider = setup(mail_servers)
    oauth = mail_servers.oauth
    if response is None:
        oauth.revoke(rt)
    before = oauth.stats.token_requests
    async with provider:
        for attempt in (1, 2):
            if response is not None:
                oauth.script(response)
            with pytest.raises(PermanentTokenError, match=match) as info:
                await asyncio.wait_for(connect(mail_servers, user, provider), GUARD)
            assert oauth.stats.token_requests - before == attempt  # one request each
            assert rt not in str(info.value) and SECRET not in str(info.value)
