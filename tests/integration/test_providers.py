"""Google and Microsoft providers, JWT assertions and the device code flow."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailoauth.errors import ConfigurationError, PermanentTokenError
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.tokens import (
    GOOGLE_MAIL_SCOPE,
    MS_APP_ONLY_SCOPE,
    MS_IMAP_SCOPE,
    MS_OFFLINE_ACCESS,
    DeviceAuthorization,
    GoogleTokenProvider,
    MemoryTokenStore,
    MicrosoftTokenProvider,
)


class Sleeps:
    def __init__(self, on_sleep: Any = None) -> None:
        self.waits: list[float] = []
        self.on_sleep = on_sleep

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(len(self.waits))


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, bytes, bytes]:
    """(private key PEM, public key PEM, self-signed certificate PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailoauth test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


@pytest.fixture
def server() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer() as srv:
        yield srv


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def decode(part: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return data

    head, body, _ = token.split(".")
    return decode(head), decode(body)


# -- Google ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_google_service_account_signs_a_verifiable_assertion(
    server: FakeOAuthServer, keypair: tuple[bytes, bytes, bytes], tmp_path: Path
) -> None:
    private_pem, public_pem, _ = keypair
    email = "robot@project.iam.gserviceaccount.com"
    server.add_jwt_key(email, public_pem)
    info = {
        "type": "service_account",
        "client_email": email,
        "private_key": private_pem.decode(),
        "private_key_id": "kid-1",
        "token_uri": server.token_url,
    }
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(info))
    provider = GoogleTokenProvider.from_service_account(key_file, subject="user@example.test")
    async with provider:
        token = await provider.get_access_token()
    record = server.token_info(token.value)
    assert record is not None and record.username == "user@example.test"
    form = server.token_forms[0]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert "client_id" not in form and "client_secret" not in form
    header, claims = jwt_parts(form["assertion"])
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
    assert claims["iss"] == email and claims["sub"] == "user@example.test"
    assert claims["aud"] == server.token_url and claims["scope"] == GOOGLE_MAIL_SCOPE
    assert claims["exp"] - claims["iat"] == 3600
    assert "user@example.test" in provider.store_key
    assert "PRIVATE KEY" not in repr(provider)


@pytest.mark.asyncio
async def test_google_service_account_with_a_wrong_key_is_refused(
    server: FakeOAuthServer, keypair: tuple[bytes, bytes, bytes]
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.add_jwt_key(
        "robot@x",
        other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    provider = GoogleTokenProvider.from_service_account(
        {"client_email": "robot@x", "private_key": keypair[0].decode()},
        token_url=server.token_url,
    )
    async with provider:
        with pytest.raises(PermanentTokenError, match="invalid_grant"):
            await provider.get_access_token()


def test_google_service_account_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="private_key"):
        GoogleTokenProvider.from_service_account({"client_email": "a@b"})
    with pytest.raises(ConfigurationError, match="cannot read"):
        GoogleTokenProvider.from_service_account(tmp_path / "missing.json")
    with pytest.raises(ConfigurationError, match="not a readable PEM") as info:
        GoogleTokenProvider.from_service_account(
            {"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nsecretstuff"}
        )
    assert "secretstuff" not in str(info.value)


# -- Microsoft ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_microsoft_ropc_at_the_microsoft_path(server: FakeOAuthServer) -> None:
    server.add_user("user@contoso.test", "pa55word")
    provider = MicrosoftTokenProvider.ropc(
        "app-id", "user@contoso.test", "pa55word", authority=server.base_url, tenant="contoso"
    )
    assert provider.token_url == f"{server.base_url}/contoso/oauth2/v2.0/token"
    async with provider:
        token = await provider.get_access_token()
    assert server.token_info(token.value) is not None
    form = server.token_forms[0]
    assert form["grant_type"] == "password" and form["client_id"] == "app-id"
    assert form["scope"].split() == [
        MS_IMAP_SCOPE,
        "https://outlook.office.com/POP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
    ]


def test_microsoft_urls() -> None:
    provider = MicrosoftTokenProvider.ropc("a", "u", "p")
    assert provider.token_url == (
        "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
    )
    with pytest.raises(ConfigurationError, match="tenant"):
        MicrosoftTokenProvider.ropc("a", "u", "p", tenant="a/b")


@pytest.mark.asyncio
async def test_microsoft_client_credentials_with_certificate(
    server: FakeOAuthServer, keypair: tuple[bytes, bytes, bytes]
) -> None:
    private_pem, public_pem, cert_pem = keypair
    server.add_jwt_key("app-id", public_pem)
    provider = MicrosoftTokenProvider.client_credentials(
        "app-id", tenant="contoso", certificate=(private_pem, cert_pem), authority=server.base_url
    )
    async with provider:
        token = await provider.get_access_token()
    assert server.token_info(token.value) is not None
    form = server.token_forms[0]
    assert form["grant_type"] == "client_credentials" and form["scope"] == MS_APP_ONLY_SCOPE
    assert form["client_assertion_type"].endswith("client-assertion-type:jwt-bearer")
    header, claims = jwt_parts(form["client_assertion"])
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    thumb = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
    assert header == {"alg": "RS256", "typ": "JWT", "x5t": thumb}
    assert claims["aud"] == provider.token_url
    assert claims["iss"] == claims["sub"] == "app-id"
    assert claims["nbf"] <= claims["iat"] < claims["exp"] and len(claims["jti"]) >= 16


@pytest.mark.asyncio
async def test_microsoft_client_credentials_with_secret(server: FakeOAuthServer) -> None:
    server.add_client("app-id", "app-secret")
    provider = MicrosoftTokenProvider.client_credentials(
        "app-id", "app-secret", tenant="t", token_url=server.token_url
    )
    async with provider:
        await provider.get_access_token()
    assert server.token_forms[0]["client_secret"] == "app-secret"
    with pytest.raises(ConfigurationError, match="exactly one"):
        MicrosoftTokenProvider.client_credentials("app-id", tenant="t")


@pytest.mark.asyncio
async def test_microsoft_refresh_token_rotation_goes_to_the_store() -> None:
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        rt0 = server.issue_refresh_token("user@contoso.test")
        store = MemoryTokenStore()
        provider = MicrosoftTokenProvider.refresh_token(
            "app-id", rt0, authority=server.base_url, store=store
        )
        async with provider:
            token = await provider.get_access_token(force_refresh=True)
            again = await provider.get_access_token(force_refresh=True)
        assert token.value != again.value
        assert [f["refresh_token"] for f in server.token_forms] == [
            rt0,
            server.token_forms[1]["refresh_token"],
        ]
        assert server.token_forms[1]["refresh_token"] != rt0
        stored = await store.load(provider.store_key)
        assert stored is not None and stored.refresh_token == provider.current_refresh_token
        assert MS_OFFLINE_ACCESS in server.token_forms[0]["scope"].split()


@pytest.mark.asyncio
async def test_stored_descendant_refused_never_falls_back_to_the_rotated_away_one() -> None:
    # Issue 16 item 3: the store holds a token rotated from the configured one (the key
    # is made from the configured token), so the configured one was rotated away:
    # sending it again is what reuse detection (RFC 9700 §4.14) punishes.
    with FakeOAuthServer() as server:
        rt = server.issue_refresh_token("u")
        store = MemoryTokenStore()
        provider = MicrosoftTokenProvider.refresh_token(
            "app-id", rt, token_url=server.token_url, store=store
        )
        from mailoauth.tokens import StoredCredential

        await store.save(provider.store_key, StoredCredential(refresh_token="rt-dead"))
        async with provider:
            with pytest.raises(PermanentTokenError, match="rotated away") as info:
                await provider.get_access_token()
        assert info.value.error == "invalid_grant"
        assert [f["refresh_token"] for f in server.token_forms] == ["rt-dead"]


@pytest.mark.asyncio
async def test_stored_token_of_another_lineage_refused_falls_back_to_configured() -> None:
    # An explicit store key with an entry from before (no origin recorded): the stored
    # token may be older than the configured one, so the configured one is tried.
    with FakeOAuthServer() as server:
        rt = server.issue_refresh_token("u")
        store = MemoryTokenStore()
        provider = MicrosoftTokenProvider.refresh_token(
            "app-id", rt, token_url=server.token_url, store=store, store_key="mine"
        )
        from mailoauth.tokens import StoredCredential

        await store.save("mine", StoredCredential(refresh_token="rt-dead"))
        async with provider:
            token = await provider.get_access_token()
        assert server.is_active(token.value)
        assert [f["refresh_token"] for f in server.token_forms] == ["rt-dead", rt]


# -- device code ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_device_code_polls_through_pending_and_slow_down(server: FakeOAuthServer) -> None:
    prompts: list[DeviceAuthorization] = []
    server.slow_down_next(1)

    def approve_on_third_poll(polls: int) -> None:
        if polls == 3:
            server.approve_device(prompts[0].user_code, "dev@contoso.test")

    sleeps = Sleeps(approve_on_third_poll)
    provider = MicrosoftTokenProvider.device_code(
        "app-id",
        tenant="contoso",
        authority=server.base_url,
        on_prompt=prompts.append,
        sleep=sleeps,
    )
    async with provider:
        token = await provider.get_access_token()
        record = server.token_info(token.value)
        assert record is not None and record.username == "dev@contoso.test"
        # polls: slow_down, authorization_pending, then approved
        assert sleeps.waits == [1, 6, 6]
        assert prompts[0].user_code in prompts[0].message
        # Later refreshes use the refresh token, without asking the user again.
        again = await provider.get_access_token(force_refresh=True)
        assert again.value != token.value and len(prompts) == 1
    assert server.token_forms[-1]["grant_type"] == "refresh_token"


@pytest.mark.asyncio
async def test_device_code_denied_is_permanent(server: FakeOAuthServer) -> None:
    async def deny(prompt: DeviceAuthorization) -> None:
        server.deny_device(prompt.user_code)

    provider = MicrosoftTokenProvider.device_code(
        "app-id",
        token_url=server.token_url,
        device_authorization_url=server.device_authorization_url,
        on_prompt=deny,
        interval=0.0,
        sleep=Sleeps(),
    )
    async with provider:
        with pytest.raises(PermanentTokenError, match="denied") as info:
            await provider.get_access_token()
    assert info.value.error == "access_denied"


@pytest.mark.asyncio
async def test_device_code_expires_when_nobody_signs_in(server: FakeOAuthServer) -> None:
    sleeps = Sleeps()
    provider = MicrosoftTokenProvider.device_code(
        "app-id",
        authority=server.base_url,
        on_prompt=lambda prompt: None,
        interval=300.0,
        sleep=sleeps,
    )
    async with provider:
        with pytest.raises(PermanentTokenError, match="expired") as info:
            await provider.get_access_token()
    assert info.value.error == "expired_token"
    assert sum(sleeps.waits) == 900  # the fake server's codes live 900 s
