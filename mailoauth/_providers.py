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
from dataclasses import dataclass
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
    "MS_CLOUDS",
    "MS_DELEGATED_SCOPES",
    "MS_IMAP_SCOPE",
    "MS_OFFLINE_ACCESS",
    "MS_POP_SCOPE",
    "MS_SHARED_MAILBOX_HINT",
    "MS_SMTP_SCOPE",
    "OUTLOOK_AUDIENCES",
    "OUTLOOK_RESOURCE",
    "SEND_AS_DENIED_CODE",
    "SEND_AS_DENIED_HINT",
    "TOKEN_ENDPOINT_DOMAINS",
    "VENDOR_HINTS",
    "MicrosoftCloud",
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

# -- Microsoft's clouds ----------------------------------------------------------------


@dataclass(frozen=True)
class MicrosoftCloud:
    """One Microsoft cloud instance: where its users sign in and where its mail lives.

    ``resource`` is the Exchange Online resource that the mail scopes are prefixed with;
    a host or the resource is None where Microsoft's documentation does not give it
    (then pass ``scopes=`` or the host yourself).
    """

    name: str
    authority: str
    imap_host: str | None
    pop3_host: str | None
    smtp_host: str | None
    resource: str | None

    def delegated_scopes(self) -> tuple[str, ...] | None:
        """IMAP, POP and SMTP on behalf of a user in this cloud (None: not documented)."""
        if self.resource is None:
            return None
        return tuple(
            f"{self.resource}/{DELEGATED_PERMISSIONS[p]}" for p in ("imap", "pop3", "smtp")
        )

    def app_only_scope(self) -> str | None:
        """The ``.default`` scope of app-only tokens in this cloud (None: not documented)."""
        return None if self.resource is None else f"{self.resource}/.default"


#: Microsoft's clouds by the name ``cloud=`` takes. Sources, per value:
#: - authorities: https://learn.microsoft.com/en-us/entra/identity-platform/authentication-national-cloud
#:   (login.microsoftonline.com global, login.microsoftonline.us US Government; the
#:   China page https://docs.azure.cn/entra/identity-platform/authentication-national-cloud
#:   gives login.partner.microsoftonline.cn, which replaced login.chinacloudapi.cn);
#: - mail hosts: the Microsoft 365 endpoint lists, the Exchange Online row with TCP
#:   143/587/993/995: worldwide and GCC
#:   https://learn.microsoft.com/en-us/microsoft-365/enterprise/urls-and-ip-address-ranges
#:   (outlook.office365.com, smtp.office365.com), GCC High
#:   https://learn.microsoft.com/en-us/microsoft-365/enterprise/microsoft-365-u-s-government-gcc-high-endpoints
#:   (outlook.office365.us), DoD
#:   https://learn.microsoft.com/en-us/microsoft-365/enterprise/microsoft-365-u-s-government-dod-endpoints
#:   (outlook-dod.office365.us); the 21Vianet list
#:   https://learn.microsoft.com/en-us/microsoft-365/enterprise/urls-and-ip-address-ranges-21vianet
#:   has no IMAP/POP/SMTP row (only *.partner.outlook.cn on 443), so China's mail hosts
#:   are left out;
#: - resources: global is MS_IMAP_SCOPE's (the IMAP/POP/SMTP OAuth page). For 21Vianet,
#:   https://learn.microsoft.com/en-us/previous-versions/office/office-365-api/api/o365-china-endpoints
#:   gives https://partner.outlook.cn where the global service uses
#:   https://outlook.office.com. For GCC High and DoD no Microsoft page states the mail
#:   scope's resource; the values below are each cloud's Exchange Online host from the
#:   endpoint lists above (an inference: the lists name the host, not the scope).
MS_CLOUDS: Final[Mapping[str, MicrosoftCloud]] = {
    "global": MicrosoftCloud(
        "global",
        MS_AUTHORITY,
        "outlook.office365.com",
        "outlook.office365.com",
        "smtp.office365.com",
        OUTLOOK_RESOURCE,
    ),
    # GCC (moderate) runs in the worldwide cloud: same sign-in and hosts ("Worldwide
    # (including GCC)" in the endpoint list above).
    "gcc": MicrosoftCloud(
        "gcc",
        MS_AUTHORITY,
        "outlook.office365.com",
        "outlook.office365.com",
        "smtp.office365.com",
        OUTLOOK_RESOURCE,
    ),
    "us_gov_high": MicrosoftCloud(
        "us_gov_high",
        "https://login.microsoftonline.us",
        "outlook.office365.us",
        "outlook.office365.us",
        "outlook.office365.us",
        "https://outlook.office365.us",
    ),
    "us_gov_dod": MicrosoftCloud(
        "us_gov_dod",
        "https://login.microsoftonline.us",
        "outlook-dod.office365.us",
        "outlook-dod.office365.us",
        "outlook-dod.office365.us",
        "https://outlook-dod.office365.us",
    ),
    "china": MicrosoftCloud(
        "china",
        "https://login.partner.microsoftonline.cn",
        None,
        None,
        None,
        "https://partner.outlook.cn",
    ),
}

# Shared and delegated mailboxes. To open a shared mailbox over IMAP or POP, the SASL
# XOAUTH2 user= is the shared mailbox's address and the token is the delegate's (a user
# with FullAccess on it); the basic-auth form user\alias is not understood with OAuth:
# https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
# (section "Shared mailbox access"). FullAccess is granted with Add-MailboxPermission:
# https://learn.microsoft.com/en-us/powershell/module/exchangepowershell/add-mailboxpermission
MS_SHARED_MAILBOX_HINT: Final = (
    "to open a shared or delegated mailbox with OAuth, give the shared mailbox's address "
    "as the username and the delegate's token; the delegate needs FullAccess on it "
    "(Exchange Online PowerShell: Add-MailboxPermission -Identity <shared mailbox> -User "
    "<delegate> -AccessRights FullAccess). See https://learn.microsoft.com/en-us/exchange/"
    "client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-"
    "by-using-oauth#shared-mailbox-access"
)
#: The enhanced status code of Exchange Online's ``554 5.2.252 SendAsDenied; <user> not
#: allowed to send as <address>``: MAIL FROM (or From:) is an address the authenticated
#: user has no Send As right on.
SEND_AS_DENIED_CODE: Final = "5.2.252"
# Send As is granted with Add-RecipientPermission:
# https://learn.microsoft.com/en-us/powershell/module/exchangepowershell/add-recipientpermission
SEND_AS_DENIED_HINT: Final = (
    "the authenticated user may not send as this address (Exchange SendAsDenied): "
    "authenticate as the delegate and grant it Send As on the shared mailbox (Exchange "
    "Online PowerShell: Add-RecipientPermission -Identity <shared mailbox> -Trustee "
    "<delegate> -AccessRights SendAs; it can take up to an hour to apply), or send from "
    "the authenticated user's own address"
)

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
    "microsoft": (
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.live.com",
        # the national clouds' sign-in (MS_CLOUDS)
        "login.microsoftonline.us",
        "login.partner.microsoftonline.cn",
    ),
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
