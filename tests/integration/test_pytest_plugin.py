"""The pytest plugin, tested the way users meet it: in a separate pytest run."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "test_with_plugin.py"

CONFIG = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def test_readme_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini(CONFIG)
    pytester.makepyfile(test_example=EXAMPLE.read_text())
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1)


def test_client_fixtures_and_personality(pytester: pytest.Pytester) -> None:
    pytester.makeini(CONFIG)
    pytester.makepyfile(
        test_clients="""
import pytest
from mailoauth import AuthenticationError, ImapClient, SecurityOptions

@pytest.mark.asyncio
async def test_send_read_pop(mailoauth_smtp, mailoauth_imap, mailoauth_pop3, mailoauth_user):
    user = mailoauth_user.username
    await mailoauth_smtp.sendmail(user, [user], b"Subject: x\\r\\n\\r\\nhello\\r\\n")
    await mailoauth_imap.select()
    assert len(await mailoauth_imap.uid_search("ALL")) == 1
    assert (await mailoauth_pop3.stat()).count in (0, 1)  # POP3 session opened earlier

@pytest.mark.asyncio
@pytest.mark.mailoauth(personality="office365")
async def test_office365_rejects_at_once(mailoauth_sandbox, mailoauth_user):
    box = mailoauth_sandbox
    wrong = box.oauth.issue_access_token("someone-else@example.test")
    with pytest.raises(AuthenticationError) as info:
        async with ImapClient(box.imap.host, box.imap.tls_port, mailoauth_user.username,
                              wrong, SecurityOptions.SSL_IMPLICIT, ssl_context=box.ssl_context):
            pass
    assert info.value.challenge is None
    assert "AUTHENTICATE failed" in info.value.server_reply

@pytest.mark.mailoauth(personality="hotmail")
def test_bad_personality(mailoauth_sandbox):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*use one of gmail, office365, rfc*"])


def test_plugin_is_opt_in(pytester: pytest.Pytester) -> None:
    pytester.makeini(CONFIG)
    pytester.makepyfile(test_plain="def test_nothing():\n    assert True\n")
    result = pytester.runpytest_subprocess("-q", "--fixtures")
    result.stdout.fnmatch_lines(["*mailoauth_sandbox*"])
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1)
