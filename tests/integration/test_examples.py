"""README's scenarios (examples/*.py) run verbatim against the sandbox, with the
hosts users type routed to it."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
import pytest_asyncio

from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture
async def routed() -> AsyncIterator[MailSandbox]:
    # The README's scenarios keep the hosts users type and take no dialer, so they are
    # reached through the deprecated process-wide routes (tests/integration/
    # test_dialer.py covers the dialer way).
    async with MailSandbox(personality=Personality.GMAIL) as box:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            routes = box.routes()
            routes.__enter__()
        try:
            yield box
        finally:
            routes.__exit__(None, None, None)


@pytest.mark.asyncio
async def test_scenario_1_access_token(
    routed: MailSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    user = routed.user("user1@gmail.com")
    example = load("access_token")
    await example.main(user.username, user.access_token())
    out = capsys.readouterr().out
    assert "Hello from mailoauth" in out and "MailboxStat(count=1" in out
    expired = user.access_token(lifetime=0.001)
    await example.when_it_expires(user.username, expired)
    assert "pass a TokenProvider" in capsys.readouterr().out


@pytest.mark.asyncio
async def test_scenario_2_google_provider(
    routed: MailSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    user = routed.user("me@gmail.com")
    await load("providers").google("id", "secret", user.refresh_token, user.username)
    assert "MailboxStat(count=1" in capsys.readouterr().out
    assert routed.oauth.stats.token_requests == 1  # one token for all three clients


@pytest.mark.asyncio
async def test_scenario_2_microsoft_providers(
    routed: MailSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    routed.personality = Personality.OFFICE365
    user = routed.user("me@contoso.com", password="pa55word")
    await load("providers").microsoft("app-id", user.username, "pa55word", user.refresh_token)
    assert "MailboxInfo(name='INBOX'" in capsys.readouterr().out
    # The sandbox identifies an app-only token by its client id.
    routed.store.add_user("app-id")
    await load("providers").microsoft_app_only("app-id", "secret", "contoso", "app-id")
    assert "MailboxStat(count=0" in capsys.readouterr().out


@pytest.mark.asyncio
async def test_scenario_3_custom_provider(
    routed: MailSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    routed.personality = Personality.OFFICE365
    user = routed.user("me@contoso.com", password="pa55word")
    await load("custom_provider").main(
        "contoso.onmicrosoft.com",
        "app-id",
        user.username,
        "pa55word",
        authority=routed.oauth.base_url,
    )
    assert "MailboxInfo(name='INBOX'" in capsys.readouterr().out


@pytest.mark.asyncio
async def test_scenario_5_poll_many(
    routed: MailSandbox, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    users = {name: routed.user(name) for name in ("a@gmail.com", "b@gmail.com")}
    for name in users:
        routed.store.deliver(name, f"Subject: for {name}\r\n\r\nhi\r\n".encode())
    accounts = {name: user.refresh_token for name, user in users.items()}
    example = load("poll_many")
    state = str(tmp_path / "state.json")
    with pytest.raises(TimeoutError):  # a poller runs until it is stopped
        await asyncio.wait_for(example.main(accounts, "id", "secret", state), 3)
    lines = capsys.readouterr().out.splitlines()
    # Each account's message reported once over IMAP and once over POP3.
    hosts = {"imap": "imap", "pop3": "pop"}
    expected = [f"for {n} in {p}://{n}@{h}" for n in accounts for p, h in hosts.items()]
    assert sorted(line.split(".gmail.com:")[0] for line in lines) == sorted(expected)
    # A restart reports nothing again.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(example.main(accounts, "id", "secret", state), 1.5)
    assert capsys.readouterr().out == ""


def test_custom_provider_is_a_dozen_lines() -> None:
    source = (EXAMPLES / "custom_provider.py").read_text()
    body = source.split("class Office365Provider")[1].split("\n\n\n")[0]
    lines = [line for line in body.splitlines() if line.strip()]
    assert len(lines) <= 20


def test_readme_shows_the_examples_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    for name in ("access_token", "providers", "custom_provider", "test_with_plugin", "poll_many"):
        source = (EXAMPLES / f"{name}.py").read_text()
        body = source.split('"""', 2)[2].lstrip("\n")  # without the docstring
        assert any(body.strip() in block or block.strip() in body for block in blocks), name
