"""OAuth scopes and endpoints for Gmail and Microsoft 365 mail.

Defined in :mod:`mailoauth._providers` (everything mailoauth knows about Google and
Microsoft, with the documentation it comes from); public here and in
:mod:`mailoauth.tokens`.
"""

from __future__ import annotations

from mailoauth._providers import (
    GOOGLE_MAIL_SCOPE,
    GOOGLE_TOKEN_URL,
    MS_APP_ONLY_SCOPE,
    MS_AUTHORITY,
    MS_DELEGATED_SCOPES,
    MS_IMAP_SCOPE,
    MS_OFFLINE_ACCESS,
    MS_POP_SCOPE,
    MS_SMTP_SCOPE,
)

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
