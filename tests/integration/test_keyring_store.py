"""KeyringTokenStore: credentials in the OS keyring, through an in-memory keyring backend
set by the test (keyring.set_keyring), so no real keyring is touched."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

keyring = pytest.importorskip("keyring")
from keyring.backend import KeyringBackend  # noqa: E402
from keyring.errors import KeyringLocked, PasswordDeleteError  # noqa: E402

from mailoauth.cli import main  # noqa: E402
from mailoauth.errors import TransientTokenError  # noqa: E402
from mailoauth.testing.oauth_server import FakeOAuthServer, ScriptedResponse  # noqa: E402
from mailoauth.testing.personality import Personality  # noqa: E402
from mailoauth.testing.sandbox import MailSandbox  # noqa: E402
from mailoauth.tokens import (  # noqa: E402
    FileTokenStore,
    GoogleTokenProvider,
    KeyringTokenStore,
    LockingTokenStore,
    StoredCredential,
    TokenStore,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
CRED = StoredCredential(
    refresh_token="rt-secret",
    access_token="at-secret",
    expires_at=NOW + dt.timedelta(hours=1),
    issued_at=NOW,
    scope="mail",
)


class MemoryKeyring(KeyringBackend):
    """A keyring backend of the test's own: a dict, and a switch to act locked."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.entries: dict[tuple[str, str], str] = {}
        self.locked = False

    def _check(self) -> None:
        if self.locked:
            raise KeyringLocked("the test locked the keyring")

    def get_password(self, service: str, username: str) -> str | None:
        self._check()
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._check()
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self._check()
        if self.entries.pop((service, username), None) is None:
            raise PasswordDeleteError("not found")


@pytest.fixture
def ring() -> Iterator[MemoryKeyring]:
    before = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(before)


@pytest.mark.asyncio
async def test_round_trip_through_the_process_keyring(ring: MemoryKeyring) -> None:
    store = KeyringTokenStore()
    assert isinstance(store, TokenStore) and isinstance(store, LockingTokenStore)
    assert await store.load("k") is None
    await store.save("k", CRED)
    assert await KeyringTokenStore().load("k") == CRED
    # One entry per key under the service, holding the documented JSON object.
    assert set(ring.entries) == {("mailoauth", "k")}
    assert json.loads(ring.entries[("mailoauth", "k")])["refresh_token"] == "rt-secret"
    await store.delete("k")
    await store.delete("k")  # deleting what is not there is no error
    assert await store.load("k") is None
    assert "secret" not in repr(store)


@pytest.mark.asyncio
async def test_service_and_backend_keep_stores_apart(ring: MemoryKeyring) -> None:
    own = MemoryKeyring()
    await KeyringTokenStore(service="app-a").save("k", CRED)
    await KeyringTokenStore(backend=own).save("k", StoredCredential(refresh_token="other"))
    assert await KeyringTokenStore(service="app-b").load("k") is None
    assert set(ring.entries) == {("app-a", "k")}
    assert set(own.entries) == {("mailoauth", "k")}


@pytest.mark.asyncio
async def test_junk_in_the_keyring_reads_as_no_credential(ring: MemoryKeyring) -> None:
    ring.entries[("mailoauth", "k")] = "not json"
    ring.entries[("mailoauth", "list")] = "[1, 2]"
    store = KeyringTokenStore()
    assert await store.load("k") is None and await store.load("list") is None


@pytest.mark.asyncio
async def test_a_locked_keyring_is_a_transient_error_without_the_secret(
    ring: MemoryKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ring.locked = True
    store = KeyringTokenStore()
    with pytest.raises(TransientTokenError) as info:
        await store.save("k", CRED)
    assert "'k'" in str(info.value) and "KeyringLocked" in str(info.value)
    assert "unlock the keyring" in str(info.value)
    assert "rt-secret" not in str(info.value) and "rt-secret" not in caplog.text
    with pytest.raises(TransientTokenError):
        await store.load("k")


@pytest.mark.asyncio
async def test_providers_single_flight_through_the_keyring_and_keep_the_rotated_token(
    ring: MemoryKeyring,
) -> None:
    with FakeOAuthServer(rotate_refresh_tokens=True) as server:
        server.script(ScriptedResponse(status=0, delay=0.2))  # all callers pile up
        rt = server.issue_refresh_token("u")
        store = KeyringTokenStore()
        providers = [
            GoogleTokenProvider("cid", "s", rt, token_url=server.token_url, store=store)
            for _ in range(2)
        ]
        tokens = await asyncio.gather(*(p.get_access_token() for p in providers * 10))
        for p in providers:
            await p.aclose()
        assert server.stats.token_requests == 1
        assert len({t.value for t in tokens}) == 1
        saved = await store.load(providers[0].store_key)
        assert saved is not None and saved.refresh_token not in (None, rt)
        assert server.is_refresh_token_active(saved.refresh_token or "")


# -- the command: --store keyring ------------------------------------------------------


def test_login_and_check_keep_the_credential_in_the_keyring(
    ring: MemoryKeyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the profiles file: ~/.config/mailoauth
    with MailSandbox(personality=Personality.GMAIL) as box:
        user = box.user("kr@example.test")
        argv = [
            "login", "oauth2", "--device", "--client-id", "cli-test",
            "--token-url", box.oauth.token_url,
            "--device-authorization-url", box.oauth.device_authorization_url,
            "--scope", "mail", "--name", "work", "--store", "keyring", "--timeout", "10",
        ]  # fmt: skip
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
        runner.start()
        deadline = time.monotonic() + 10
        while not box.oauth.pending_user_codes() and time.monotonic() < deadline:
            time.sleep(0.02)
        (user_code,) = box.oauth.pending_user_codes()
        box.oauth.approve_device(user_code, user.username)
        runner.join(10)
        assert result == [0], capsys.readouterr()
        capsys.readouterr()
        # The secret went to the keyring only; the profile (no secret) to the file.
        saved = json.loads(ring.entries[("mailoauth", "work")])
        assert saved["refresh_token"]
        profiles = tmp_path / ".config" / "mailoauth" / "tokens.profiles.json"
        assert "work" in json.loads(profiles.read_text())["profiles"]
        assert not (tmp_path / ".config" / "mailoauth" / "tokens.json").exists()
        assert saved["refresh_token"] not in profiles.read_text()

        # check refreshes from the keyring and saves the rotated token back there.
        ring.entries[("mailoauth", "work")] = json.dumps(
            {**saved, "access_token": None, "expires_at": None}
        )
        check = [
            "check", "imap", "127.0.0.1", "--port", str(box.imap.tls_port),
            "--security", "ssl", "--cafile", str(box.ca.files.ca), "--timeout", "5",
            "--user", user.username, "--store", "keyring", "--store-key", "work",
        ]  # fmt: skip
        assert main(check) == 0, capsys.readouterr()
        out = capsys.readouterr().out
        assert "refreshed via the stored credential" in out
        assert json.loads(ring.entries[("mailoauth", "work")])["access_token"]

        # token refresh and token show work on the keyring too.
        before = json.loads(ring.entries[("mailoauth", "work")])["access_token"]
        assert main(["token", "refresh", "work", "--store", "keyring"]) == 0
        after = json.loads(ring.entries[("mailoauth", "work")])
        assert after["access_token"] != before, "the new access token is in the keyring"
        capsys.readouterr()
        assert main(["token", "show", "--store", "keyring"]) == 0
        shown = capsys.readouterr().out
        assert "KeyringTokenStore" in shown and "work" in shown
        assert after["refresh_token"] not in shown, "the secret is redacted"


# -- docs/token-store-format.md ---------------------------------------------------------

FORMAT_DOC = Path(__file__).resolve().parents[2] / "docs" / "token-store-format.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", FORMAT_DOC.read_text(), flags=re.S)


@pytest.mark.asyncio
async def test_the_documented_file_format_is_what_file_token_store_reads(
    tmp_path: Path,
) -> None:
    (example,) = doc_blocks("json")
    path = tmp_path / "tokens.json"
    path.write_text(example)
    store = FileTokenStore(path)
    cred = await store.load("microsoft")
    assert cred is not None and cred.refresh_token == "0.AXEA..."
    assert cred.expires_at == dt.datetime(2030, 1, 1, 13, tzinfo=dt.timezone.utc)
    assert cred.scope is not None and cred.scope.endswith("SMTP.Send")
    (grant_key,) = (k for k in json.loads(example)["credentials"] if k != "microsoft")
    grant = await store.load(grant_key)
    assert grant is not None and grant.access_token is None and grant.origin
    # And what FileTokenStore writes has the documented shape, field for field.
    await store.save("new", CRED)
    written = json.loads(path.read_text())
    assert written["version"] == 1
    assert set(written["credentials"]["new"]) == set(
        json.loads(example)["credentials"]["microsoft"]
    )


def test_the_documented_keyring_snippet_reads_what_the_store_saved(ring: MemoryKeyring) -> None:
    (snippet,) = doc_blocks("python")
    asyncio.run(KeyringTokenStore().save("microsoft", CRED))
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(FORMAT_DOC), "exec"), namespace)
    credential = namespace["credential"]
    assert isinstance(credential, dict) and credential["refresh_token"] == "rt-secret"
