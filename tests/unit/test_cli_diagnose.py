"""The pure parts of the command: failure diagnosis rules, token pre-flight warnings,
JWT decoding and redaction. One test (at least) per rule."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from mailoauth._providers import DIAGNOSES, diagnosis
from mailoauth.cli.claims import claim_list, decode_jwt
from mailoauth.cli.diagnose import (
    FALLBACKS,
    RULES,
    Situation,
    diagnose,
    exchange_candidates,
    is_google,
    is_microsoft,
    preflight,
    situation_from_error,
)
from mailoauth.cli.output import redact, relative_time
from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    ConnectionLostError,
    MailTimeoutError,
    PermanentTokenError,
    TLSError,
    TokenExpiredError,
    TransientTokenError,
)
from mailoauth.sasl import ErrorChallenge

GRAPH = "00000003-0000-0000-c000-000000000000"
MS_ISS = "https://sts.windows.net/7f0c0000-0000-0000-0000-000000000000/"


def jwt(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part(header or {'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def delegated(
    *scp: str, user: str = "me@contoso.com", aud: str = "https://outlook.office.com"
) -> dict[str, Any]:
    return {"aud": aud, "iss": MS_ISS, "scp": " ".join(scp), "upn": user}


def app_only(*roles: str) -> dict[str, Any]:
    return {
        "aud": "https://outlook.office365.com",
        "iss": MS_ISS,
        "roles": list(roles),
        "appid": "11111111-2222-3333-4444-555555555555",
    }


def auth_failure(protocol: str, host: str, reply: str, **kw: Any) -> Situation:
    return Situation(protocol=protocol, host=host, kind="auth", reply=reply, **kw)


def only(s: Situation) -> str:
    found = diagnose(s)
    assert len(found) == 1, found
    return found[0]


# -- rules ---------------------------------------------------------------------------


def test_smtp_auth_disabled_5_7_139() -> None:
    s = auth_failure(
        "smtp",
        "smtp.office365.com",
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
        "for the Tenant.",
        username="me@contoso.com",
        claims=delegated("SMTP.Send"),
    )
    text = only(s)
    assert "SMTP AUTH is disabled" in text and "SmtpClientAuthenticationDisabled $false" in text


def test_graph_audience_instead_of_outlook() -> None:
    s = auth_failure(
        "imap",
        "outlook.office365.com",
        "NO AUTHENTICATE failed.",
        username="me@contoso.com",
        claims=delegated("Mail.Read", aud=GRAPH),
    )
    found = diagnose(s)
    assert "Microsoft Graph" in found[0]
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in found[0]


@pytest.mark.parametrize(
    ("protocol", "needed"),
    [("smtp", "SMTP.Send"), ("imap", "IMAP.AccessAsUser.All"), ("pop3", "POP.AccessAsUser.All")],
)
def test_delegated_token_lacking_the_protocol_scope(protocol: str, needed: str) -> None:
    s = auth_failure(
        protocol,
        "outlook.office365.com",
        "NO AUTHENTICATE failed.",
        username="me@contoso.com",
        claims=delegated("IMAP.AccessAsUser.All" if protocol != "imap" else "SMTP.Send"),
    )
    text = only(s)
    assert f"lacks {needed}" in text and f"https://outlook.office.com/{needed}" in text


def test_app_only_token_lacking_the_role() -> None:
    s = auth_failure(
        "smtp",
        "smtp.office365.com",
        "535 5.7.3 Authentication unsuccessful",
        username="shared@contoso.com",
        claims=app_only("IMAP.AccessAsApp"),
    )
    assert "SMTP.SendAsApp" in only(s)


def test_app_only_with_role_on_office365_means_service_principal() -> None:
    s = auth_failure(
        "imap",
        "outlook.office365.com",
        "NO AUTHENTICATE failed.",
        username="shared@contoso.com",
        claims=app_only("IMAP.AccessAsApp"),
    )
    found = diagnose(s)
    text = "\n".join(found)
    assert "New-ServicePrincipal" in found[0] and "Add-MailboxPermission" in found[0]
    assert "11111111-2222-3333-4444-555555555555" in text and "shared@contoso.com" in text
    # Then the causes Exchange answers with the same words, the wrong Object ID first.
    wrong_object_id = diagnosis("exchange_wrong_service_principal").text()
    assert found[1] == wrong_object_id.replace("<client id>", app_only()["appid"])
    assert "Enterprise applications" in found[1] and "Get-MgServicePrincipal" in found[1]
    assert "Set-CASMailbox -Identity shared@contoso.com -ImapEnabled $true" in text
    assert "Exchange Online" in text and "license" in text


def test_google_invalid_grant_testing_mode() -> None:
    s = Situation(
        protocol="imap",
        host="imap.gmail.com",
        kind="token",
        oauth_error="invalid_grant",
        token_url="https://oauth2.googleapis.com/token",
    )
    text = "\n".join(diagnose(s))
    assert "7 days" in text and "In production" in text
    assert "live refresh tokens per account and OAuth client" in text


def test_google_detected_from_token_url_alone() -> None:
    s = Situation(
        protocol="token",
        kind="token",
        oauth_error="invalid_grant",
        token_url="https://oauth2.googleapis.com/token",
    )
    assert is_google(s) and "7 days" in diagnose(s)[0]


def test_microsoft_without_refresh_token_needs_offline_access() -> None:
    s = Situation(
        protocol="imap",
        host="outlook.office365.com",
        kind="token",
        oauth_error="expired",
        token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
        has_refresh_token=False,
    )
    assert "offline_access" in diagnose(s)[0]


def test_microsoft_aadsts_codes() -> None:
    base = Situation(
        protocol="token",
        kind="token",
        oauth_error="invalid_grant",
        token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
    )
    consent = Situation(**{**base.__dict__, "oauth_description": "AADSTS65001: no consent"})
    assert "consent" in only(consent)
    stale = Situation(**{**base.__dict__, "oauth_description": "AADSTS700082: expired"})
    assert "sign in again" in only(stale)
    secret = Situation(**{**base.__dict__, "oauth_error": "invalid_client"})
    assert "secret's Value" in diagnose(secret)[0]


def test_invalid_client_elsewhere() -> None:
    s = Situation(
        protocol="token",
        kind="token",
        oauth_error="invalid_client",
        token_url="https://auth.example.com/token",
    )
    assert "--client-secret" in only(s)


def test_certificate_failure_suggests_cafile() -> None:
    s = Situation(
        protocol="imap",
        host="mail.internal",
        kind="tls",
        message="certificate of mail.internal:993 could not be verified",
    )
    assert "--cafile" in only(s)


def test_no_greeting_suggests_implicit_tls() -> None:
    s = Situation(
        protocol="imap",
        host="h",
        kind="timeout",
        security="auto",
        message="h:993 sent no greeting within 15 s",
    )
    assert "--security ssl" in only(s)


def test_tls_on_plain_port_suggests_starttls() -> None:
    s = Situation(
        protocol="smtp",
        host="h",
        kind="tls",
        message="TLS failed: [SSL: WRONG_VERSION_NUMBER] wrong version number",
    )
    assert "--security starttls" in only(s)


def test_no_starttls_offered() -> None:
    s = Situation(protocol="pop3", host="h", kind="tls", message="h:110 does not offer STARTTLS")
    assert "implicit-TLS port" in only(s)


def test_unreachable() -> None:
    s = Situation(
        protocol="smtp",
        host="smtp.example.com",
        kind="connection",
        message="could not reach smtp.example.com:587: Connection refused",
    )
    assert "--port" in only(s)


def test_token_of_another_user() -> None:
    s = auth_failure(
        "imap",
        "outlook.office365.com",
        "NO AUTHENTICATE failed.",
        username="boss@contoso.com",
        claims=delegated("IMAP.AccessAsUser.All", user="me@contoso.com"),
    )
    assert "belongs to me@contoso.com" in only(s)


def test_challenge_scope_is_named() -> None:
    s = auth_failure(
        "imap",
        "127.0.0.1",
        "NO [AUTHENTICATIONFAILED]",
        challenge_status="400",
        challenge_scope="https://mail.google.com/",
        username="a@b",
    )
    assert "https://mail.google.com/" in only(s)


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        ("imap.gmail.com", "https://mail.google.com/"),
        ("outlook.office365.com", "Set-CASMailbox"),
        ("mail.example.com", "the server rejected the token: check"),
    ],
)
def test_generic_authentication_failure(host: str, needle: str) -> None:
    found = diagnose(auth_failure("imap", host, "NO auth failed", username="a@b"))
    assert needle in "\n".join(found)


def test_generic_token_failures() -> None:
    expired = Situation(protocol="imap", kind="token", oauth_error="expired")
    assert "--store-key" in only(expired)
    dead = Situation(
        protocol="imap",
        kind="token",
        oauth_error="invalid_grant",
        token_url="https://auth.example.com/token",
    )
    assert "mailoauth login" in only(dead)


def test_nothing_to_say() -> None:
    assert diagnose(Situation(protocol="imap", kind="command", reply="NO nope")) == []
    assert len(RULES) + len(FALLBACKS) + len(DIAGNOSES) >= 25


# -- from exceptions -----------------------------------------------------------------


def test_situation_from_each_error_kind() -> None:
    base = Situation(protocol="imap", host="h")
    challenge = ErrorChallenge(raw="{}", status="400", scope="https://mail.google.com/")
    auth = situation_from_error(
        AuthenticationError("rejected", server_reply="NO x", challenge=challenge), base
    )
    assert (auth.kind, auth.reply, auth.challenge_scope) == ("auth", "NO x", challenge.scope)
    grant = situation_from_error(
        PermanentTokenError("dead", error="invalid_grant", error_description="AADSTS70000"), base
    )
    assert (grant.kind, grant.oauth_error, grant.oauth_description) == (
        "token",
        "invalid_grant",
        "AADSTS70000",
    )
    assert situation_from_error(TokenExpiredError("x"), base).oauth_error == "expired"
    assert situation_from_error(TransientTokenError("x"), base).kind == "token"
    assert situation_from_error(TLSError("x"), base).kind == "tls"
    assert situation_from_error(MailTimeoutError("x"), base).kind == "timeout"
    assert situation_from_error(ConnectionLostError("x"), base).kind == "connection"
    assert situation_from_error(ConnectionRefusedError("x"), base).kind == "connection"
    command = situation_from_error(CommandError("x", reply="NO y"), base)
    assert (command.kind, command.reply) == ("command", "NO y")
    assert situation_from_error(ValueError("x"), base).kind == "other"


def test_provider_detection() -> None:
    assert is_microsoft(Situation(protocol="smtp", host="smtp.office365.com"))
    assert is_microsoft(Situation(protocol="smtp", host="x", claims={"iss": MS_ISS}))
    assert not is_microsoft(Situation(protocol="smtp", host="evil-office365.com"))
    assert is_google(Situation(protocol="imap", host="imap.gmail.com"))
    assert not is_google(Situation(protocol="imap", host="127.0.0.1"))


# -- pre-flight warnings -------------------------------------------------------------


def test_preflight_is_silent_for_opaque_and_good_tokens() -> None:
    assert preflight("imap", "me@contoso.com", None) == []
    good = delegated("IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send")
    for protocol in ("smtp", "imap", "pop3"):
        assert preflight(protocol, "ME@contoso.com", good) == []
    assert preflight("smtp", "x@contoso.com", app_only("SMTP.SendAsApp")) == []


def test_preflight_warnings() -> None:
    graph = preflight("smtp", "me@contoso.com", delegated("Mail.Send", aud=GRAPH))
    assert any("Microsoft Graph" in w for w in graph)
    assert any("lacks SMTP.Send" in w for w in graph)
    other_aud = preflight(
        "imap", "me@contoso.com", delegated("IMAP.AccessAsUser.All", aud="api://x")
    )
    assert any("not Exchange Online" in w for w in other_aud)
    assert any("POP.AccessAsApp" in w for w in preflight("pop3", "x@y", app_only("SMTP.SendAsApp")))
    owner = preflight("imap", "boss@contoso.com", delegated("IMAP.AccessAsUser.All"))
    assert any("belongs to me@contoso.com" in w for w in owner)


# -- claims and redaction ------------------------------------------------------------


def test_decode_jwt() -> None:
    decoded = decode_jwt(jwt({"aud": GRAPH, "roles": ["A", "B"], "scp": "x y"}))
    assert decoded is not None
    assert decoded.header["alg"] == "RS256" and decoded.claims["aud"] == GRAPH
    assert claim_list(decoded.claims, "roles") == ["A", "B"]
    assert claim_list(decoded.claims, "scp") == ["x", "y"]
    assert claim_list(decoded.claims, "missing") == []
    for opaque in ("ya29.a0AfH6SM", "at-abc", "a.b.c", "e30.W10.x", ""):
        assert decode_jwt(opaque) is None


def test_redact() -> None:
    assert redact("ya29.a0AfH6SMBx-secret-part") == "ya29.a…"
    assert redact("short") == "…"
    assert redact(None) == "-" and redact("") == "-"


def test_relative_time() -> None:
    assert relative_time(3599) == "in 60 min"
    assert relative_time(-5) == "5 s ago"
    assert relative_time(7 * 86400) == "in 7.0 days"
    assert relative_time(3 * 3600) == "in 3.0 h"


# -- the table of known failures (mailoauth._providers.DIAGNOSES) ----------------------

MS_TOKEN_URL = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"


@pytest.mark.parametrize(
    ("error", "description", "key", "needle"),
    [
        ("invalid_client", "AADSTS7000222: The provided client secret keys for app "
         "'x' are expired.", "aadsts_secret_expired", "Certificates & secrets"),
        ("invalid_client", "AADSTS7000215: Invalid client secret provided.",
         "aadsts_secret_invalid", "Value"),
        ("invalid_grant", "AADSTS65001: The user or administrator has not consented "
         "to use the application", "aadsts_consent_missing", "Grant admin consent"),
        ("invalid_request", "AADSTS90002: Tenant 'contoso.onmicrosft.com' not found.",
         "aadsts_tenant_not_found", "Directory (tenant) ID"),
        ("invalid_grant", "AADSTS700082: The refresh token has expired due to "
         "inactivity.", "aadsts_refresh_idle", "90 days"),
        ("invalid_grant", "AADSTS70043: The refresh token has expired or is invalid "
         "due to sign-in frequency checks by conditional access.",
         "aadsts_sign_in_frequency", "sign-in frequency"),
        ("invalid_grant", "AADSTS50173: The provided grant has expired due to it being "
         "revoked.", "aadsts_grant_revoked", "password change"),
    ],
)  # fmt: skip
def test_aadsts_codes_from_the_table(error: str, description: str, key: str, needle: str) -> None:
    s = Situation(
        protocol="token",
        kind="token",
        oauth_error=error,
        oauth_description=description,
        token_url=MS_TOKEN_URL,
    )
    found = diagnose(s)
    assert found[0] == diagnosis(key).text() and needle in found[0]
    assert "https://learn.microsoft.com/" in found[0]


@pytest.mark.parametrize(
    ("reply", "key"),
    [
        ("535 5.7.139 Authentication unsuccessful, user is locked by your "
         "organization's security defaults policy. Contact your administrator.",
         "exchange_security_defaults"),
        ("535 5.7.139 Authentication unsuccessful, the request did not meet the "
         "criteria to be authenticated successfully.", "exchange_smtp_auth_disabled"),
        ("554 5.2.252 SendAsDenied; me@contoso.com not allowed to send as "
         "shared@contoso.com; STOREDRV.Submission.Exception:SendAsDeniedException",
         "exchange_send_as_denied"),
        ("NO AUTHENTICATE failed: LogonDenied", "exchange_logon_denied"),
    ],
)  # fmt: skip
def test_exchange_codes_from_the_table(reply: str, key: str) -> None:
    s = Situation(protocol="smtp", host="smtp.office365.com", kind="command", reply=reply)
    assert diagnose(s) == [diagnosis(key).text()]


def test_security_defaults_is_not_also_smtp_auth_disabled() -> None:
    reply = "535 5.7.139 Authentication unsuccessful, user is locked by your security defaults"
    s = auth_failure("smtp", "smtp.office365.com", reply)
    assert "Security Defaults" in only(s)


def test_google_unauthorized_client_is_domain_wide_delegation() -> None:
    s = Situation(
        protocol="token",
        kind="token",
        oauth_error="unauthorized_client",
        oauth_description="Client is unauthorized to retrieve access tokens using this "
        "method, or client not authorized for any of the scopes requested.",
        token_url="https://oauth2.googleapis.com/token",
    )
    text = diagnose(s)[0]
    assert "Manage Domain Wide Delegation" in text and "Client ID" in text
    assert "https://mail.google.com/" in text and "support.google.com" in text


@pytest.mark.parametrize(
    ("protocol", "claims", "keys"),
    [
        ("imap", app_only("IMAP.AccessAsApp"), ["exchange_wrong_service_principal",
         "exchange_no_mailbox_permission", "exchange_imap_disabled",
         "exchange_mailbox_unavailable"]),
        ("pop3", delegated("POP.AccessAsUser.All"), ["exchange_pop_disabled",
         "exchange_mailbox_unavailable", "exchange_logon_denied"]),
        ("smtp", app_only("SMTP.SendAsApp"), ["exchange_wrong_service_principal",
         "exchange_no_mailbox_permission", "exchange_mailbox_unavailable"]),
        ("imap", None, ["exchange_wrong_service_principal",
         "exchange_no_mailbox_permission", "exchange_imap_disabled",
         "exchange_mailbox_unavailable", "exchange_logon_denied"]),
    ],
)  # fmt: skip
def test_exchange_candidates_by_kind_of_token(
    protocol: str, claims: dict[str, Any] | None, keys: list[str]
) -> None:
    s = auth_failure(protocol, "outlook.office365.com", "NO AUTHENTICATE failed.", claims=claims)
    assert [d.key for d in exchange_candidates(s)] == keys


def test_exchange_and_gmail_known_by_their_greeting() -> None:
    exchange = "* OK The Microsoft Exchange IMAP4 service is ready."
    s = auth_failure("imap", "mail.contoso.com", "NO AUTHENTICATE failed.", greeting=exchange)
    assert is_microsoft(s) and exchange_candidates(s)
    assert is_google(Situation(protocol="imap", host="10.0.0.1", greeting="* OK Gimap ready"))
    assert not exchange_candidates(auth_failure("imap", "mail.example.com", "NO x"))


def test_every_entry_cites_a_vendor_page_and_names_a_fix() -> None:
    keys = [d.key for d in DIAGNOSES]
    assert len(keys) == len(set(keys))
    for d in DIAGNOSES:
        assert d.source.startswith(
            ("https://learn.microsoft.com/", "https://developers.google.com/",
             "https://support.google.com/")
        ), d.key  # fmt: skip
        assert d.meaning and d.fix and d.text().startswith(d.meaning), d.key
        # Found by a code, by an OAuth error, or named as one of Exchange's candidates.
        assert (
            d.markers
            or d.oauth_error
            or d
            in exchange_candidates(
                auth_failure("imap", "outlook.office365.com", "NO AUTHENTICATE failed.")
            )
            or d.key == "exchange_pop_disabled"
        ), d.key


# -- the library reads the same table -----------------------------------------------


def test_authentication_error_hint_reads_the_table() -> None:
    from mailoauth._providers import AUTH_FAILURE_HINTS, auth_failure_hint

    reply = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"
    assert auth_failure_hint("smtp", reply) == diagnosis("exchange_smtp_auth_disabled").text()
    assert auth_failure_hint("imap", "NO AUTHENTICATE failed.") == AUTH_FAILURE_HINTS["imap"]
    # From Exchange Online, the bare refusal also names what Exchange answers it for.
    exchange = auth_failure_hint("pop3", "-ERR Authentication failure", "outlook.office365.com")
    assert exchange.startswith(AUTH_FAILURE_HINTS["pop3"])
    for key in ("exchange_wrong_service_principal", "exchange_pop_disabled"):
        assert diagnosis(key).meaning in exchange
    assert diagnosis("exchange_imap_disabled").meaning not in exchange


def test_permanent_token_error_hint_reads_the_table() -> None:
    from mailoauth.tokens.responses import decode_json_response

    body = json.dumps(
        {"error": "invalid_grant", "error_description": "AADSTS70043: sign-in frequency"}
    ).encode()
    with pytest.raises(PermanentTokenError) as info:
        decode_json_response(400, body)
    assert diagnosis("aadsts_sign_in_frequency").text() in str(info.value)
    plain = json.dumps({"error": "invalid_grant"}).encode()
    with pytest.raises(PermanentTokenError) as info:
        decode_json_response(400, plain)
    assert "Conditional Access" not in str(info.value) and "Sign in again" in str(info.value)
