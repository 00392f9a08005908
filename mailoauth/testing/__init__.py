"""The testing kit (``pip install 'mailoauth[testing]'``): everything needed to test code
that uses mailoauth without a real Gmail or Office 365 account.

- :class:`MailSandbox`: a fake OAuth server, a test CA and SMTP/IMAP/POP3 servers on
  loopback, imitating Gmail, Office 365 or plain RFC behaviour (:class:`Personality`);
  ``dialer=sandbox.dialer`` (clients) and ``http_client=sandbox.http_client()``
  (providers) make it answer for the real host names and token endpoints.
- :class:`FakeOAuthServer`: every grant the providers use, introspection, revocation,
  rotation, scripted failures and request counters.
- :class:`TestSmtpServer`, :class:`TestImapServer`, :class:`TestPop3Server`,
  :class:`MailStore`, :class:`TestCA`.
- The pytest plugin (:mod:`mailoauth.testing.pytest_plugin`), registered automatically.
- :class:`DovecotServer` and :class:`PostfixServer` run the real servers (Debian's
  packages) with bearer-token authentication, for integration tests.
"""

from typing import TYPE_CHECKING

from mailoauth._util.lazy import lazy_exports

#: Where each public name is imported from, on first access (PEP 562): importing a
#: submodule does not import its siblings.
_LAZY = {
    "mailoauth.testing.certs": ["TestCA"],
    "mailoauth.testing.dovecot": ["DovecotServer"],
    "mailoauth.testing.imap_server": ["TestImapServer"],
    "mailoauth.testing.mailstore": ["MailStore"],
    "mailoauth.testing.oauth_server": ["FakeOAuthServer", "ScriptedResponse"],
    "mailoauth.testing.personality": ["Personality", "TenantState"],
    "mailoauth.testing.pop3_server": ["TestPop3Server"],
    "mailoauth.testing.postfix": ["PostfixServer"],
    "mailoauth.testing.redis_server": ["RedisServer"],
    "mailoauth.testing.sandbox": ["MailSandbox", "SandboxUser"],
    "mailoauth.testing.smtp_server": ["TestSmtpServer"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

if TYPE_CHECKING:
    from mailoauth.testing.certs import TestCA
    from mailoauth.testing.dovecot import DovecotServer
    from mailoauth.testing.imap_server import TestImapServer
    from mailoauth.testing.mailstore import MailStore
    from mailoauth.testing.oauth_server import FakeOAuthServer, ScriptedResponse
    from mailoauth.testing.personality import Personality, TenantState
    from mailoauth.testing.pop3_server import TestPop3Server
    from mailoauth.testing.postfix import PostfixServer
    from mailoauth.testing.redis_server import RedisServer
    from mailoauth.testing.sandbox import MailSandbox, SandboxUser
    from mailoauth.testing.smtp_server import TestSmtpServer

__all__ = [
    "DovecotServer",
    "FakeOAuthServer",
    "MailSandbox",
    "MailStore",
    "Personality",
    "PostfixServer",
    "RedisServer",
    "SandboxUser",
    "ScriptedResponse",
    "TenantState",
    "TestCA",
    "TestImapServer",
    "TestPop3Server",
    "TestSmtpServer",
]
