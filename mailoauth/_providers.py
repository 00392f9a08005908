"""What mailoauth knows about Google and Microsoft: one home, read by every layer.

Hosts, scopes, endpoints, audiences, error codes and the hints that explain them. The
token providers (:mod:`mailoauth.tokens`), the auth loop (:mod:`mailoauth._core.auth`),
the command's diagnosis (:mod:`mailoauth.cli.diagnose`), its login presets and the
sandbox's host routes all read it from here; the public names stay where they were
(:mod:`mailoauth.tokens.scopes`, :data:`mailoauth.tokens.responses.VENDOR_HINTS`,
:data:`mailoauth.testing.sandbox.PROVIDER_HOSTS` re-export). Data only: no I/O, and no
import from the rest of mailoauth.

Sources:
- Google: https://developers.google.com/gmail/xoauth2_protocol (the one scope for IMAP,
  POP and SMTP), https://developers.google.com/identity/protocols/oauth2/web-server
  (endpoints, refresh tokens of apps in "Testing" status);
- Microsoft: https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
  (delegated scopes, the app-only .default scope, SASL XOAUTH2),
  https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
  (the AADSTS codes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import urlsplit

__all__ = [
    "AADSTS_CONSENT_REQUIRED",
    "AADSTS_INVALID_CLIENT_SECRET",
    "AADSTS_NO_OFFLINE_ACCESS",
    "AADSTS_REFRESH_TOKEN_EXPIRED",
    "APP_ONLY_ROLES",
    "AUTH_FAILURE_HINTS",
    "DELEGATED_PERMISSIONS",
    "GOOGLE_AUTHORIZATION_URL",
    "GOOGLE_DOMAINS",
    "GOOGLE_MAIL_SCOPE",
    "GOOGLE_TOKEN_URL",
    "GRAPH_AUDIENCES",
    "MAIL_HOSTS",
    "MICROSOFT_DOMAINS",
    "MICROSOFT_ISSUERS",
    "MS_APP_ONLY_SCOPE",
    "MS_AUTHORITY",
    "MS_DELEGATED_SCOPES",
    "MS_IMAP_SCOPE",
    "MS_OFFLINE_ACCESS",
    "MS_POP_SCOPE",
    "MS_SMTP_SCOPE",
    "OUTLOOK_AUDIENCES",
    "OUTLOOK_RESOURCE",
    "TOKEN_ENDPOINT_DOMAINS",
    "VENDOR_HINTS",
    "Vendor",
    "host_in",
    "vendor_of",
]

Vendor = Literal["google", "microsoft"]

# -- Google --------------------------------------------------------------------------

GOOGLE_MAIL_SCOPE: Final = "https://mail.google.com/"
"""Full Gmail access: the one scope Gmail's IMAP, POP and SMTP accept."""
GOOGLE_TOKEN_URL: Final = "https://oauth2.googleapis.com/token"
GOOGLE_AUTHORIZATION_URL: Final = "https://accounts.google.com/o/oauth2/v2/auth"
#: Domains of Google's mail servers and OAuth endpoints (a host is theirs if it is one
#: of these or ends with ``.`` and one of these).
GOOGLE_DOMAINS: Final = ("gmail.com", "googlemail.com", "google.com", "googleapis.com")

# -- Microsoft -----------------------------------------------------------------------

MS_AUTHORITY: Final = "https://login.microsoftonline.com"
#: The resource of Exchange Online that mail scopes are prefixed with (not Graph's).
OUTLOOK_RESOURCE: Final = "https://outlook.office.com"
MS_IMAP_SCOPE: Final = f"{OUTLOOK_RESOURCE}/IMAP.AccessAsUser.All"
MS_POP_SCOPE: Final = f"{OUTLOOK_RESOURCE}/POP.AccessAsUser.All"
MS_SMTP_SCOPE: Final = f"{OUTLOOK_RESOURCE}/SMTP.Send"
MS_OFFLINE_ACCESS: Final = "offline_access"
"""Asks Microsoft for a refresh token along with the access token."""
MS_APP_ONLY_SCOPE: Final = "https://outlook.office365.com/.default"
"""The scope of app-only (client credentials) tokens for IMAP and POP."""
MS_DELEGATED_SCOPES: tuple[str, ...] = (MS_IMAP_SCOPE, MS_POP_SCOPE, MS_SMTP_SCOPE)
"""IMAP, POP and SMTP on behalf of a user (one token serves all three)."""
#: The delegated permission (``scp``) each protocol needs from Exchange Online.
DELEGATED_PERMISSIONS: Final[Mapping[str, str]] = {
    "smtp": "SMTP.Send",
    "imap": "IMAP.AccessAsUser.All",
    "pop3": "POP.AccessAsUser.All",
}
#: The application permission (``roles``) each protocol needs for app-only access.
APP_ONLY_ROLES: Final[Mapping[str, str]] = {
    "smtp": "SMTP.SendAsApp",
    "imap": "IMAP.AccessAsApp",
    "pop3": "POP.AccessAsApp",
}
#: Microsoft Graph: a token for it is useless for IMAP, POP and SMTP.
GRAPH_AUDIENCES: Final = frozenset(
    {"00000003-0000-0000-c000-000000000000", "https://graph.microsoft.com"}
)
#: Exchange Online: what a mail token's ``aud`` should be.
OUTLOOK_AUDIENCES: Final = frozenset(
    {
        "https://outlook.office.com",
        "https://outlook.office365.com",
        "00000002-0000-0ff1-ce00-000000000000",
    }
)
#: Domains of Microsoft's mail servers and sign-in endpoints.
MICROSOFT_DOMAINS: Final = ("office365.com", "outlook.com", "office.com", "microsoftonline.com")
#: What the ``iss`` claim of a Microsoft-issued token contains.
MICROSOFT_ISSUERS: Final = ("sts.windows.net", "login.microsoftonline.com")

#: Entra ID error codes (in ``error_description``) that have a cause of their own.
AADSTS_NO_OFFLINE_ACCESS: Final = "AADSTS9002313"
AADSTS_CONSENT_REQUIRED: Final = "AADSTS65001"
AADSTS_REFRESH_TOKEN_EXPIRED: Final = ("AADSTS700082", "AADSTS50173", "AADSTS700084")
AADSTS_INVALID_CLIENT_SECRET: Final = "AADSTS7000215"

# -- both ----------------------------------------------------------------------------

#: The host names users type, by protocol (Gmail, Office 365, Outlook.com).
MAIL_HOSTS: Final[Mapping[str, tuple[str, ...]]] = {
    "smtp": ("smtp.gmail.com", "smtp.office365.com", "smtp-mail.outlook.com"),
    "imap": ("imap.gmail.com", "outlook.office365.com", "imap-mail.outlook.com"),
    "pop3": ("pop.gmail.com", "outlook.office365.com", "pop-mail.outlook.com"),
}

#: The domains of each vendor's token endpoints: where an OAuth error code gets the
#: vendor's own hint (:data:`VENDOR_HINTS`).
TOKEN_ENDPOINT_DOMAINS: Final[Mapping[Vendor, tuple[str, ...]]] = {
    "google": ("googleapis.com", "google.com"),
    "microsoft": ("login.microsoftonline.com", "login.microsoft.com", "login.live.com"),
}

VENDOR_HINTS: Mapping[Vendor, Mapping[str, str]] = {
    "google": {
        "invalid_grant": (
            "the refresh token (or assertion) was refused: it was revoked or has expired. "
            "Usual causes: the user revoked access or changed their password; an app whose "
            "OAuth consent screen is in 'Testing' publishing status gets refresh tokens that "
            "expire after 7 days, and unused ones expire after 6 months; a service "
            "account's subject needs domain-wide delegation. Sign in again to get a new "
            "refresh token"
        ),
        "unauthorized_client": (
            "this client may not use this grant: use an OAuth client of the right type "
            "(Desktop app for the installed-app flow), or domain-wide delegation for a "
            "service account"
        ),
        "invalid_scope": (
            f"the scope was refused: Gmail's IMAP, POP and SMTP need {GOOGLE_MAIL_SCOPE}"
        ),
    },
    "microsoft": {
        "invalid_grant": (
            "the refresh token (or password, code or assertion) was refused: it was revoked "
            "or has expired. Usual causes: the password changed, MFA or Conditional Access "
            "now requires an interactive sign-in, consent was revoked, or an old rotated "
            "refresh token was reused (always keep the newest one, e.g. in a token store); "
            "for the password grant: wrong username or password, or MFA is required. Sign "
            "in again to get a new refresh token"
        ),
        "unauthorized_client": (
            "this client may not use this grant: enable it for the app registration "
            "('Allow public client flows' for password and device code)"
        ),
        "invalid_scope": (
            f"the scope was refused: Microsoft delegated needs {MS_IMAP_SCOPE}, "
            f"{DELEGATED_PERMISSIONS['pop3']} or {DELEGATED_PERMISSIONS['smtp']} (plus "
            f"{MS_OFFLINE_ACCESS}), and app-only needs {MS_APP_ONLY_SCOPE}; check the app's "
            "API permissions"
        ),
    },
}
"""Google's and Microsoft's own causes for an OAuth error code from their endpoints."""

#: What to check when a mail server rejects a token, by protocol.
AUTH_FAILURE_HINTS: Final[Mapping[str, str]] = {
    "smtp": (
        f"check the token's scope (Google: {GOOGLE_MAIL_SCOPE}; Microsoft: "
        f"{MS_SMTP_SCOPE}, or .default for app-only) and audience "
        "(Outlook, not Graph), that SMTP AUTH is enabled for the mailbox (Microsoft "
        "5.7.139), and that the token belongs to this user"
    ),
    "imap": (
        f"check the token's scope (Google: {GOOGLE_MAIL_SCOPE}; Microsoft: "
        f"{MS_IMAP_SCOPE}) and audience, that IMAP is "
        "enabled for the account, and that the token belongs to this user"
    ),
    "pop3": (
        f"check the token's scope (Google: {GOOGLE_MAIL_SCOPE}; Microsoft: "
        f"{MS_POP_SCOPE}) and audience, that POP is "
        "enabled for the account, and that the token belongs to this user"
    ),
}


def host_in(host: str, domains: tuple[str, ...]) -> bool:
    """Whether ``host`` is one of ``domains`` or a subdomain of one (case-insensitive,
    a trailing dot ignored)."""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def vendor_of(url: str) -> Vendor | None:
    """``"google"`` or ``"microsoft"`` when ``url`` is on their token endpoint hosts,
    else None."""
    host = urlsplit(url).hostname or ""
    for vendor, domains in TOKEN_ENDPOINT_DOMAINS.items():
        if host_in(host, domains):
            return vendor
    return None
