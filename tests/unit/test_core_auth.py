"""The shared auth loop: mechanism choice, retry exactly once, errors that explain."""

from __future__ import annotations

import base64
import datetime as dt
import logging

import pytest

from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth.errors import AuthenticationError, ConfigurationError, ProtocolError
from mailoauth.sasl import ErrorChallenge, Mechanism
from mailoauth.tokens.access_token import AccessToken, utcnow
from mailoauth.tokens.manager import TokenManager, wrap_provider

pytestmark = pytest.mark.asyncio


class CountingProvider:
    def __init__(self) -> None:
        self.calls = 0

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        return AccessToken(f"token-{self.calls}", utcnow() + dt.timedelta(hours=1))


class ScriptedServer:
    """Accepts the tokens in ``accept``; records what it was sent."""

    def __init__(self, accept: set[str], *, temporary: bool = False) -> None:
        self.accept = accept
        self.temporary = temporary
        self.seen: list[str] = []

    async def __call__(self, mech: Mechanism) -> SaslOutcome:
        raw = mech.initial_response().decode()
        token = raw.split("auth=Bearer ")[1].split("\x01")[0]
        self.seen.append(token)
        if token in self.accept:
            return SaslOutcome(ok=True, reply="OK")
        challenge = ErrorChallenge(raw='{"status":"401"}', status="401", scope="mail")
        return SaslOutcome(False, "NO [AUTHENTICATIONFAILED]", challenge, self.temporary)


def manager() -> tuple[TokenManager, CountingProvider]:
    provider = CountingProvider()
    return TokenManager(provider), provider


async def run(tokens: TokenManager, server: ScriptedServer) -> AccessToken:
    return await authenticate(
        tokens=tokens,
        username="u@example.com",
        host="h",
        port=993,
        protocol="imap",
        mechanism="XOAUTH2",
        exchange=server,
    )


async def test_accepted_first_time() -> None:
    tokens, provider = manager()
    token = await run(tokens, ScriptedServer({"token-1"}))
    assert token.value == "token-1" and provider.calls == 1


async def test_an_accepted_exchange_works_out_no_secret_forms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailoauth._core import scrub

    calls: list[bytes] = []
    real = scrub.secret_forms

    def counted(secret: bytes) -> set[str]:
        calls.append(secret)
        return real(secret)

    monkeypatch.setattr(scrub, "secret_forms", counted)
    tokens, _ = manager()
    await run(tokens, ScriptedServer({"token-1"}))
    assert calls == []  # no log record, no error: the forms were never needed
    with pytest.raises(AuthenticationError) as info:
        await run(tokens, ScriptedServer(set()))
    assert calls  # a rejection's reply is scrubbed
    assert "token-" not in str(info.value)


async def test_rejected_then_refreshed_and_retried_once() -> None:
    tokens, provider = manager()
    server = ScriptedServer({"token-2"})
    assert (await run(tokens, server)).value == "token-2"
    assert server.seen == ["token-1", "token-2"] and provider.calls == 2


async def test_second_rejection_raises_with_reply_challenge_and_hint() -> None:
    tokens, _provider = manager()
    server = ScriptedServer(set())
    with pytest.raises(AuthenticationError) as info:
        await run(tokens, server)
    assert server.seen == ["token-1", "token-2"]  # exactly one retry
    err = info.value
    assert err.server_reply == "NO [AUTHENTICATIONFAILED]"
    assert err.challenge is not None and err.challenge.status == "401"
    assert err.mechanism == "XOAUTH2"
    assert "IMAP.AccessAsUser.All" in str(err) and "token-" not in str(err)


async def test_temporary_failure_is_not_retried_with_a_new_token() -> None:
    tokens, provider = manager()
    with pytest.raises(AuthenticationError) as info:
        await run(tokens, ScriptedServer(set(), temporary=True))
    assert info.value.temporary and provider.calls == 1


async def test_static_token_rejected_says_pass_a_provider() -> None:
    with pytest.raises(AuthenticationError, match="pass a TokenProvider"):
        await run(wrap_provider("static-token"), ScriptedServer(set()))


async def test_choose_mechanism() -> None:
    assert choose_mechanism(["XOAUTH2", "OAUTHBEARER", "PLAIN"], None, "imap") == "OAUTHBEARER"
    assert choose_mechanism(["xoauth2"], None, "imap") == "XOAUTH2"
    assert choose_mechanism(["XOAUTH2", "OAUTHBEARER"], "xoauth2", "imap") == "XOAUTH2"
    with pytest.raises(AuthenticationError, match="offers: PLAIN"):
        choose_mechanism(["PLAIN"], None, "smtp")
    with pytest.raises(AuthenticationError, match="does not offer OAUTHBEARER"):
        choose_mechanism(["XOAUTH2"], "OAUTHBEARER", "pop3")
    with pytest.raises(ConfigurationError):
        choose_mechanism(["PLAIN"], "PLAIN", "smtp")


LONG = "ya29.echoed-access-token-0123456789abcdef"


class LongTokenProvider:
    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        return AccessToken(LONG, utcnow() + dt.timedelta(hours=1))


async def test_an_exchange_error_quoting_the_initial_response_is_scrubbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def echoing(mech: Mechanism) -> SaslOutcome:
        line = b"AUTHENTICATE XOAUTH2 " + mech.initial_response_b64()
        logging.getLogger("aioimaplib.aioimaplib").debug("Received : %r", line)
        try:
            raise ValueError(f"parser choked on {line!r}")
        except ValueError as exc:
            raise ProtocolError(f"unexpected line {line.decode()}") from exc

    with pytest.raises(ProtocolError) as info:
        await authenticate(
            tokens=TokenManager(LongTokenProvider()),
            username="u@example.com",
            host="h",
            port=993,
            protocol="imap",
            mechanism="XOAUTH2",
            exchange=echoing,
        )
    b64 = base64.b64encode(f"user=u@example.com\x01auth=Bearer {LONG}\x01\x01".encode())
    texts = [str(info.value), str(info.value.__cause__)] + [r.getMessage() for r in caplog.records]
    assert all(b64.decode() not in t and LONG not in t for t in texts)
    assert "<redacted>" in str(info.value)
    assert "<redacted>" in str(info.value.__cause__)
    assert any("<redacted>" in r.getMessage() for r in caplog.records)
