"""Microsoft's national clouds: the presets, the provider's ``cloud=``, the host helper
and ``--cloud`` on ``mailoauth login microsoft`` and ``check``.

The values are checked against the sources cited at mailoauth._providers.MS_CLOUDS; the
flows run against the fake OAuth server standing in for the cloud's authority.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailoauth._providers import MS_CLOUDS
from mailoauth.cli import main
from mailoauth.cli.profiles import load_profiles
from mailoauth.errors import ConfigurationError
from mailoauth.testing.oauth_server import FakeOAuthServer
from mailoauth.tokens import (
    MS_APP_ONLY_SCOPE,
    MS_DELEGATED_SCOPES,
    MS_OFFLINE_ACCESS,
    MicrosoftCloud,
    MicrosoftTokenProvider,
    microsoft_cloud,
    microsoft_mail_host,
)
from tests.integration.cli_device import login_with_device_code

US_GOV = "https://login.microsoftonline.us"


def test_presets_name_each_clouds_authority_hosts_and_scopes() -> None:
    high, dod, china = (MS_CLOUDS[n] for n in ("us_gov_high", "us_gov_dod", "china"))
    assert MS_CLOUDS["global"].delegated_scopes() == MS_DELEGATED_SCOPES
    # App-only keeps Exchange's documented outlook.office365.com/.default in global.
    assert MS_CLOUDS["global"].app_only_scope() == MS_APP_ONLY_SCOPE
    assert MS_CLOUDS["gcc"].app_only_scope() == MS_APP_ONLY_SCOPE
    assert MS_CLOUDS["gcc"].authority == "https://login.microsoftonline.com"
    assert high.authority == dod.authority == US_GOV
    assert china.authority == "https://login.partner.microsoftonline.cn"
    assert high.delegated_scopes() == (
        "https://outlook.office365.us/IMAP.AccessAsUser.All",
        "https://outlook.office365.us/POP.AccessAsUser.All",
        "https://outlook.office365.us/SMTP.Send",
    )
    assert china.app_only_scope() == "https://partner.outlook.cn/.default"
    assert microsoft_mail_host("imap", "us_gov_high") == ("outlook.office365.us", 993)
    assert microsoft_mail_host("smtp", "us_gov_dod") == ("outlook-dod.office365.us", 587)
    assert microsoft_mail_host("pop3") == ("outlook.office365.com", 995)
    assert microsoft_mail_host("smtp", "gcc") == ("smtp.office365.com", 587)


def test_unknown_or_undocumented_is_a_configuration_error_that_says_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="us_gov_high"):
        microsoft_cloud("usgov")
    with pytest.raises(ConfigurationError, match=r"no imap host .*'china'"):
        microsoft_mail_host("imap", "china")
    with pytest.raises(ConfigurationError, match="imap, pop3 or smtp"):
        microsoft_mail_host("http", "global")
    assert microsoft_cloud("US-Gov-High") is MS_CLOUDS["us_gov_high"]


def test_one_argument_picks_the_authority_and_scopes_of_every_flow() -> None:
    ropc = MicrosoftTokenProvider.ropc("cid", "u", "p", cloud="us_gov_high")
    app = MicrosoftTokenProvider.client_credentials("cid", "s", tenant="t", cloud="china")
    refresh = MicrosoftTokenProvider.refresh_token("cid", "rt", cloud="us_gov_dod")
    assert ropc.token_url == f"{US_GOV}/organizations/oauth2/v2.0/token"
    assert ropc.scope == " ".join(MS_CLOUDS["us_gov_high"].delegated_scopes() or ())
    assert app.token_url == "https://login.partner.microsoftonline.cn/t/oauth2/v2.0/token"
    assert app.scope == "https://partner.outlook.cn/.default"
    assert refresh.scope is not None
    assert refresh.scope.split() == [
        "https://outlook-dod.office365.us/IMAP.AccessAsUser.All",
        "https://outlook-dod.office365.us/POP.AccessAsUser.All",
        "https://outlook-dod.office365.us/SMTP.Send",
        MS_OFFLINE_ACCESS,
    ]
    # authority= and scope= still override the cloud, and the default is global.
    custom = MicrosoftTokenProvider.refresh_token(
        "cid", "rt", cloud="china", authority="https://login.example", scope="x"
    )
    assert custom.token_url.startswith("https://login.example/") and custom.scope == "x"
    assert MicrosoftTokenProvider.refresh_token("cid", "rt").token_url.startswith(
        "https://login.microsoftonline.com/"
    )
    with pytest.raises(ConfigurationError, match="unknown Microsoft cloud"):
        MicrosoftTokenProvider.refresh_token("cid", "rt", cloud="mars")


@pytest.mark.asyncio
async def test_device_flow_in_a_cloud_of_ones_own_asks_its_authority_for_its_scopes() -> None:
    with FakeOAuthServer() as server:
        cloud = MicrosoftCloud(
            "test", server.base_url, "imap.test", None, None, "https://outlook.test"
        )
        prompts: list[str] = []

        async def owner_approves(auth: object) -> None:
            code = getattr(auth, "user_code", "")
            prompts.append(code)
            server.approve_device(code, "me@contoso.test")

        provider = MicrosoftTokenProvider.device_code(
            "public-client", tenant="contoso", cloud=cloud, on_prompt=owner_approves, interval=0
        )
        token = await provider.get_access_token()
        await provider.aclose()
        assert prompts and token.value
        form = server.token_forms[-1]
        assert form["grant_type"].endswith("device_code")
        asked = server.device_forms[-1]["scope"].split()
        assert asked == [*(cloud.delegated_scopes() or ()), MS_OFFLINE_ACCESS]
        assert asked[0] == "https://outlook.test/IMAP.AccessAsUser.All"
        assert microsoft_mail_host("imap", cloud) == ("imap.test", 993)


def test_login_microsoft_cloud_asks_for_the_clouds_scopes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "tokens.json"
    with FakeOAuthServer(rotate_refresh_tokens=True) as oauth:
        argv = [
            "login", "microsoft", "--device", "--client-id", "public-client",
            "--cloud", "us_gov_high", "--authority", oauth.base_url, "--tenant", "contoso",
            "--store", str(store), "--timeout", "10",
        ]  # fmt: skip
        login_with_device_code(oauth, argv, "me@agency.test")
        scope = oauth.device_forms[-1]["scope"].split()
    assert "https://outlook.office365.us/IMAP.AccessAsUser.All" in scope
    assert MS_OFFLINE_ACCESS in scope and not any("office.com" in s for s in scope)
    assert "outlook.office365.us" in (load_profiles(store)["microsoft"].scope or "")


def test_check_with_cloud_and_no_host(capsys: pytest.CaptureFixture[str]) -> None:
    # No HOST and no --cloud: a usage error naming both ways out (exit 2 or 1, no network).
    assert main(["check", "imap", "--token", "t"]) != 0
    assert "--cloud" in capsys.readouterr().err
    # The 21Vianet cloud has no documented IMAP host: said so, nothing dialed.
    assert main(["check", "imap", "--cloud", "china", "--token", "t"]) != 0
    assert "no imap host for the 'china' cloud" in capsys.readouterr().err
