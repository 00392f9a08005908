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

The table of known failures, :data:`DIAGNOSES`, has two readers: the library's error
hints (:func:`auth_failure_hint` for AuthenticationError, :func:`token_error_hint` for
PermanentTokenError) and ``mailoauth check``'s diagnosis (:mod:`mailoauth.cli.diagnose`).
Each entry cites the vendor page its facts come from.
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
    "CONNECTION_PRESETS",
    "DELEGATED_PERMISSIONS",
    "DIAGNOSES",
    "EXCHANGE_BARE_REFUSAL",
    "EXCHANGE_ONLINE_CONNECTIONS",
    "EXCHANGE_ONLINE_SMTP_CONNECTIONS",
    "GMAIL_CONNECTIONS",
    "GOOGLE_AUTHORIZATION_URL",
    "GOOGLE_DOMAINS",
    "GOOGLE_MAIL_SCOPE",
    "GOOGLE_TOKEN_URL",
    "GRAPH_AUDIENCES",
    "HINT_FIXES_IN_CHECK",
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
    "THROTTLING_REPLIES",
    "TOKEN_ENDPOINT_DOMAINS",
    "VENDOR_HINTS",
    "ConnectionPreset",
    "Diagnosis",
    "MicrosoftCloud",
    "Vendor",
    "auth_failure_hint",
    "connection_preset",
    "diagnoses_in",
    "diagnosis",
    "host_in",
    "token_error_hint",
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
    (then pass ``scope=`` or the host yourself).
    """

    name: str
    authority: str
    imap_host: str | None
    pop3_host: str | None
    smtp_host: str | None
    resource: str | None
    app_only_resource: str | None = None
    """The resource of app-only ``.default`` scopes, when it is not ``resource``."""

    def delegated_scopes(self) -> tuple[str, ...] | None:
        """IMAP, POP and SMTP on behalf of a user in this cloud (None: not documented)."""
        if self.resource is None:
            return None
        return tuple(
            f"{self.resource}/{DELEGATED_PERMISSIONS[p]}" for p in ("imap", "pop3", "smtp")
        )

    def app_only_scope(self) -> str | None:
        """The ``.default`` scope of app-only tokens in this cloud (None: not documented)."""
        resource = self.app_only_resource or self.resource
        return None if resource is None else f"{resource}/.default"


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
        MS_APP_ONLY_SCOPE.removesuffix("/.default"),
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
        MS_APP_ONLY_SCOPE.removesuffix("/.default"),
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
# SEND_AS_DENIED_HINT: the table's entry exchange_send_as_denied, below DIAGNOSES.

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

# -- connection limits ----------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionPreset:
    """How many connections a poller may hold to one provider's mail hosts.

    ``provider_limit`` is the provider's own limit of simultaneous IMAP (or POP)
    connections per account (mailbox); ``max_per_account`` is the cap mailoauth applies,
    below it, so that the account's owner can still open their own mail client.
    ``max_per_host`` is None: these limits count connections per *account*, so a poller
    watching many accounts on one host needs no per-host cap. ``source`` is the page the
    limit comes from.
    """

    provider: str
    provider_limit: int
    max_per_account: int
    source: str
    max_per_host: int | None = None


# Gmail counts simultaneous IMAP connections per account and refuses the one over its
# limit at login with "NO [ALERT] Too many simultaneous connections. (Failure)". Google's
# own Gmail Help page for that error (answer 97150, 2008) gave 10 connections per
# account: http://mail.google.com/support/bin/answer.py?hl=en&answer=97150 ; the limit
# has been 15 for years, as the help for the same error in mail clients states
# (https://support.getmailbird.com/hc/en-us/articles/16298148976279-Too-many-simultaneous-connections,
# https://github.com/zone-eu/wildduck/issues/35 quoting Gmail's reply). Google's current
# IMAP page states no number, only session lengths and per-user bandwidth limits shared
# by every client of the account: https://developers.google.com/workspace/gmail/imap/imap-smtp
# (a Workspace account may download 2,500 MB/day over IMAP, 1,250 MB/day over POP; a
# poller fetches only new mail, far below). The preset keeps 10 of the 15 (a mail
# client such as Thunderbird opens up to 5), which also stays within the old 10. Gmail
# documents no separate POP connection limit; pop.gmail.com gets the same preset.
GMAIL_CONNECTIONS: Final = ConnectionPreset(
    "gmail",
    provider_limit=15,
    max_per_account=10,
    source="http://mail.google.com/support/bin/answer.py?hl=en&answer=97150",
)

# Exchange Online allows 20 concurrent IMAP4 and 20 concurrent POP3 connections per
# user (mailbox), not configurable by tenants: "Exchange Online Throttling and Limits
# FAQ", https://blogs.msdn.microsoft.com/exchangedev/2011/06/23/exchange-online-throttling-and-limits-faq/
# (the on-premises default, MaxConnectionsPerUser, is 16:
# https://learn.microsoft.com/en-us/previous-versions/office/exchange-server-2007/aa998252(v=exchg.80)).
# Microsoft documents no per-app or per-tenant IMAP/POP connection limit; SMTP AUTH
# submission is limited to 3 concurrent connections per mailbox (432 4.3.2 beyond):
# https://techcommunity.microsoft.com/t5/exchange-team-blog/changes-coming-to-the-smtp-authenticated-submission-client/ba-p/607825
# The preset keeps 15 of the 20 for other IMAP/POP clients of the mailbox.
EXCHANGE_ONLINE_CONNECTIONS: Final = ConnectionPreset(
    "exchange_online",
    provider_limit=20,
    max_per_account=15,
    source=(
        "https://blogs.msdn.microsoft.com/exchangedev/2011/06/23/"
        "exchange-online-throttling-and-limits-faq/"
    ),
)
#: Exchange Online SMTP AUTH: concurrent submission connections per mailbox (above).
EXCHANGE_ONLINE_SMTP_CONNECTIONS: Final = 3

#: The connection preset of each IMAP/POP host of Gmail and Exchange Online (the
#: national clouds' hosts from :data:`MS_CLOUDS` included), by lower-case host name.
CONNECTION_PRESETS: Final[Mapping[str, ConnectionPreset]] = {
    "imap.gmail.com": GMAIL_CONNECTIONS,
    "pop.gmail.com": GMAIL_CONNECTIONS,
    **{
        host: EXCHANGE_ONLINE_CONNECTIONS
        for cloud in MS_CLOUDS.values()
        for host in (cloud.imap_host, cloud.pop3_host)
        if host is not None
    },
}


def connection_preset(host: str) -> ConnectionPreset | None:
    """The preset for ``host`` (case-insensitive, a trailing dot ignored), or None."""
    return CONNECTION_PRESETS.get(host.lower().rstrip("."))


#: What Gmail says when an account has too many connections open (at login, as
#: ``NO [ALERT] Too many simultaneous connections. (Failure)``; see GMAIL_CONNECTIONS):
#: a server reply containing it is throttling, not a rejected token.
THROTTLING_REPLIES: Final = ("too many simultaneous connections",)

# -- the table of known failures ------------------------------------------------------

_MS_OAUTH_MAIL = (
    "https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/"
    "how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth"
)
_MS_AADSTS = "https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes"
_MS_REFRESH = "https://learn.microsoft.com/en-us/entra/identity-platform/refresh-tokens"
_MS_SMTP_AUTH = (
    "https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/"
    "authenticated-client-smtp-submission"
)
_MS_CASMAILBOX = "https://learn.microsoft.com/en-us/powershell/module/exchange/set-casmailbox"
_MS_SEND_AS = "https://learn.microsoft.com/en-us/powershell/module/exchange/add-recipientpermission"
_MS_CERT = "https://learn.microsoft.com/en-us/entra/identity-platform/certificate-credentials"
_GOOGLE_OAUTH = "https://developers.google.com/identity/protocols/oauth2"
_GOOGLE_DWD = "https://support.google.com/a/answer/162106"


@dataclass(frozen=True)
class Diagnosis:
    """One known failure: how to recognise it, what it means, and the exact fix.

    ``markers`` are texts that identify it in a server reply or an OAuth
    ``error_description`` (an AADSTS code, an enhanced status code); an entry without
    markers is named by the command only as a candidate (Exchange answers many causes
    with the same ``AUTHENTICATE failed``), or found by ``oauth_error`` from ``vendor``'s
    token endpoint. ``source`` is the vendor page the facts come from.
    """

    key: str
    vendor: Vendor
    meaning: str
    fix: str
    source: str
    markers: tuple[str, ...] = ()
    oauth_error: str | None = None
    generic: bool = False
    """Matched only when no other entry is (a bare code that a more precise text refines)."""

    def text(self) -> str:
        """The meaning, the fix and the source as one paragraph."""
        return f"{self.meaning}. Fix: {self.fix} (see {self.source})"


DIAGNOSES: Final[tuple[Diagnosis, ...]] = (
    # Entra ID token endpoint: the AADSTS code in error_description (_MS_AADSTS).
    Diagnosis(
        "aadsts_secret_expired",
        "microsoft",
        "the app registration's client secret has expired (AADSTS7000222); client "
        "secrets live at most 24 months",
        "in the Microsoft Entra admin center open App registrations > the app > "
        "Certificates & secrets, add a new client secret and use its Value; better, "
        "upload a certificate and authenticate with a client assertion, which does not "
        "need rotating every few months (docs/guides/app-only.md)",
        _MS_CERT,
        markers=("AADSTS7000222",),
    ),
    Diagnosis(
        "aadsts_secret_invalid",
        "microsoft",
        "the client secret is wrong (AADSTS7000215): often the secret's ID was used "
        "instead of its Value",
        "copy the secret's Value (shown once, when it is created) from App registrations "
        "> the app > Certificates & secrets, or create a new one",
        _MS_AADSTS,
        markers=("AADSTS7000215",),
    ),
    Diagnosis(
        "aadsts_consent_missing",
        "microsoft",
        "nobody has consented to the app's permissions in this tenant (AADSTS65001)",
        "an administrator opens App registrations > the app > API permissions and "
        "clicks 'Grant admin consent for <tenant>' (or visits "
        f"{MS_AUTHORITY}/<tenant>/adminconsent?client_id=<client id>); for delegated "
        "access the user can also sign in once interactively (mailoauth login microsoft)",
        _MS_OAUTH_MAIL,
        markers=("AADSTS65001",),
    ),
    Diagnosis(
        "aadsts_tenant_not_found",
        "microsoft",
        "the tenant in the token URL does not exist (AADSTS90002): a typo in the tenant "
        "ID or domain, or the wrong cloud",
        "use the Directory (tenant) ID from the app registration's Overview page, or the "
        "tenant's verified domain (e.g. contoso.onmicrosoft.com), in "
        f"{MS_AUTHORITY}/<tenant>/oauth2/v2.0/token",
        _MS_AADSTS,
        markers=("AADSTS90002",),
    ),
    Diagnosis(
        "aadsts_refresh_idle",
        "microsoft",
        "the refresh token expired after 90 days without use (AADSTS700082)",
        "sign in again (mailoauth login microsoft, or a re-consent hook) and refresh at "
        "least once every 90 days; a service that must not depend on a person should "
        "use app-only access (client credentials)",
        _MS_REFRESH,
        markers=("AADSTS700082",),
    ),
    Diagnosis(
        "aadsts_sign_in_frequency",
        "microsoft",
        "a Conditional Access sign-in frequency policy requires the user to sign in "
        "again (AADSTS70043): refresh tokens issued before that time no longer work",
        "sign in again interactively; to run unattended, exclude this app from the "
        "sign-in frequency policy (Entra admin center > Protection > Conditional Access) "
        "or use app-only access",
        _MS_REFRESH,
        markers=("AADSTS70043",),
    ),
    Diagnosis(
        "aadsts_grant_revoked",
        "microsoft",
        "the grant was revoked, usually by a password change or an administrator "
        "revoking sessions (AADSTS50173), or the refresh token expired (AADSTS700084)",
        "sign in again (mailoauth login microsoft); Microsoft rotates refresh tokens, "
        "so always keep the newest one",
        _MS_REFRESH,
        markers=("AADSTS50173", "AADSTS700084"),
    ),
    # Exchange Online's replies.
    Diagnosis(
        "exchange_security_defaults",
        "microsoft",
        "Security Defaults are on in this tenant, and they turn SMTP AUTH off (5.7.139)",
        "turn Security Defaults off (Entra admin center > Identity > Overview > "
        "Properties > Manage security defaults) and protect sign-ins with Conditional "
        "Access instead, or send through Microsoft Graph",
        _MS_SMTP_AUTH,
        markers=("security defaults",),
    ),
    Diagnosis(
        "exchange_smtp_auth_disabled",
        "microsoft",
        "SMTP AUTH is disabled for the mailbox or the whole tenant (5.7.139)",
        "in Exchange Online PowerShell run Set-CASMailbox -Identity <mailbox> "
        "-SmtpClientAuthenticationDisabled $false (or Microsoft 365 admin center > the "
        "user > Mail > Manage email apps > Authenticated SMTP), and for the tenant "
        "Set-TransportConfig -SmtpClientAuthenticationDisabled $false",
        _MS_SMTP_AUTH,
        markers=("SmtpClientAuthentication is disabled", "5.7.139"),
        generic=True,
    ),
    Diagnosis(
        "exchange_send_as_denied",
        "microsoft",
        "the account may not send as the From/MAIL FROM address (554 5.2.252 "
        "SendAsDenied): a shared or other mailbox needs the SendAs right",
        "authenticate as the delegate and, in Exchange Online PowerShell, run "
        "Add-RecipientPermission -Identity <shared mailbox> -AccessRights SendAs -Trustee "
        "<delegate> (it can take up to an hour to apply), or send from the authenticated "
        "user's own address",
        _MS_SEND_AS,
        markers=("SendAsDenied", "5.2.252"),
    ),
    Diagnosis(
        "exchange_logon_denied",
        "microsoft",
        "Exchange denied the logon to the mailbox (LogonDenied): sign-in is blocked for "
        "the account, or the account may not open this mailbox",
        "in the Microsoft 365 admin center check that sign-in is allowed for the user "
        "(Users > Active users > the user > Block sign-in), and for another mailbox run "
        "Add-MailboxPermission -Identity <mailbox> -User <user> -AccessRights FullAccess",
        _MS_OAUTH_MAIL,
        markers=("LogonDenied",),
    ),
    # Exchange answers these with the same 'AUTHENTICATE failed': candidates only.
    Diagnosis(
        "exchange_wrong_service_principal",
        "microsoft",
        "the service principal was registered in Exchange with the app registration's "
        "Object ID instead of the enterprise application's, so Entra issues the token "
        "but Exchange knows no such principal",
        "read the right Object ID in the Entra admin center > Enterprise applications > "
        "the app > Overview (not App registrations), or with Get-MgServicePrincipal "
        "-Filter \"appId eq '<client id>'\" | Select-Object Id; then Remove-ServicePrincipal "
        "the wrong one and run New-ServicePrincipal -AppId <client id> -ObjectId <that Id>",
        _MS_OAUTH_MAIL,
    ),
    Diagnosis(
        "exchange_no_mailbox_permission",
        "microsoft",
        "the app's service principal has no permission on this mailbox",
        "Add-MailboxPermission -Identity <mailbox> -User <service principal Object ID> "
        "-AccessRights FullAccess (check with Get-MailboxPermission -Identity <mailbox>)",
        _MS_OAUTH_MAIL,
    ),
    Diagnosis(
        "exchange_imap_disabled",
        "microsoft",
        "IMAP is disabled for the mailbox",
        "Set-CASMailbox -Identity <mailbox> -ImapEnabled $true (check with "
        "Get-CASMailbox -Identity <mailbox> | Format-List ImapEnabled)",
        _MS_CASMAILBOX,
    ),
    Diagnosis(
        "exchange_pop_disabled",
        "microsoft",
        "POP is disabled for the mailbox",
        "Set-CASMailbox -Identity <mailbox> -PopEnabled $true (check with "
        "Get-CASMailbox -Identity <mailbox> | Format-List PopEnabled)",
        _MS_CASMAILBOX,
    ),
    Diagnosis(
        "exchange_mailbox_unavailable",
        "microsoft",
        "the mailbox is disabled, unlicensed (no Exchange Online plan) or does not exist",
        "in the Microsoft 365 admin center > Users > Active users > the user > Licenses "
        "and apps, assign a license that includes Exchange Online and allow sign-in; "
        "check the address with Get-Mailbox -Identity <mailbox>",
        _MS_OAUTH_MAIL,
    ),
    # Google's token endpoint: the OAuth error code (Google sends no numbered codes).
    Diagnosis(
        "google_testing_app",
        "google",
        "if the app's OAuth consent screen is External with the publishing status "
        "'Testing', Google expires its refresh tokens after 7 days",
        "set the publishing status to 'In production' (Google Cloud console > APIs & "
        "Services > OAuth consent screen) and sign in again (mailoauth login google)",
        _GOOGLE_OAUTH,
        oauth_error="invalid_grant",
    ),
    Diagnosis(
        "google_token_limit",
        "google",
        # Google's page gave 50 for years and gives 100 now; the behaviour is the same.
        "Google keeps a limited number of live refresh tokens per account and OAuth "
        "client (100 in its current documentation, 50 in older versions): one sign-in "
        "too many silently invalidates the oldest",
        "sign in once per account and share that refresh token (a token store) instead "
        "of signing in again on each machine or run",
        _GOOGLE_OAUTH,
        oauth_error="invalid_grant",
    ),
    Diagnosis(
        "google_delegation_scope",
        "google",
        "the service account's domain-wide delegation does not include the scope "
        f"{GOOGLE_MAIL_SCOPE} (or the subject is outside the Workspace domain)",
        "a super administrator opens the Google Admin console > Security > Access and "
        "data control > API controls > Manage Domain Wide Delegation, adds the service "
        "account's Client ID (IAM & Admin > Service accounts > the account > Advanced "
        f"settings; not its email) with the scope {GOOGLE_MAIL_SCOPE}",
        _GOOGLE_DWD,
        oauth_error="unauthorized_client",
    ),
)
"""Every known failure with its meaning and fix, read by the library's hints and by
``mailoauth check``."""

_BY_KEY: Final[Mapping[str, Diagnosis]] = {d.key: d for d in DIAGNOSES}

SEND_AS_DENIED_HINT: Final = _BY_KEY["exchange_send_as_denied"].text()
"""What an SMTP error for ``554 5.2.252 SendAsDenied`` adds (the table's entry)."""


def diagnosis(key: str) -> Diagnosis:
    """The entry of :data:`DIAGNOSES` named ``key``; raises KeyError for an unknown one."""
    return _BY_KEY[key]


def diagnoses_in(
    text: str, *, vendor: Vendor | None = None, oauth_error: str | None = None
) -> tuple[Diagnosis, ...]:
    """The entries whose markers occur in ``text`` (case-insensitive), plus, when
    ``vendor`` and ``oauth_error`` are given, that vendor's entries for the error code;
    a ``generic`` entry only when no precise one matched."""
    lowered = text.lower()
    found = [d for d in DIAGNOSES if any(m.lower() in lowered for m in d.markers)]
    precise = [d for d in found if not d.generic]
    found = precise or found
    if vendor is not None and oauth_error is not None:
        found += [
            d
            for d in DIAGNOSES
            if d.vendor == vendor and d.oauth_error == oauth_error and d not in found
        ]
    return tuple(found)


def token_error_hint(description: str | None) -> str | None:
    """What the table says about a token endpoint's ``error_description`` (by its
    AADSTS code), or None when it names no known failure."""
    found = diagnoses_in(description or "")
    return "; ".join(d.text() for d in found) or None


VENDOR_HINTS: Mapping[Vendor, Mapping[str, str]] = {
    "google": {
        "invalid_grant": (
            "the refresh token (or assertion) was refused: it was revoked or has expired. "
            "Usual causes: the user revoked access or changed their password; "
            + "; ".join(
                d.text()
                for d in DIAGNOSES
                if d.vendor == "google" and d.oauth_error == "invalid_grant"
            )
            + ". Sign in again to get a new refresh token"
        ),
        "unauthorized_client": (
            "this client may not use this grant: use an OAuth client of the right type "
            "(Desktop app for the installed-app flow); for a service account, "
            + _BY_KEY["google_delegation_scope"].text()
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


#: The entries Exchange Online answers with its bare refusal (``NO AUTHENTICATE
#: failed.``, ``535 5.7.3``, ``-ERR Authentication failure``), by protocol.
EXCHANGE_BARE_REFUSAL: Final[Mapping[str, tuple[str, ...]]] = {
    "imap": (
        "exchange_wrong_service_principal",
        "exchange_no_mailbox_permission",
        "exchange_imap_disabled",
        "exchange_mailbox_unavailable",
    ),
    "pop3": (
        "exchange_wrong_service_principal",
        "exchange_no_mailbox_permission",
        "exchange_pop_disabled",
        "exchange_mailbox_unavailable",
    ),
    "smtp": (
        "exchange_wrong_service_principal",
        "exchange_no_mailbox_permission",
        "exchange_mailbox_unavailable",
    ),
}


#: Where a library hint sends its reader for the fixes (the command shows them below).
HINT_FIXES_IN_CHECK: Final = " (mailoauth check names the fix for each)"


def auth_failure_hint(protocol: str, reply: str, host: str = "") -> str:
    """What to check when a mail server rejected a token with ``reply``: the table's
    entries named by the reply (5.7.139, LogonDenied, ...), else the general hint for
    ``protocol``, followed for an Exchange Online ``host`` by the causes Exchange
    answers with the same bare refusal."""
    found = diagnoses_in(reply)
    if found:
        return "; ".join(d.text() for d in found)
    hint = AUTH_FAILURE_HINTS.get(protocol, "check the token scope and audience")
    if host and host_in(host, MICROSOFT_DOMAINS):
        causes = [_BY_KEY[k].meaning for k in EXCHANGE_BARE_REFUSAL.get(protocol, ())]
        if causes:
            hint += (
                ". Exchange Online gives the same answer when "
                + "; or when ".join(causes)
                + HINT_FIXES_IN_CHECK
            )
    return hint
