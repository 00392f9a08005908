"""The TOML config of ``mailoauth poll``: what it reads, what it refuses and how it says
so (file, table, key; never a secret), and the providers and mailboxes it builds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mailoauth.errors import ConfigurationError
from mailoauth.poll import MailboxSpec, PollLimits
from mailoauth.poll.config import TokenSources, load_config
from mailoauth.security import SecurityOptions
from mailoauth.tokens import (
    FileTokenStore,
    GoogleTokenProvider,
    MicrosoftTokenProvider,
    OAuth2TokenProvider,
)
from mailoauth.tokens.grants import ClientCredentialsGrant, RefreshTokenGrant

SECRET = "client-secret-value-that-must-not-show"
RT = "rt-refresh-token-that-must-not-show"

BASE = """
[credentials.alice]
kind = "oauth2"
token_url = "https://idp.example.com/token"
client_id = "worker"
client_secret_env = "ALICE_SECRET"
refresh_token_env = "ALICE_RT"

[[mailbox]]
protocol = "imap"
host = "imap.example.com"
port = 993
username = "alice@example.com"
credential = "alice"
security = "auto"
folder = "INBOX"
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALICE_SECRET", SECRET)
    monkeypatch.setenv("ALICE_RT", RT)


def write(tmp_path: Path, text: str, name: str = "poll.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path) -> str:
    """The message of the ConfigurationError loading ``path`` raises (checked to hold
    the file's name and no secret)."""
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert SECRET not in message and RT not in message
    return message


def test_the_issue_shape_loads(tmp_path: Path, env: None) -> None:
    config = load_config(write(tmp_path, BASE))
    alice = config.credentials["alice"]
    assert alice.kind == "oauth2" and alice.client_id == "worker"
    assert alice.client_secret == SECRET and alice.refresh_token == RT
    assert SECRET not in repr(alice) and RT not in repr(alice) and RT not in repr(config)
    (spec,) = config.mailboxes
    assert spec == MailboxSpec(
        "imap", "imap.example.com", 993, "alice@example.com", "alice", SecurityOptions.AUTO
    )
    assert config.poll_options == {} and config.token_store is None


def test_secrets_written_inline_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        [credentials.bob]
        kind = "oauth2"
        token_url = "https://idp.example.com/token"
        client_id = "worker"
        client_secret = "{SECRET}"
        refresh_token = "{RT}"
        scopes = ["mail", "offline_access"]
        store = "bob-tokens.json"

        [[mailbox]]
        protocol = "pop3"
        host = "pop.example.com"
        port = 995
        username = "bob@example.com"
        credential = "bob"
        cafile = "certs/ca.pem"

        [tokens]
        store = "tokens.json"

        [poll]
        interval = 30
        use_idle = false
        start = "all"
        max_per_host = 5
        presets = false
        """,
    )
    config = load_config(path)
    bob = config.credentials["bob"]
    assert bob.refresh_token == RT and bob.scope == "mail offline_access"
    assert bob.store == tmp_path / "bob-tokens.json"
    assert config.token_store == tmp_path / "tokens.json"
    assert config.mailboxes[0].cafile == str(tmp_path / "certs" / "ca.pem")
    assert config.poll_options == {
        "interval": 30,
        "use_idle": False,
        "start": "all",
        "limits": PollLimits(max_per_host=5, presets=False),
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ('kind = "oauth2"', None),
        ('kind = "yahoo"', "[credentials.alice] kind: must be one of oauth2, google, microsoft"),
        (
            'client_id = "worker"\ntenant = "x"',
            "[credentials.alice] tenant: is not a setting of oauth2 credentials",
        ),
        ('client_id = ""', "[credentials.alice] client_id: must be a non-empty string"),
        ("client_id = 7", "[credentials.alice] client_id: must be a non-empty string, not a"),
        (
            'client_secret_env = "ALICE_SECRET"\nclient_secret = "inline"',
            "[credentials.alice] client_secret: give client_secret or client_secret_env",
        ),
        ('refresh_token_env = "NOT_SET_ANYWHERE"', "NOT_SET_ANYWHERE is not set"),
        ('refresh_token_env = "EMPTY_VAR"', "[credentials.alice] refresh_token_env: the env"),
        ('grant = "password"', "[credentials.alice] grant: must be one of refresh_token"),
        ('scope = "a"\nscopes = ["b"]', "[credentials.alice] scope: give scope or scopes"),
        ("scopes = [1]", "[credentials.alice] scopes: must be an array"),
    ],
)
def test_credential_errors(
    tmp_path: Path,
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
    expected: str | None,
) -> None:
    monkeypatch.setenv("EMPTY_VAR", "")
    key = change.split("=")[0].strip()
    lines = [line for line in BASE.splitlines() if not line.startswith(f"{key} =")]
    at = lines.index("[credentials.alice]") + 1
    text = "\n".join([*lines[:at], change, *lines[at:]])
    if expected is None:
        load_config(write(tmp_path, text))
        return
    assert expected in refused(write(tmp_path, text))


def test_a_missing_secret_names_what_to_give(tmp_path: Path, env: None) -> None:
    text = BASE.replace('refresh_token_env = "ALICE_RT"\n', "")
    assert "[credentials.alice] refresh_token: missing: give refresh_token" in refused(
        write(tmp_path, text)
    )
    text = BASE.replace('token_url = "https://idp.example.com/token"\n', "")
    assert "[credentials.alice] token_url: missing" in refused(write(tmp_path, text))


def test_an_empty_env_var_is_named_not_shown(
    tmp_path: Path, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALICE_RT", "")
    assert "ALICE_RT is empty" in refused(write(tmp_path, BASE))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 993", 'port = "993"', "[[mailbox]] #1: port must be an int"),
        ("port = 993", "port = 70000", "[[mailbox]] #1: port must be in 1..65535"),
        ('folder = "INBOX"', 'folders = "INBOX"', "unknown mailbox setting(s): folders"),
        ('credential = "alice"', 'credential = "carol"', "credential: names 'carol'"),
        ('security = "auto"', 'security = "tls"', "security must be one of"),
        ('protocol = "imap"', 'protocol = "jmap"', "protocol must be 'imap' or 'pop3'"),
        ('username = "alice@example.com"', "", "[[mailbox]] #1: a mailbox needs username"),
    ],
)
def test_mailbox_errors(tmp_path: Path, env: None, old: str, new: str, expected: str) -> None:
    assert expected in refused(write(tmp_path, BASE.replace(old, new)))


def test_two_mailboxes_with_one_key_and_the_key_in_the_table_name(
    tmp_path: Path, env: None
) -> None:
    second = BASE[BASE.index("[[mailbox]]") :]
    message = refused(write(tmp_path, BASE + second))
    assert "[[mailbox]] #2 key" in message and "#1's too" in message
    keyed = second.replace("[[mailbox]]", '[[mailbox]]\nkey = "shared"\nport = "x"').replace(
        "port = 993\n", ""
    )
    assert "[[mailbox]] #2 (shared): port must be an int" in refused(write(tmp_path, BASE + keyed))


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("[poll]\ninterval = 0", "[poll] interval: must be a positive number of seconds"),
        ("[poll]\ninterval = true", "[poll] interval: must be a positive number"),
        ('[poll]\nstart = "old"', "[poll] start: must be 'new' or 'all'"),
        ("[poll]\nfetch_batch = 0", "[poll] fetch_batch: must be an integer >= 1"),
        ('[poll]\nuse_idle = "yes"', "[poll] use_idle: must be true or false"),
        ("[poll]\nspeed = 1", "[poll] speed: is not a poll setting"),
        ('[tokens]\npath = "x"', "[tokens] path: is not known"),
        ("[extra]\nx = 1", "unknown table or key 'extra'"),
    ],
)
def test_other_tables(tmp_path: Path, env: None, table: str, expected: str) -> None:
    assert expected in refused(write(tmp_path, BASE + table + "\n"))


def test_not_toml_and_no_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[credentials.alice]\nrefresh_token = "{RT}\n')
    assert "not valid TOML" in refused(bad)
    assert "there is no such config file" in refused(tmp_path / "absent.toml")


def test_providers_per_kind(tmp_path: Path, env: None) -> None:
    path = write(
        tmp_path,
        """
        [credentials.plain]
        kind = "oauth2"
        token_url = "https://idp.example.com/token"
        client_id = "worker"
        refresh_token_env = "ALICE_RT"

        [credentials.app]
        kind = "oauth2"
        grant = "client_credentials"
        token_url = "https://idp.example.com/token"
        client_id = "worker"
        client_secret_env = "ALICE_SECRET"
        scope = "mail"

        [credentials.gmail]
        kind = "google"
        client_id = "gid"
        client_secret_env = "ALICE_SECRET"
        refresh_token_env = "ALICE_RT"

        [credentials.outlook]
        kind = "microsoft"
        client_id = "mid"
        tenant = "contoso.onmicrosoft.com"
        refresh_token_env = "ALICE_RT"

        [credentials.daemon]
        kind = "microsoft"
        grant = "client_credentials"
        client_id = "mid"
        tenant = "contoso.onmicrosoft.com"
        client_secret_env = "ALICE_SECRET"
        """,
    )
    sources = TokenSources(load_config(path))
    plain = sources.provider("plain")
    assert type(plain) is OAuth2TokenProvider and isinstance(plain.grant, RefreshTokenGrant)
    assert sources.provider("plain") is plain  # one provider per credential
    app = sources.provider("app")
    assert isinstance(app.grant, ClientCredentialsGrant) and app.scope == "mail"
    gmail = sources.provider("gmail")
    assert isinstance(gmail, GoogleTokenProvider)
    assert gmail.token_url == "https://oauth2.googleapis.com/token"
    outlook = sources.provider("outlook")
    assert isinstance(outlook, MicrosoftTokenProvider)
    assert outlook.token_url == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert "offline_access" in (outlook.scope or "")
    daemon = sources.provider("daemon")
    assert isinstance(daemon.grant, ClientCredentialsGrant)
    assert daemon.scope == "https://outlook.office365.com/.default"
    for provider in (plain, app, gmail, outlook, daemon):
        assert SECRET not in repr(provider) and RT not in repr(provider)
    with pytest.raises(ConfigurationError, match=r"no credential 'nobody' .* \[credentials"):
        sources.provider("nobody")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'kind = "microsoft"\ngrant = "client_credentials"\nclient_id = "m"\n'
            'client_secret = "s"',
            "[credentials.x] tenant: missing",
        ),
        (
            'kind = "oauth2"\ntoken_url = "https://i/t"\ngrant = "client_credentials"\n'
            'client_id = "m"',
            "[credentials.x] client_secret: missing",
        ),
        (
            'kind = "google"\ngrant = "client_credentials"\nclient_id = "m"',
            "[credentials.x] grant: a google credential uses the refresh_token grant",
        ),
    ],
)
def test_grant_requirements(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refused(write(tmp_path, f"[credentials.x]\n{text}\n"))


@pytest.mark.asyncio
async def test_resolve_builds_a_mailbox_with_the_shared_provider_and_store(
    tmp_path: Path, env: None
) -> None:
    second = BASE[BASE.index("[[mailbox]]") :].replace("INBOX", "Archive")
    text = BASE + second + '[tokens]\nstore = "tokens.json"\n'
    config = load_config(write(tmp_path, text))
    async with config.sources() as sources:
        inbox, archive = (sources.resolve(spec) for spec in config.mailboxes)
        assert inbox.token is archive.token is sources.provider("alice")
        assert archive.folder == "Archive" and archive.key.endswith("/Archive")
        store = sources.provider("alice").store
        assert isinstance(store, FileTokenStore) and store.path == tmp_path / "tokens.json"
        foreign = MailboxSpec("imap", "h", 993, "u@example.com", "someone-else")
        with pytest.raises(ConfigurationError, match="no credential 'someone-else'"):
            sources.resolve(foreign)


@pytest.mark.asyncio
async def test_the_dialer_reaches_every_mailbox(tmp_path: Path, env: None) -> None:
    class Dialer:
        async def connect(self, host: str, port: int, *, timeout: float) -> object:
            raise OSError("not used")

    dialer = Dialer()
    config = load_config(write(tmp_path, BASE))
    async with TokenSources(config, dialer=dialer) as sources:  # type: ignore[arg-type]
        mailbox = sources.resolve(config.mailboxes[0])
    assert mailbox.settings.dialer is dialer  # type: ignore[comparison-overlap]
    assert mailbox.key == config.mailboxes[0].key and mailbox.host == "imap.example.com"


def test_a_microsoft_refresh_token_without_a_store_is_warned_about(
    tmp_path: Path, env: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path,
        """
        [credentials.outlook]
        kind = "microsoft"
        client_id = "mid"
        refresh_token_env = "ALICE_RT"
        """,
    )
    TokenSources(load_config(path))
    assert "Microsoft rotates refresh tokens" in caplog.text
    assert "[credentials.outlook]" in caplog.text


def test_without_secrets_the_mailboxes_load_but_no_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALICE_RT", raising=False)
    monkeypatch.delenv("ALICE_SECRET", raising=False)
    path = write(tmp_path, BASE)
    assert "ALICE_SECRET is not set" in refused(path)
    config = load_config(path, secrets=False)
    assert config.mailboxes[0].credential == "alice" and not config.secrets_read
    assert config.credentials["alice"].refresh_token is None
    with pytest.raises(ConfigurationError, match="loaded without its secrets"):
        TokenSources(config)
    # Their shape is still checked.
    text = BASE.replace('refresh_token_env = "ALICE_RT"\n', "")
    with pytest.raises(ConfigurationError, match="refresh_token: missing"):
        load_config(write(tmp_path, text), secrets=False)
