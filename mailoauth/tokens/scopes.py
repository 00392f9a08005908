"""OAuth scopes and endpoints for Gmail and Microsoft 365 mail."""

from __future__ import annotations

__all__ = [
    "GOOGLE_MAIL_SCOPE",
    "GOOGLE_TOKEN_URL",
    "MS_APP_ONLY_SCOPE",
    "MS_AUTHORITY",
    "MS_DELEGATED_SCOPES",
    "MS_IMAP_SCOPE",
    "MS_OFFLINE_ACCESS",
    "MS_POP_SCOPE",
    "MS_SMTP_SCOPE",
]

GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
"""Full Gmail access: the one scope Gmail's IMAP, POP and SMTP accept."""
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"

MS_AUTHORITY = "https://login.microsoftonline.com"
MS_IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
MS_POP_SCOPE = "https://outlook.office.com/POP.AccessAsUser.All"
MS_SMTP_SCOPE = "https://outlook.office.com/SMTP.Send"
MS_OFFLINE_ACCESS = "offline_access"
"""Asks Microsoft for a refresh token along with the access token."""
MS_APP_ONLY_SCOPE = "https://outlook.office365.com/.default"
"""The scope of app-only (client credentials) tokens for IMAP and POP."""
MS_DELEGATED_SCOPES: tuple[str, ...] = (MS_IMAP_SCOPE, MS_POP_SCOPE, MS_SMTP_SCOPE)
"""IMAP, POP and SMTP on behalf of a user (one token serves all three)."""
