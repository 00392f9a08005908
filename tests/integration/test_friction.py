"""Issue 15, "what the new user met": one test per friction item, named test_item_N_...

The command's items run the real command (``python -m mailoauth ...`` in a subprocess)
against loopback servers: the sandbox, a fake OAuth server, or a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailoauth import ImapClient, Pop3Client, SecurityOptions, SmtpClient
from mailoauth.errors import (
    AuthenticationError,
    ConfigurationError,
    MailConnectionError,
    PermanentTokenError,
    TLSError,
    UsageError,
)
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox
from mailoauth.tokens import FileTokenStore, OAuth2TokenProvider, RefreshTokenGrant
from tests.integration.cli_device import login_with_device_code

#: Seconds any one command may take.
COMMAND_TIMEOUT = 60


def mailoauth(
    *argv: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m mailoauth ARGV``: what a user types."""
    return subprocess.run(
        [sys.executable, "-m", "mailoauth", *argv],
        capture_output=True,
        text=True,
        input=stdin or "",  # never the test run's own standard input
        timeout=COMMAND_TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
    )


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def oauth() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer() as server:
        yield server


@pytest.fixture(scope="module")
def sandbox() -> Iterator[MailSandbox]:
    with MailSandbox() as box:
        yield box


#: A name for 127.0.0.1 that the sandbox's certificate (localhost, 127.0.0.1, ::1)
#: does not hold.
OTHER_NAME = "127.1"


# -- 1. a refused connection ----------------------------------------------------------


@pytest.mark.asyncio
async def test_item_1_a_refused_connection_says_refused_with_host_and_port() -> None:
    port = free_port()
    client = ImapClient(
        "127.0.0.1", port, "me@example.test", "not-a-real-token", SecurityOptions.NONE,
        allow_insecure_auth=True, timeout=5,
    )  # fmt: skip
    with pytest.raises(MailConnectionError) as info:
        async with client:
            pass
    message = str(info.value)
    assert f"127.0.0.1:{port} refused the connection" in message
    assert "lost" not in message and "to:" not in message


def test_item_1_the_command_says_refused_and_names_an_unknown_host() -> None:
    port = free_port()
    proc = mailoauth(
        "check", "imap", "127.0.0.1", "--port", str(port), "--security", "ssl",
        "--user", "me@example.test", "--token", "at-whatever", "--timeout", "5",
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"127.0.0.1:{port} refused the connection" in proc.stdout
    assert "to:" not in proc.stdout
    proc = mailoauth(
        "check", "imap", "no-such-host.invalid", "--security", "ssl",
        "--user", "me@example.test", "--token", "at-whatever", "--timeout", "5",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "'no-such-host.invalid' does not resolve" in proc.stdout


# -- 2. a 404 from the token URL -------------------------------------------------------


@pytest.mark.asyncio
async def test_item_2_a_404_from_the_token_url_says_the_url_looks_wrong(
    oauth: FakeOAuthServer,
) -> None:
    for url, base in ((oauth.base_url, True), (oauth.base_url + "/oauth/token2", False)):
        provider = OAuth2TokenProvider(
            url, RefreshTokenGrant("rt-whatever"), client_id="app", allow_insecure_http=True
        )
        async with provider:
            with pytest.raises(PermanentTokenError) as info:
                await provider.get_access_token()
        message = str(info.value)
        assert "HTTP 404 Not Found" in message and "the URL looks wrong" in message
        assert "refused the grant" not in message
        assert ("base URL, with no path" in message) is base
        assert info.value.status_code == 404


def test_item_2_login_says_the_token_url_looks_wrong(oauth: FakeOAuthServer) -> None:
    # The device request works; the first poll of the (wrong) token URL gets a 404.
    proc = mailoauth(
        "login", "oauth2", "--device", "--client-id", "app", "--scope", "mail",
        "--device-authorization-url", oauth.base_url + "/devicecode",
        "--token-url", oauth.base_url + "/", "--timeout", "20",
        "--store", os.devnull + ".none",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "the URL looks wrong" in proc.stderr and "base URL" in proc.stderr
    assert "refused the grant" not in proc.stderr + proc.stdout


# -- 6. --debug anywhere ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["first", "after the subcommand", "last"])
def test_item_6_debug_works_wherever_it_is_placed(where: str, tmp_path: Path) -> None:
    argv = ["token", "refresh", "--store", str(tmp_path / "none.json"), "missing"]
    position = {"first": 0, "after the subcommand": 1, "last": len(argv)}[where]
    proc = mailoauth(*argv[:position], "--debug", *argv[position:])
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "no stored credential 'missing'" in proc.stderr
    assert "run with --debug" not in proc.stderr


def test_item_6_every_failure_says_run_with_debug(tmp_path: Path) -> None:
    # An error raised to the top...
    proc = mailoauth("token", "refresh", "--store", str(tmp_path / "none.json"), "missing")
    assert proc.returncode == 1 and "run with --debug" in proc.stderr
    # ...and a failure the subcommand reports itself (check's ✗ step and diagnosis).
    proc = mailoauth(
        "check", "imap", "127.0.0.1", "--port", str(free_port()), "--security", "ssl",
        "--user", "me@example.test", "--token", "at-whatever", "--timeout", "5",
    )  # fmt: skip
    assert proc.returncode == 1 and "run with --debug" in proc.stderr


# -- 7. login --device -------------------------------------------------------------------


def test_item_7_device_login_waits_only_once_there_is_a_code(oauth: FakeOAuthServer) -> None:
    proc = mailoauth(
        "login", "microsoft", "--device", "--client-id", "app",
        "--authority", oauth.base_url + "/not-here", "--tenant", "contoso",
        "--timeout", "20", "--store", os.devnull + ".none",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "waiting for the code" not in proc.stdout
    assert "HTTP 404 Not Found" in proc.stderr and "the URL looks wrong" in proc.stderr
    assert "refused the grant" not in proc.stderr


# -- 8. a certificate for other names ----------------------------------------------------


@pytest.mark.asyncio
async def test_item_8_a_name_mismatch_is_named_even_with_an_ssl_context(
    sandbox: MailSandbox,
) -> None:
    user = sandbox.user("mismatch@example.test")
    client = ImapClient(
        OTHER_NAME, sandbox.imap.tls_port, user.username, user.access_token(),
        ssl_context=sandbox.ca.client_context(), timeout=5,
    )  # fmt: skip
    with pytest.raises(TLSError) as info:
        async with client:
            pass
    message = str(info.value)
    assert "not issued for the host name" in message and repr(OTHER_NAME) in message
    assert "pass ssl_context=" not in message


def test_item_8_check_names_what_the_certificate_holds(sandbox: MailSandbox) -> None:
    user = sandbox.user("mismatch-cli@example.test")
    proc = mailoauth(
        "check", "imap", OTHER_NAME, "--port", str(sandbox.imap.tls_port), "--security", "ssl",
        "--cafile", str(sandbox.ca.files.ca), "--user", user.username,
        "--token", user.access_token(), "--timeout", "5",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "✗ TLS" in proc.stdout
    assert f"issued for localhost, 127.0.0.1, 0:0:0:0:0:0:0:1, not for {OTHER_NAME}" in proc.stdout
    assert "pass ssl_context=" not in proc.stdout


# -- 10. used before connect() -----------------------------------------------------------


@pytest.mark.asyncio
async def test_item_10_every_client_says_connect_first_and_async_with_works(
    sandbox: MailSandbox,
) -> None:
    user = sandbox.user("early@example.test")
    ctx = sandbox.ca.client_context()
    imap = ImapClient(
        "127.0.0.1", sandbox.imap.tls_port, user.username, user.access_token(), ssl_context=ctx
    )
    pop = Pop3Client(
        "127.0.0.1", sandbox.pop3.tls_port, user.username, user.access_token(), ssl_context=ctx
    )
    smtp = SmtpClient(
        "127.0.0.1", sandbox.smtp.tls_port, user.username, user.access_token(),
        SecurityOptions.SSL_IMPLICIT, ssl_context=ctx,
    )  # fmt: skip
    for call in (imap.select("INBOX"), pop.stat(), smtp.noop()):
        with pytest.raises(UsageError, match=r"connect\(\) first"):
            await call
    # SMTP's old habit of connecting by itself still works, with a DeprecationWarning.
    with pytest.warns(DeprecationWarning, match="will raise UsageError"):
        await smtp.sendmail(user.username, [user.username], b"Subject: early\r\n\r\nx\r\n")
    await smtp.aclose()
    async with imap, pop, smtp:
        assert (await imap.select("INBOX")).exists == 1
        assert (await pop.stat()).count == 1
        await smtp.noop()
    for call in (imap.select("INBOX"), pop.stat(), smtp.noop()):
        with pytest.raises(UsageError):
            await call


# -- 3. username and token swapped ---------------------------------------------------------


@pytest.mark.asyncio
async def test_item_3_a_token_in_the_username_slot_is_never_printed(sandbox: MailSandbox) -> None:
    user = sandbox.user("swapped@example.test")
    token = user.access_token()
    # Swapped: refused before anything is sent, naming neither.
    with pytest.raises(ConfigurationError, match="seem swapped") as swapped:
        ImapClient("127.0.0.1", sandbox.imap.tls_port, token, user.username)
    assert token not in str(swapped.value)
    # A token as the username, another as the token: the server's refusal hides it.
    other = sandbox.user("other@example.test").access_token()
    client = ImapClient(
        "127.0.0.1", sandbox.imap.tls_port, token, other,
        ssl_context=sandbox.ca.client_context(), timeout=5,
    )  # fmt: skip
    assert token not in repr(client)
    with pytest.raises(AuthenticationError) as info:
        async with client:
            pass
    assert token not in str(info.value) and "username, not shown" in str(info.value)


def test_item_3_the_command_prints_no_token_from_any_slot(sandbox: MailSandbox) -> None:
    user = sandbox.user("swapped-cli@example.test")
    token = user.access_token()
    for user_arg, token_arg in ((token, user.username), (token, user.access_token())):
        proc = mailoauth(
            "check", "imap", "127.0.0.1", "--port", str(sandbox.imap.tls_port),
            "--security", "ssl", "--cafile", str(sandbox.ca.files.ca),
            "--user", user_arg, "--token", token_arg, "--timeout", "5",
        )  # fmt: skip
        # Locals, so that a failure's report shows the cause, never the token (a CI run
        # once failed here and its report was withheld as a leak by the secrets scan).
        code, printed = proc.returncode, token in proc.stdout + proc.stderr
        shown = (proc.stdout + proc.stderr).replace(token, "<the token>")
        assert code == 1, f"exit {code}: {shown}"
        assert not printed, f"the token was printed: {shown}"
    assert "username, not shown" in proc.stdout  # the refusal (✗ AUTH) of the last one


# -- 13. the demo says what happened ----------------------------------------------------------


def test_item_13_the_demo_says_which_token_served_which_session() -> None:
    proc = mailoauth("demo")
    assert proc.returncode == 0, proc.stderr
    assert "all three sessions" not in proc.stdout
    # SMTP logged in as alice, IMAP and POP3 as bob: one token request each.
    assert "alice@example.test → bob@example.test" in proc.stdout
    assert (
        "one token per user, shared by that user's sessions (alice's: SMTP; bob's: IMAP "
        "and POP3): 2 token requests so far"
    ) in proc.stdout


# -- 12. the pytest plugin in a new project ---------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "test_with_plugin.py"


#: What pytest-asyncio reads (the same on every version; its header's wording is not).
SCOPE_CHECK = """
def test_scope(pytestconfig):
    assert pytestconfig.getini("asyncio_default_fixture_loop_scope") == "%s"
"""


def test_item_12_a_fresh_project_gets_no_loop_scope_warning(pytester: pytest.Pytester) -> None:
    # What a new user writes: asyncio_mode at most, no asyncio_default_fixture_loop_scope.
    pytester.makeini("[pytest]\nasyncio_mode = strict\n")
    pytester.makepyfile(test_example=EXAMPLE.read_text(), test_scope=SCOPE_CHECK % "function")
    result = pytester.runpytest_subprocess("-W", "error::pytest.PytestDeprecationWarning")
    result.assert_outcomes(passed=2)
    output = result.stdout.str() + result.stderr.str()
    assert "is unset" not in output and "PytestDeprecationWarning" not in output


def test_item_12_a_project_setting_of_its_own_is_kept(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = class\n"
    )
    pytester.makepyfile(test_scope=SCOPE_CHECK % "class")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


# -- 5. the command's hints speak to its user --------------------------------------------------


def test_item_5_check_with_a_bare_token_speaks_of_options(
    sandbox: MailSandbox, tmp_path: Path
) -> None:
    user, other = sandbox.user("hint-a@example.test"), sandbox.user("hint-b@example.test")
    base = [
        "check", "imap", "127.0.0.1", "--port", str(sandbox.imap.tls_port), "--security", "ssl",
        "--cafile", str(sandbox.ca.files.ca), "--timeout", "5",
    ]  # fmt: skip
    proc = mailoauth(*base, "--user", user.username, "--token", other.access_token())
    assert proc.returncode == 1
    assert "pass a TokenProvider" not in proc.stdout and "even after a refresh" not in proc.stdout
    assert "use --store-key with a credential saved by mailoauth login" in proc.stdout
    # No --user and no profile: the hint does not speak of a profile.
    proc = mailoauth(*base, "--token", other.access_token())
    assert proc.returncode == 1
    assert "profile" not in proc.stdout
    assert "give --user: the account to log in as" in proc.stdout


# -- 4. one view of the store; importing a refresh token -------------------------------------


async def _library_provider(
    box: MailSandbox, refresh_token: str, store: Path, *, force_refresh: bool = False
) -> str:
    """What a library user's program does: get a token through a provider with a file
    store. Returns the access token."""
    provider = OAuth2TokenProvider(
        box.oauth.token_url, RefreshTokenGrant(refresh_token), client_id="lib-app",
        scope="mail", store=FileTokenStore(store), allow_insecure_http=True,
    )  # fmt: skip
    async with provider:
        return (await provider.get_access_token(force_refresh=force_refresh)).value


@pytest.mark.asyncio
async def test_item_4_every_key_token_show_lists_works_for_refresh_and_check(
    tmp_path: Path,
) -> None:
    oauth = FakeOAuthServer(rotate_refresh_tokens=True, reuse_detection=True)
    with oauth, MailSandbox(oauth=oauth) as box:
        user = box.user("library@example.test")
        store = tmp_path / "tokens.json"
        await _library_provider(box, user.refresh_token, store)
        shown = mailoauth("token", "show", "--store", str(store))
        assert shown.returncode == 0, shown.stderr
        key = next(k for k in json.loads(store.read_text())["credentials"] if k.endswith("|mail"))
        assert key in shown.stdout and "saved by a library provider" in shown.stdout
        refreshed = mailoauth("token", "refresh", key, "--store", str(store))
        assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
        assert "rotated the refresh token" in refreshed.stdout
        checked = mailoauth(
            "check", "imap", "127.0.0.1", "--port", str(box.imap.tls_port), "--security", "ssl",
            "--cafile", str(box.ca.files.ca), "--store", str(store), "--store-key", key,
            "--user", user.username, "--timeout", "5",
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "no stored credential" not in checked.stdout + checked.stderr
        # The library, started again with the refresh token it was first given, refreshes
        # with the newest one the command saved: no rotated-away token is sent again.
        await _library_provider(box, user.refresh_token, store, force_refresh=True)
        assert oauth.stats.reuse_detected == 0


def test_item_4_token_import_reads_the_secret_from_stdin_or_the_environment(
    tmp_path: Path, oauth: FakeOAuthServer
) -> None:
    store = tmp_path / "tokens.json"
    refresh_token = oauth.issue_refresh_token("imported@example.test")
    argv = [
        "token", "import", "work", "--client-id", "app", "--token-url", oauth.token_url,
        "--scope", "mail", "--username", "imported@example.test", "--store", str(store),
    ]  # fmt: skip
    proc = mailoauth(*argv, stdin=refresh_token + "\n")
    assert proc.returncode == 0, proc.stderr
    assert refresh_token not in proc.stdout + proc.stderr and "✓ SAVED" in proc.stdout
    proc = mailoauth("token", "refresh", "work", "--store", str(store))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # From an environment variable, with the client secret from another.
    second = oauth.issue_refresh_token("imported@example.test")
    proc = mailoauth(
        *argv, "--refresh-token-env", "MY_RT", "--client-secret-env", "MY_SECRET",
        env={"MY_RT": second, "MY_SECRET": "s3cret-value"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(store.read_text())["credentials"]["work"]["refresh_token"] == second
    # Nothing to import: said so, nothing saved.
    proc = mailoauth("token", "import", "other", "--client-id", "app", "--store", str(store))
    assert proc.returncode == 1 and "no refresh token to import" in proc.stderr


# -- 11. the README's polling section ------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_item_11_the_readme_says_how_polling_behaves_and_shows_its_controls() -> None:
    readme = (ROOT / "README.md").read_text()
    polling = readme.split("Polling many mailboxes:")[1].split("## The `mailoauth` command")[0]
    for fact in (
        "More mailboxes than connection slots are served in turn",
        "the first report from the mailboxes served later comes one or more",
        "A revoked grant is seen when the mailbox next needs a token",
        "poller.add(mailbox)",
        "poller.remove(key)",
        "poller.stop()",
        "[`examples/`](examples/)",
    ):
        assert fact in " ".join(polling.split()), fact
    body = (ROOT / "examples" / "poll_control.py").read_text().split("\n\n\n")[1]
    assert body.strip() in polling  # the example shown is the file that runs below


@pytest.mark.asyncio
async def test_item_11_the_poll_control_example_adds_removes_and_stops() -> None:
    spec = importlib.util.spec_from_file_location("poll_control", ROOT / "examples/poll_control.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    async with MailSandbox(personality=Personality.GMAIL) as box:
        users = {name: box.user(name) for name in ("c1@gmail.com", "c2@gmail.com")}
        for name in users:
            box.store.deliver(name, f"Subject: for {name}\r\n\r\nhi\r\n".encode())
        accounts = {name: user.refresh_token for name, user in users.items()}
        with warnings.catch_warnings():
            # The README's scenarios take no dialer: the deprecated process-wide routes.
            warnings.simplefilter("ignore", DeprecationWarning)
            with box.routes():
                subjects = await asyncio.wait_for(example.main(accounts, "id", "secret"), 30)
    assert sorted(subjects) == [f"for {name}" for name in sorted(users)]


def test_item_7_device_login_waits_after_showing_the_code(
    oauth: FakeOAuthServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "login", "microsoft", "--device", "--client-id", "public-client",
        "--authority", oauth.base_url, "--tenant", "contoso",
        "--store", str(tmp_path / "tokens.json"), "--timeout", "10",
    ]  # fmt: skip
    user_code = login_with_device_code(oauth, argv, "me@contoso.test")
    out = capsys.readouterr().out
    assert out.index(user_code) < out.index("waiting for the code to be entered")
