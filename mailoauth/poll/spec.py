"""What the poller watches (:class:`Mailbox`) and what it reports (the events)."""

from __future__ import annotations

import dataclasses
import email.message
import email.policy
import ssl
from dataclasses import KW_ONLY, dataclass, field
from email.parser import BytesParser
from typing import Literal

from mailoauth._core.settings import DEFAULT_TIMEOUT, ConnectionSettings, check_login_name
from mailoauth._providers import connection_preset
from mailoauth._util.proxyurl import ProxyURL
from mailoauth.errors import ConfigurationError
from mailoauth.security import SecurityOptions
from mailoauth.tokens.access_token import AccessToken, TokenProvider

__all__ = ["Backoff", "Mailbox", "MailboxFailed", "NewMessage", "PollEvent", "PollLimits"]

_parser = BytesParser(policy=email.policy.default)
#: The fields of :class:`Mailbox` that read from its settings when those are given.
_SETTINGS_FIELDS = (
    "host",
    "port",
    "security",
    "ssl_context",
    "mechanism",
    "timeout",
    "allow_insecure_auth",
    "proxy",
    "trust_env",
)


@dataclass(frozen=True)
class Mailbox:
    """One mailbox to watch: an IMAP folder, or a POP3 maildrop.

    ``token`` is an access token (``str`` / :class:`~mailoauth.AccessToken`) or a
    :class:`~mailoauth.TokenProvider`. Give every mailbox of one account the *same*
    provider object: the poller then holds one token manager for it, and all of that
    account's connections share its cached token and its refreshes.

    ``username`` is the mailbox to log in to. A shared mailbox is watched with a
    delegate's token: ``username`` is the shared mailbox's address and ``token`` the
    delegate's provider (the delegate needs FullAccess on it; the basic-auth
    ``delegate\\shared`` form is refused with a ConfigurationError naming this way).

    ``key`` names the mailbox in events and in the state store; it defaults to
    ``"{protocol}://{username}@{host}:{port}/{folder}"``. Keep it stable across
    restarts, or the poller treats the mailbox as new. ``max_message_size`` bounds
    what a POP3 poll holds in memory per message.

    How the server is reached is :attr:`settings`, a
    :class:`~mailoauth.ConnectionSettings`: give it with :meth:`from_settings` (its
    dialer, connect timeout and rate included), or as the fields ``host``, ``port``,
    ``security``, ``ssl_context``, ``mechanism``, ``timeout``, ``allow_insecure_auth``,
    ``proxy``, ``trust_env``
    from which it is then made. Raises :class:`~mailoauth.errors.ConfigurationError` for
    an unknown protocol, a POP3 folder other than ``INBOX`` (POP3 has only one), and
    what :class:`~mailoauth.ConnectionSettings` refuses.
    """

    protocol: Literal["imap", "pop3"]
    host: str
    port: int
    username: str
    token: str | AccessToken | TokenProvider = field(repr=False, compare=False)
    security: SecurityOptions = SecurityOptions.AUTO
    _: KW_ONLY
    folder: str = "INBOX"
    key: str = ""
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    mechanism: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    allow_insecure_auth: bool = False
    #: POP3: the largest message retrieved (octets; None: the client's default). A
    #: larger one is skipped with a warning and left on the server, unreported, so the
    #: messages after it still arrive.
    max_message_size: int | None = None
    #: The proxy to reach the server through (``http://user:pass@host:port`` for HTTP
    #: CONNECT, ``socks5://...``), and whether the environment's ``ALL_PROXY`` may be
    #: used: see :class:`~mailoauth.ConnectionSettings`.
    proxy: str | ProxyURL | None = field(default=None, repr=False)
    trust_env: bool = False
    #: How the server is reached: made from the fields above unless given (by
    #: :meth:`from_settings`); the fields then read from it.
    settings: ConnectionSettings = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.protocol not in ("imap", "pop3"):
            raise ConfigurationError(f"protocol must be 'imap' or 'pop3', not {self.protocol!r}")
        check_login_name(self.username)
        if self.protocol == "pop3" and self.folder != "INBOX":
            raise ConfigurationError("POP3 has one maildrop: leave folder as 'INBOX'")
        settings: ConnectionSettings | None = self.settings
        if settings is None:
            settings = ConnectionSettings(
                self.host,
                self.port,
                self.security,
                ssl_context=self.ssl_context,
                timeout=self.timeout,
                mechanism=self.mechanism,
                allow_insecure_auth=self.allow_insecure_auth,
                proxy=self.proxy,
                trust_env=self.trust_env,
            )
            object.__setattr__(self, "settings", settings)
            object.__setattr__(self, "proxy", settings.proxy)
        else:
            # A field set to something else than both the settings' value and its own
            # default was asked for (``dataclasses.replace(box, timeout=5)``): it wins.
            changes = {
                name: getattr(self, name)
                for name in _SETTINGS_FIELDS
                if getattr(self, name) != getattr(settings, name)
                and getattr(self, name) != _FIELD_DEFAULTS.get(name, _NO_DEFAULT)
            }
            if changes:
                settings = settings.replace(**changes)
                object.__setattr__(self, "settings", settings)
            for name in _SETTINGS_FIELDS:
                object.__setattr__(self, name, getattr(settings, name))
        if not self.key:
            key = f"{self.protocol}://{self.username}@{self.host}:{self.port}/{self.folder}"
            object.__setattr__(self, "key", key)

    @classmethod
    def from_settings(
        cls,
        protocol: Literal["imap", "pop3"],
        settings: ConnectionSettings,
        username: str,
        token: str | AccessToken | TokenProvider,
        *,
        folder: str = "INBOX",
        key: str = "",
        max_message_size: int | None = None,
    ) -> Mailbox:
        """The mailbox ``folder`` of ``username`` on the server ``settings`` reach
        (their dialer, deadlines and TLS context included). Raises as the constructor."""
        return cls(
            protocol,
            settings.host,
            settings.port,
            username,
            token,
            settings.security,
            folder=folder,
            key=key,
            max_message_size=max_message_size,
            settings=settings,
        )

    @property
    def account(self) -> tuple[str, str]:
        """``(host, username)``, lowercased: what a provider's per-account cap counts."""
        return self.host.lower(), self.username.lower()


_NO_DEFAULT = object()
_FIELD_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Mailbox) if f.default is not dataclasses.MISSING
}


@dataclass(frozen=True)
class PollLimits:
    """How many connections a :class:`~mailoauth.poll.Poller` holds at once: overall
    (``max_connections``), per server host (``max_per_host``) and per (host, username)
    account (``max_per_account``); None: no cap of that kind.

    With ``presets`` (the default), a mailbox on a host whose provider documents a
    per-account limit (Gmail, Exchange Online and its national clouds: see
    :data:`mailoauth._providers.CONNECTION_PRESETS`) gets that provider's per-account
    cap, below its limit, unless ``max_per_account`` is given. ``max_per_host``
    defaults to None (it was 15): Gmail's and Exchange's limits count connections per
    *account*, and a per-host cap only starved services that watch many accounts on one
    host; ``max_connections`` still bounds the whole. Explicit values always win.
    Raises :class:`~mailoauth.errors.ConfigurationError` for a limit below 1.
    """

    max_connections: int = 100
    max_per_host: int | None = None
    max_per_account: int | None = None
    presets: bool = True

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_host", "max_per_account"):
            value = getattr(self, name)
            if name != "max_connections" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")
        if not isinstance(self.presets, bool):
            raise ConfigurationError(f"presets must be True or False, not {self.presets!r}")

    def caps_for(self, host: str) -> tuple[int | None, int | None]:
        """``(per_account, per_host)`` caps of the mailboxes on ``host`` (None: none),
        the provider preset applied as described above."""
        per_account = self.max_per_account
        per_host = self.max_per_host
        preset = connection_preset(host) if self.presets else None
        if preset is not None and per_account is None:
            per_account = preset.max_per_account
        return per_account, per_host


@dataclass(frozen=True)
class Backoff:
    """How long a :class:`~mailoauth.poll.Poller` waits before retrying a mailbox after
    a transient failure: full-jitter exponential backoff from ``base`` seconds, at most
    ``max`` (see :func:`~mailoauth.poll.backoff_delay`). Raises
    :class:`~mailoauth.errors.ConfigurationError` unless ``0 <= base <= max``."""

    base: float = 1.0
    max: float = 300.0

    def __post_init__(self) -> None:
        if not (0 <= self.base <= self.max):
            raise ConfigurationError("backoff needs 0 <= backoff_base <= backoff_max")


@dataclass(frozen=True)
class NewMessage:
    """A message the mailbox did not hold before.

    ``mailbox`` is the :attr:`Mailbox.key`. IMAP events carry ``uid`` and
    ``uidvalidity``; POP3 events carry ``uidl``. ``raw`` is the message exactly as the
    server stored it; :meth:`message` parses it.

    Delivery is at least once: an event that was delivered but not acknowledged before
    a crash or a takeover by another worker comes again with ``redelivered=True``.
    :attr:`dedupe_key` names the message stably across such repeats, so a handler can
    skip one it has already done.
    """

    mailbox: str
    raw: bytes = field(repr=False)
    uid: int | None = None
    uidvalidity: int | None = None
    uidl: str | None = None
    redelivered: bool = False

    @property
    def dedupe_key(self) -> str:
        """``"{mailbox}#{uidvalidity}:{uid}"`` for IMAP, ``"{mailbox}#uidl:{uidl}"`` for
        POP3: the same for every delivery of one message, different for two."""
        if self.uidl is not None:
            return f"{self.mailbox}#uidl:{self.uidl}"
        return f"{self.mailbox}#{self.uidvalidity}:{self.uid}"

    def message(self) -> email.message.EmailMessage:
        """``raw`` parsed with the modern email policy (parsed on every call)."""
        parsed = _parser.parsebytes(self.raw)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


@dataclass(frozen=True)
class MailboxFailed:
    """Watching a mailbox failed.

    ``permanent`` failures (a dead grant, a rejected token, a missing folder) set the
    mailbox aside for good: it is listed in :attr:`Poller.failed` and not retried.
    Others are retried after ``retry_in`` seconds (exponential backoff with full
    jitter); ``attempt`` counts the failures in a row.
    """

    mailbox: str
    error: BaseException
    permanent: bool
    attempt: int = 0
    retry_in: float | None = None


PollEvent = NewMessage | MailboxFailed
"""What iterating a :class:`~mailoauth.poll.Poller` yields."""
