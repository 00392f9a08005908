"""SMTP submission with an OAuth 2.0 bearer token: :class:`SmtpClient` for one
connection, :class:`SmtpPool` for many messages over a few connections."""

from typing import TYPE_CHECKING

from mailoauth._util.lazy import lazy_exports

#: Where each public name is imported from, on first access (PEP 562): importing a
#: submodule does not import its siblings.
_LAZY = {
    "mailoauth.smtp.client": ["RecipientReply", "SendResult", "SmtpClient", "enhanced_status"],
    "mailoauth.smtp.pool": ["SmtpPool"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

if TYPE_CHECKING:
    from mailoauth.smtp.client import RecipientReply, SendResult, SmtpClient, enhanced_status
    from mailoauth.smtp.pool import SmtpPool

__all__ = ["RecipientReply", "SendResult", "SmtpClient", "SmtpPool", "enhanced_status"]
