"""How a test mail server behaves like a real provider: its greetings and, above all,
what it answers to a rejected bearer token.

- :attr:`Personality.GMAIL`: an error challenge first (base64 JSON
  ``{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`` after
  ``+ `` / ``334 ``), then ``NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)``,
  ``535-5.7.8 Username and Password not accepted...`` or ``-ERR [AUTH] Invalid
  credentials.``
- :attr:`Personality.OFFICE365`: no challenge, an immediate ``NO AUTHENTICATE
  failed.``, ``535 5.7.3 Authentication unsuccessful`` or ``-ERR Authentication
  failure: unknown user name or bad password.``; an IMAP session whose token has
  expired ends at the next command with ``* BYE Session invalidated -
  AccessTokenExpired``; and only XOAUTH2 is offered, as Exchange Online does.
- :attr:`Personality.RFC`: what an RFC 7628 server such as Dovecot does: an error
  challenge (``{"status":"invalid_token",...}`` for OAUTHBEARER, ``{"status":"401",
  "schemes":"bearer","scope":"mail"}`` for XOAUTH2), then ``NO [AUTHENTICATIONFAILED]
  Authentication failed.``, ``535 5.7.8 Error: authentication failed: ...`` or
  ``-ERR [AUTH] Authentication failed.``

Shared and delegated mailboxes (:class:`Delegations`): as in Exchange Online, a
delegate's token opens another mailbox (SASL ``user=`` that mailbox) when the delegate
has FullAccess on it, and is refused as any bad token otherwise (``NO AUTHENTICATE
failed.``); under the Office 365 personality a message whose MAIL FROM is not the
authenticated user's own address is refused after DATA with ``554 5.2.252
SendAsDenied; ...`` unless the user has SendAs on that address.

Tenant states (:class:`TenantState`, set per mailbox in :class:`TenantStates`): the
misconfigurations of an Exchange Online tenant that make Exchange refuse a token Entra
issued, each answered as Exchange answers it: ``535 5.7.139 ...`` for SMTP AUTH
disabled or Security Defaults, and the same ``NO AUTHENTICATE failed.`` / ``535 5.7.3``
/ ``-ERR Authentication failure`` for the rest (a wrong service principal, no mailbox
permission, IMAP or POP disabled, an unlicensed mailbox), which is why ``mailoauth
check`` names those as candidates.
"""

from __future__ import annotations

import enum
import json
import threading
from dataclasses import dataclass

__all__ = ["Delegations", "Personality", "Replies", "TenantState", "TenantStates"]


def _challenge(status: str, schemes: str, scope: str) -> bytes:
    return json.dumps(
        {"status": status, "schemes": schemes, "scope": scope}, separators=(",", ":")
    ).encode()


@dataclass(frozen=True)
class Replies:
    """Every line that differs between personalities. Lines are without CRLF."""

    xoauth2_challenge: bytes | None
    """Raw (not base64) error challenge for XOAUTH2, or None for an immediate failure."""
    oauthbearer_challenge: bytes | None
    """Raw error challenge for OAUTHBEARER, or None for an immediate failure."""

    imap_greeting: str
    imap_auth_ok: str
    """Tagged OK text; ``{user}`` is replaced by the username."""
    imap_auth_failed: str
    """Tagged NO text (with the ``NO``)."""

    smtp_ident: str
    smtp_auth_ok: str
    smtp_auth_failed: tuple[str, ...]
    """One or more reply lines (a multi-line 535 for Gmail)."""

    pop3_greeting: str
    pop3_auth_ok: str
    pop3_auth_failed: str

    expires_sessions: bool = False
    """Whether an IMAP session ends when its token expires (Office 365)."""
    mechanisms: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER")
    """The bearer mechanisms offered and accepted (Office 365 has no OAUTHBEARER)."""
    imap_expired_bye: str = "* BYE Session invalidated - AccessTokenExpired"
    smtp_send_as_denied: str | None = None
    """The reply after DATA to a MAIL FROM the user may not send as (``{user}`` and
    ``{address}`` are filled in), or None when the server does not check the sender."""

    def error_challenge(self, mechanism: str) -> bytes | None:
        """The raw error challenge for ``mechanism``, or None for an immediate failure."""
        if mechanism.upper() == "OAUTHBEARER":
            return self.oauthbearer_challenge
        return self.xoauth2_challenge


_GMAIL_CHALLENGE = _challenge("400", "Bearer", "https://mail.google.com/")

_GMAIL = Replies(
    xoauth2_challenge=_GMAIL_CHALLENGE,
    oauthbearer_challenge=_GMAIL_CHALLENGE,
    imap_greeting="* OK Gimap ready for requests from 127.0.0.1 mailoauth-test",
    imap_auth_ok="OK {user} authenticated (Success)",
    imap_auth_failed="NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)",
    smtp_ident="ESMTP mailoauth-test - gsmtp",
    smtp_auth_ok="235 2.7.0 Accepted",
    smtp_auth_failed=(
        "535-5.7.8 Username and Password not accepted. For more information, go to",
        "535 5.7.8  https://support.google.com/mail/?p=BadCredentials mailoauth-test - gsmtp",
    ),
    pop3_greeting="+OK Gpop ready for requests from 127.0.0.1 mailoauth-test",
    pop3_auth_ok="+OK Welcome.",
    pop3_auth_failed="-ERR [AUTH] Invalid credentials.",
)

_OFFICE365 = Replies(
    xoauth2_challenge=None,
    oauthbearer_challenge=None,
    imap_greeting="* OK The Microsoft Exchange IMAP4 service is ready.",
    imap_auth_ok="OK AUTHENTICATE completed.",
    imap_auth_failed="NO AUTHENTICATE failed.",
    smtp_ident="Microsoft ESMTP MAIL Service ready",
    smtp_auth_ok="235 2.7.0 Authentication successful",
    smtp_auth_failed=("535 5.7.3 Authentication unsuccessful",),
    pop3_greeting="+OK The Microsoft Exchange POP3 service is ready.",
    pop3_auth_ok="+OK User successfully authenticated.",
    pop3_auth_failed="-ERR Authentication failure: unknown user name or bad password.",
    expires_sessions=True,
    mechanisms=("XOAUTH2",),
    # What Exchange Online answers at the end of DATA to a sender the user has no Send
    # As right on (see mailoauth._providers.SEND_AS_DENIED_HINT for the fix).
    smtp_send_as_denied=(
        "554 5.2.252 SendAsDenied; {user} not allowed to send as {address}; "
        "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
        "Failed to process message due to a permanent exception with message "
        "[BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]"
    ),
)

_RFC = Replies(
    xoauth2_challenge=_challenge("401", "bearer", "mail"),
    oauthbearer_challenge=_challenge("invalid_token", "bearer", "mail"),
    imap_greeting="* OK mailoauth test IMAP server ready.",
    imap_auth_ok="OK Logged in",
    imap_auth_failed="NO [AUTHENTICATIONFAILED] Authentication failed.",
    smtp_ident="ESMTP mailoauth test server",
    smtp_auth_ok="235 2.7.0 Authentication successful",
    smtp_auth_failed=("535 5.7.8 Error: authentication failed: (reason unavailable)",),
    pop3_greeting="+OK mailoauth test POP3 server ready.",
    pop3_auth_ok="+OK Logged in.",
    pop3_auth_failed="-ERR [AUTH] Authentication failed.",
)


class Personality(enum.Enum):
    """Which provider a test server imitates; see the module docstring."""

    GMAIL = "gmail"
    OFFICE365 = "office365"
    RFC = "rfc"

    @property
    def replies(self) -> Replies:
        return _REPLIES[self]


_REPLIES: dict[Personality, Replies] = {
    Personality.GMAIL: _GMAIL,
    Personality.OFFICE365: _OFFICE365,
    Personality.RFC: _RFC,
}


class Delegations:
    """Who may open whose mailbox (FullAccess) and send as whose address (SendAs), as
    an Exchange Online tenant grants them (``Add-MailboxPermission -AccessRights
    FullAccess``, ``Add-RecipientPermission -AccessRights SendAs``). Addresses compare
    case-insensitively. Thread-safe: grant and revoke while the servers run.

    A user always has both rights on their own address. The servers read it: a token
    issued to ``delegate`` opens ``mailbox`` when :meth:`may_open` says so, and the SMTP
    server of a personality that checks senders refuses a MAIL FROM for which
    :meth:`may_send_as` is false.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._full_access: set[tuple[str, str]] = set()
        self._send_as: set[tuple[str, str]] = set()

    @staticmethod
    def _pair(mailbox: str, delegate: str) -> tuple[str, str]:
        return mailbox.strip().lower(), delegate.strip().lower()

    def grant_full_access(self, mailbox: str, delegate: str) -> None:
        """Let ``delegate`` open ``mailbox`` with its own token."""
        with self._lock:
            self._full_access.add(self._pair(mailbox, delegate))

    def grant_send_as(self, address: str, delegate: str) -> None:
        """Let ``delegate`` send with ``address`` as MAIL FROM."""
        with self._lock:
            self._send_as.add(self._pair(address, delegate))

    def revoke(self, mailbox: str, delegate: str) -> None:
        """Take back both rights of ``delegate`` on ``mailbox``."""
        pair = self._pair(mailbox, delegate)
        with self._lock:
            self._full_access.discard(pair)
            self._send_as.discard(pair)

    def may_open(self, delegate: str, mailbox: str) -> bool:
        """Whether a token of ``delegate`` opens ``mailbox``."""
        pair = self._pair(mailbox, delegate)
        with self._lock:
            return pair[0] == pair[1] or pair in self._full_access

    def may_send_as(self, user: str, address: str) -> bool:
        """Whether ``user`` may send with MAIL FROM ``address`` (the null sender too)."""
        pair = self._pair(address, user)
        with self._lock:
            return not pair[0] or pair[0] == pair[1] or pair in self._send_as


class TenantState(enum.Enum):
    """A mailbox's state in an Exchange Online tenant that makes Exchange refuse a valid
    token (see the fix for each in :data:`mailoauth._providers.DIAGNOSES`, under the
    same key prefixed with ``exchange_``)."""

    WRONG_SERVICE_PRINCIPAL = "wrong_service_principal"
    """``New-ServicePrincipal`` was given the app registration's Object ID."""
    NO_MAILBOX_PERMISSION = "no_mailbox_permission"
    """The app's service principal has no FullAccess on the mailbox."""
    IMAP_DISABLED = "imap_disabled"
    """``Set-CASMailbox -ImapEnabled $false``: IMAP is refused, POP and SMTP work."""
    POP_DISABLED = "pop_disabled"
    """``Set-CASMailbox -PopEnabled $false``: POP is refused, IMAP and SMTP work."""
    SMTP_AUTH_DISABLED = "smtp_auth_disabled"
    """``-SmtpClientAuthenticationDisabled $true``: SMTP answers ``535 5.7.139``."""
    SECURITY_DEFAULTS = "security_defaults"
    """Security Defaults are on: SMTP AUTH is off (``535 5.7.139 ... security
    defaults policy``); IMAP and POP with OAuth work."""
    MAILBOX_UNAVAILABLE = "mailbox_unavailable"
    """The mailbox is disabled or has no Exchange Online license."""

    def refusal(self, protocol: str, replies: Replies) -> tuple[str, ...] | None:
        """The reply lines Exchange gives for ``protocol`` (``smtp``, ``imap``,
        ``pop3``) in this state, or None when this state does not affect it."""
        generic = {
            "smtp": replies.smtp_auth_failed,
            "imap": (replies.imap_auth_failed,),
            "pop3": (replies.pop3_auth_failed,),
        }[protocol]
        if self is TenantState.SMTP_AUTH_DISABLED:
            return _SMTP_AUTH_DISABLED if protocol == "smtp" else None
        if self is TenantState.SECURITY_DEFAULTS:
            return _SECURITY_DEFAULTS if protocol == "smtp" else None
        if self is TenantState.IMAP_DISABLED:
            return generic if protocol == "imap" else None
        if self is TenantState.POP_DISABLED:
            return generic if protocol == "pop3" else None
        return generic


# Exchange Online's 5.7.139 replies, as its users quote them; the causes are described
# on https://learn.microsoft.com/en-us/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission
_SMTP_AUTH_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for "
    "the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.",
)
_SECURITY_DEFAULTS = (
    "535 5.7.139 Authentication unsuccessful, user is locked by your organization's "
    "security defaults policy. Contact your administrator.",
)


class TenantStates:
    """The :class:`TenantState` of each mailbox (case-insensitive address); the
    servers of a :class:`~mailoauth.testing.sandbox.MailSandbox` share one and refuse
    a valid token for a mailbox in a state, as Exchange does. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, TenantState] = {}

    def set(self, mailbox: str, state: TenantState | str | None) -> None:
        """Put ``mailbox`` into ``state`` (a :class:`TenantState` or its value), or
        back to healthy with None."""
        key = mailbox.strip().lower()
        with self._lock:
            if state is None:
                self._states.pop(key, None)
            else:
                self._states[key] = TenantState(state)

    def get(self, mailbox: str) -> TenantState | None:
        """The state of ``mailbox``, None when it is healthy."""
        with self._lock:
            return self._states.get(mailbox.strip().lower())

    def refusal(self, mailbox: str, protocol: str, replies: Replies) -> tuple[str, ...] | None:
        """The reply lines refusing ``mailbox`` over ``protocol``, or None to let it in."""
        state = self.get(mailbox)
        return None if state is None else state.refusal(protocol, replies)
