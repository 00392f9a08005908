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
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

__all__ = ["Personality", "Replies"]


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
