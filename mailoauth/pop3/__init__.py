"""POP3: a sans-IO protocol (:mod:`mailoauth.pop3.protocol`) and its async driver."""

from mailoauth.pop3.client import MailboxStat, Pop3Client

__all__ = ["MailboxStat", "Pop3Client"]
