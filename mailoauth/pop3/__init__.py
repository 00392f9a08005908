"""POP3: a sans-IO protocol (:mod:`mailoauth.pop3.protocol`) and its async driver."""

from typing import TYPE_CHECKING

from mailoauth._util.lazy import lazy_exports

#: Where each public name is imported from, on first access (PEP 562): importing a
#: submodule does not import its siblings.
_LAZY = {
    "mailoauth.pop3.client": ["MailboxStat", "Pop3Client"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

if TYPE_CHECKING:
    from mailoauth.pop3.client import MailboxStat, Pop3Client

__all__ = ["MailboxStat", "Pop3Client"]
