"""Why a check failed: pure rules from (protocol, host, error, token claims, reply).

The known failures with their fixes come from one table,
:data:`mailoauth._providers.DIAGNOSES`, which the library's error hints read too: a
code in the reply or the token endpoint's answer (5.7.139, SendAsDenied, AADSTS...)
names its entry; Exchange's bare ``AUTHENTICATE failed`` names the entries that Exchange
answers so (a wrong service principal, no mailbox permission, the protocol disabled, an
unlicensed mailbox), most likely first for the kind of token.

:func:`situation_from_error` turns an exception into a :class:`Situation`;
:func:`diagnose` returns the paragraphs that apply, most specific first;
:func:`preflight` warns about a token before it is used. No I/O anywhere here, so that
every rule has a unit test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from mailoauth._core.auth import BARE_TOKEN_FIX
from mailoauth._core.connection import PRIVATE_CA_FIX
from mailoauth._providers import (
    AADSTS_NO_OFFLINE_ACCESS,
    APP_ONLY_ROLES,
    DELEGATED_PERMISSIONS,
    EXCHANGE_BARE_REFUSAL,
    GOOGLE_DOMAINS,
    GOOGLE_MAIL_SCOPE,
    GRAPH_AUDIENCES,
    HINT_FIXES_IN_CHECK,
    MICROSOFT_DOMAINS,
    MICROSOFT_ISSUERS,
    MS_APP_ONLY_SCOPE,
    OUTLOOK_AUDIENCES,
    OUTLOOK_RESOURCE,
    Diagnosis,
    Vendor,
    diagnoses_in,
    diagnosis,
    host_in,
)
from mailoauth.cli.claims import claim_list
from mailoauth.errors import (
    AuthenticationError,
    CommandError,
    MailConnectionError,
    MailTimeoutError,
    PermanentTokenError,
    TLSError,
    TokenError,
    TokenExpiredError,
)
from mailoauth.tokens.static import PASS_A_PROVIDER

__all__ = [
    "APP_ONLY_ROLES",
    "DELEGATED_SCOPES",
    "GRAPH_AUDIENCES",
    "OUTLOOK_AUDIENCES",
    "Situation",
    "diagnose",
    "for_the_command",
    "is_google",
    "is_microsoft",
    "preflight",
    "situation_from_error",
]

# Re-exported from mailoauth._providers, where what mailoauth knows about Google and
# Microsoft lives: DELEGATED_SCOPES is its DELEGATED_PERMISSIONS.
DELEGATED_SCOPES: Final = DELEGATED_PERMISSIONS


@dataclass(frozen=True)
class Situation:
    """Everything the rules look at. ``kind`` is ``auth``, ``token``, ``tls``,
    ``timeout``, ``connection``, ``command`` or ``other``; ``protocol`` is ``smtp``,
    ``imap``, ``pop3`` or ``token`` (no mail server involved)."""

    protocol: str
    host: str = ""
    username: str = ""
    claims: Mapping[str, Any] | None = None
    token_url: str = ""
    has_refresh_token: bool | None = None
    security: str = "auto"
    kind: str = "other"
    message: str = ""
    reply: str = ""
    challenge_status: str | None = None
    challenge_scope: str | None = None
    oauth_error: str | None = None
    oauth_description: str | None = None
    greeting: str = ""
    """The server's greeting: names Exchange or Gmail when the host name does not."""
    certificate_names: tuple[str, ...] = ()
    """The names the server's certificate holds, when its name did not match."""


def situation_from_error(exc: BaseException, base: Situation) -> Situation:
    """``base`` completed with what ``exc`` tells: its kind, message and replies."""
    kind = "other"
    fields: dict[str, Any] = {"message": str(exc)}
    if isinstance(exc, AuthenticationError):
        kind = "auth"
        fields["reply"] = exc.server_reply
        if exc.challenge is not None:
            fields["challenge_status"] = exc.challenge.status
            fields["challenge_scope"] = exc.challenge.scope
    elif isinstance(exc, TokenError):
        kind = "token"
        if isinstance(exc, PermanentTokenError):
            fields["oauth_error"] = exc.error
            fields["oauth_description"] = exc.error_description
        elif isinstance(exc, TokenExpiredError):
            fields["oauth_error"] = "expired"
    elif isinstance(exc, TLSError):
        kind = "tls"
    elif isinstance(exc, MailTimeoutError):
        kind = "timeout"
    elif isinstance(exc, CommandError):
        kind = "command"
        fields["reply"] = exc.reply
    elif isinstance(exc, (MailConnectionError, OSError)):
        kind = "connection"
    return replace(base, kind=kind, **fields)


def _url_host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].split(":", 1)[0]


def is_microsoft(s: Situation) -> bool:
    """A Microsoft mail host, Microsoft token endpoint, or a Microsoft-issued token."""
    issuer = str((s.claims or {}).get("iss", ""))
    return (
        host_in(s.host, MICROSOFT_DOMAINS)
        or host_in(_url_host(s.token_url), MICROSOFT_DOMAINS)
        or any(name in issuer for name in MICROSOFT_ISSUERS)
        or "Microsoft" in s.greeting
    )


def is_google(s: Situation) -> bool:
    """A Gmail host, a Google token endpoint, or a Gmail greeting."""
    return (
        host_in(s.host, GOOGLE_DOMAINS)
        or host_in(_url_host(s.token_url), GOOGLE_DOMAINS)
        or any(name in s.greeting for name in ("Gimap", "Gpop", "gsmtp"))
    )


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    return [a.rstrip("/") for a in claim_list(claims, "aud")]


def _is_app_only(claims: Mapping[str, Any]) -> bool:
    return bool(claim_list(claims, "roles")) and not claim_list(claims, "scp")


def _token_user(claims: Mapping[str, Any]) -> str | None:
    for name in ("upn", "preferred_username", "unique_name", "email"):
        value = claims.get(name)
        if isinstance(value, str) and "@" in value:
            return value
    return None


def _outlook_scope(protocol: str) -> str:
    return f"{OUTLOOK_RESOURCE}/{DELEGATED_SCOPES.get(protocol, 'IMAP.AccessAsUser.All')}"


# -- token warnings, before anything is sent ----------------------------------------


def preflight(protocol: str, username: str, claims: Mapping[str, Any] | None) -> list[str]:
    """Warnings about a token's claims for ``protocol``: audience, scope or role,
    and whose token it is. Empty for an opaque token (no claims)."""
    if not claims:
        return []
    warnings = []
    auds = _audiences(claims)
    if any(a in GRAPH_AUDIENCES for a in auds):
        warnings.append(
            f"the token's audience is Microsoft Graph ({', '.join(auds)}), not Exchange "
            f"Online: mail servers refuse it. Request {_outlook_scope(protocol)} "
            f"(delegated) or {MS_APP_ONLY_SCOPE} (app-only) instead of "
            f"a Graph scope such as Mail.Send"
        )
    elif (
        auds
        and not any(a in OUTLOOK_AUDIENCES for a in auds)
        and "sts.windows.net" in str(claims.get("iss", ""))
    ):
        warnings.append(
            f"the token's audience ({', '.join(auds)}) is not Exchange Online "
            f"({OUTLOOK_RESOURCE}); request {_outlook_scope(protocol)}"
        )
    if protocol in DELEGATED_SCOPES:
        if _is_app_only(claims):
            role = APP_ONLY_ROLES[protocol]
            if role not in claim_list(claims, "roles"):
                warnings.append(
                    f"this app-only token (roles: {', '.join(claim_list(claims, 'roles'))}) "
                    f"lacks the {role} application permission that {protocol.upper()} needs: "
                    f"add it under Office 365 Exchange Online in the app registration and "
                    f"grant admin consent"
                )
        elif "scp" in claims:
            needed = DELEGATED_SCOPES[protocol]
            if needed not in claim_list(claims, "scp"):
                warnings.append(
                    f"this delegated token (scp: {' '.join(claim_list(claims, 'scp'))}) "
                    f"lacks {needed}, which {protocol.upper()} needs: request the scope "
                    f"{_outlook_scope(protocol)} (plus offline_access)"
                )
    owner = _token_user(claims)
    if owner and username and owner.lower() != username.lower():
        warnings.append(
            f"the token belongs to {owner}, not {username}: sign in as {username} or "
            f"use --user {owner}"
        )
    return warnings


# -- diagnosis after a failure ------------------------------------------------------

Rule = Callable[[Situation], str | None]


def _graph_audience(s: Situation) -> str | None:
    if s.kind != "auth" or not s.claims:
        return None
    auds = _audiences(s.claims)
    if not any(a in GRAPH_AUDIENCES for a in auds):
        return None
    return (
        f"the token was issued for Microsoft Graph (aud={', '.join(auds)}), and "
        f"Exchange Online's {s.protocol.upper()} accepts only Outlook tokens. Request "
        f"the scope {_outlook_scope(s.protocol)} (delegated, with offline_access) or "
        f"{MS_APP_ONLY_SCOPE} (app-only), not Graph's Mail.* scopes"
    )


def _missing_permission(s: Situation) -> str | None:
    if s.kind != "auth" or not s.claims or s.protocol not in DELEGATED_SCOPES:
        return None
    if _is_app_only(s.claims):
        role = APP_ONLY_ROLES[s.protocol]
        if role in claim_list(s.claims, "roles"):
            return None
        return (
            f"the app-only token has no {role} role. In the app registration add the "
            f"application permission {role} (APIs my organization uses > Office 365 "
            f"Exchange Online), grant admin consent, and get a new token"
        )
    if "scp" not in s.claims:
        return None
    needed = DELEGATED_SCOPES[s.protocol]
    if needed in claim_list(s.claims, "scp"):
        return None
    return (
        f"the delegated token lacks {needed} (scp: {' '.join(claim_list(s.claims, 'scp'))}). "
        f"Sign in again requesting {_outlook_scope(s.protocol)} offline_access (and add "
        f"the delegated permission {needed} to the app registration)"
    )


def _known(s: Situation) -> list[Diagnosis]:
    """The table's entries named by a code in the reply, the message or the token
    endpoint's description, and the vendor's entries for the OAuth error code."""
    # The message quotes the reply and, for a library error, the table's own hint:
    # read it only when there is neither a reply nor a description.
    text = " ".join(x for x in (s.reply, s.oauth_description or "") if x) or s.message
    vendor: Vendor | None = "google" if is_google(s) else "microsoft" if is_microsoft(s) else None
    oauth_error = s.oauth_error if s.kind == "token" else None
    return list(diagnoses_in(text, vendor=vendor, oauth_error=oauth_error))


#: The causes that need an app-only token (its service principal).
_APP_ONLY_CAUSES: Final = ("exchange_wrong_service_principal", "exchange_no_mailbox_permission")


def exchange_candidates(s: Situation) -> list[Diagnosis]:
    """The table's entries that Exchange Online answers with its bare refusal
    (:data:`~mailoauth._providers.EXCHANGE_BARE_REFUSAL`), for this protocol and kind of
    token: a delegated token has no service principal, and only a user's sign-in can be
    denied (LogonDenied); an opaque token may be either."""
    if s.kind != "auth" or not is_microsoft(s):
        return []
    claims = s.claims or {}
    app_only = _is_app_only(claims) if claims else None
    keys = list(EXCHANGE_BARE_REFUSAL.get(s.protocol, ()))
    if app_only is False:
        keys = [k for k in keys if k not in _APP_ONLY_CAUSES]
    if app_only is not True:
        keys.append("exchange_logon_denied")
    return [diagnosis(k) for k in keys]


def _exchange_service_principal(s: Situation) -> str | None:
    if s.kind != "auth" or not s.claims or not _is_app_only(s.claims) or not is_microsoft(s):
        return None
    app_id = str(s.claims.get("appid") or s.claims.get("azp") or "<application id>")
    mailbox = s.username or "<mailbox>"
    return (
        f"Exchange Online refused an app-only token with the right role. For this app: "
        f"New-ServicePrincipal -AppId {app_id} -ObjectId <Enterprise application object "
        f"id>, then Add-MailboxPermission -Identity {mailbox} -User <service principal "
        f"id> -AccessRights FullAccess (wait a few minutes for it to apply). The causes "
        f"Exchange answers so, most likely first, follow"
    )


def _microsoft_offline_access(s: Situation) -> str | None:
    if s.kind != "token" or not is_microsoft(s):
        return None
    description = s.oauth_description or ""
    if s.has_refresh_token is False or AADSTS_NO_OFFLINE_ACCESS in description:
        return (
            "there is no refresh token for this Microsoft credential, so nothing can "
            "renew the access token: request the offline_access scope at sign-in "
            "(mailoauth login microsoft does) and store the refresh token it returns"
        )
    return None


def _invalid_client(s: Situation) -> str | None:
    if s.kind != "token" or s.oauth_error != "invalid_client":
        return None
    microsoft = (
        "; for Microsoft, the client secret must be the secret's Value (not its ID) and not expired"
        if is_microsoft(s)
        else ""
    )
    return (
        "the token endpoint refused the client (invalid_client): check --client-id and "
        f"--client-secret against the app registration{microsoft}"
    )


def _certificate(s: Situation) -> str | None:
    if s.kind != "tls" or "certificate" not in s.message.lower():
        return None
    if s.certificate_names or "not issued for the host name" in s.message:
        held = ", ".join(s.certificate_names) or "other names"
        return (
            f"the certificate is trusted, but it is issued for {held}, not for "
            f"{s.host or 'the host name given'}: connect with one of the names it holds "
            f"(--cafile does not fix a name mismatch)"
        )
    return (
        f"the certificate of {s.host or 'the server'} could not be verified against the "
        f"system's trusted CAs. If the server uses a private or test CA, pass its "
        f"certificate with --cafile PATH; check also that the host name matches the "
        f"certificate"
    )


def _tls_mode(s: Situation) -> str | None:
    if s.kind == "timeout" and "greeting" in s.message and s.security != "ssl":
        return (
            "the server sent no greeting: the port probably expects TLS from the first "
            "byte (implicit TLS, e.g. 465/993/995). Try --security ssl"
        )
    lowered = s.message.lower()
    if s.kind == "tls" and any(
        hint in lowered for hint in ("wrong version number", "record layer", "unexpected eof")
    ):
        return (
            "the TLS handshake failed in a way typical of a plain-text port: the port "
            "probably expects STARTTLS (e.g. 587/143/110). Try --security starttls"
        )
    if s.kind == "tls" and "does not offer starttls" in lowered:
        return (
            "the server does not offer STARTTLS on this port: use its implicit-TLS port "
            "(465/993/995) with --security ssl"
        )
    return None


def _unreachable(s: Situation) -> str | None:
    if s.kind not in ("connection", "timeout"):
        return None
    return (
        f"could not talk to {s.host or 'the server'}: check the host name and --port, "
        f"and that no firewall blocks outgoing connections to it (many networks block "
        f"port 25 and some block 465/587)"
    )


def _wrong_user(s: Situation) -> str | None:
    if s.kind != "auth" or not s.claims:
        return None
    owner = _token_user(s.claims)
    if owner and s.username and owner.lower() != s.username.lower():
        return f"the token belongs to {owner}, but the check logged in as {s.username}"
    return None


def _challenge_scope(s: Situation) -> str | None:
    if s.kind != "auth" or not s.challenge_scope:
        return None
    return (
        f"the server's error challenge asks for the scope {s.challenge_scope} "
        f"(status {s.challenge_status or '?'}): make sure the token was requested with "
        f"it, for {s.username or 'this user'}, and has not been revoked"
    )


def _generic_auth(s: Situation) -> str | None:
    if s.kind != "auth":
        return None
    if is_google(s):
        return (
            f"Gmail rejected the token: it must carry the scope {GOOGLE_MAIL_SCOPE} "
            "and belong to this address; for a Workspace account check that the admin "
            "allows IMAP/POP and third-party apps"
        )
    if is_microsoft(s):
        return (
            f"Exchange Online rejected the token: check that it is an Outlook token "
            f"({_outlook_scope(s.protocol)}), that it belongs to this mailbox, and that "
            f"{s.protocol.upper()} is enabled for the mailbox (Set-CASMailbox)"
        )
    # Only a stored credential was refreshed and retried; a bare --token never is.
    refreshed = " even after a refresh" if s.has_refresh_token else ""
    return (
        f"the server rejected the token{refreshed}: check that it belongs to "
        "this user, that its scope is one the server accepts, and that the grant has "
        "not been revoked"
    )


def _generic_token(s: Situation) -> str | None:
    if s.kind != "token":
        return None
    if s.oauth_error == "expired":
        return (
            "the access token has expired and there is nothing to refresh it with: use "
            "--store-key with a stored credential (mailoauth login) instead of --token"
        )
    if s.oauth_error == "invalid_grant":
        return (
            "the token endpoint refused the grant (invalid_grant): the refresh token "
            "was revoked or has expired. Sign in again with mailoauth login"
        )
    return None


#: In order: the first rules are the most specific. :func:`diagnose` returns all hits.
RULES: Final[tuple[Rule, ...]] = (
    _graph_audience,
    _missing_permission,
    _microsoft_offline_access,
    _invalid_client,
    _certificate,
    _tls_mode,
    _wrong_user,
)
#: Used only when no rule of :data:`RULES` matched.
FALLBACKS: Final[tuple[Rule, ...]] = (
    _challenge_scope,
    _generic_auth,
    _generic_token,
    _unreachable,
)


#: The library's words for a fix (its callers pass arguments) and the command's for the
#: same fix (its users pass options): errors shown by the command are reworded.
FOR_THE_COMMAND: Final[tuple[tuple[str, str], ...]] = (
    (
        BARE_TOKEN_FIX,
        "use --store-key with a credential saved by mailoauth login (it refreshes) "
        "instead of --token",
    ),
    (
        PASS_A_PROVIDER,
        "use --store-key with a credential saved by mailoauth login, which refreshes, "
        "instead of --token",
    ),
    (PRIVATE_CA_FIX, "if the server uses a private CA, pass --cafile with its certificate"),
    (HINT_FIXES_IN_CHECK, " (the diagnosis below names the fix for each)"),
)


def for_the_command(message: str) -> str:
    """``message`` (a library error's) with each fix in the command's words."""
    for library, command in FOR_THE_COMMAND:
        message = message.replace(library, command)
    return message


def _filled(d: Diagnosis, s: Situation) -> str:
    """``d``'s text with the mailbox and the app's client id of this check filled in."""
    text = d.text()
    if s.username:
        text = text.replace("<mailbox>", s.username)
    app_id = (s.claims or {}).get("appid") or (s.claims or {}).get("azp")
    if isinstance(app_id, str) and app_id:
        text = text.replace("<client id>", app_id)
    return text


def diagnose(s: Situation) -> list[str]:
    """The diagnoses that apply to ``s``, most specific first; empty when none does.

    First the table's entries named by a code, then the other rules; when nothing
    matched, Exchange's candidates for its generic refusal or a fallback."""
    found = [_filled(d, s) for d in _known(s)]
    found += [text for rule in RULES if (text := rule(s)) is not None]
    if found:
        return found
    candidates = exchange_candidates(s)
    if candidates:
        intro = _exchange_service_principal(s) or (
            "Exchange Online answers each of the following with the same words; the likeliest first"
        )
        return [intro] + [_filled(d, s) for d in candidates]
    for rule in FALLBACKS:
        text = rule(s)
        if text is not None:
            return [text]
    return []
