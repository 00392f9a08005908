"""A mailbox described without its secrets: what a config file and a fleet store hold.

A :class:`MailboxSpec` names the credential its token comes from instead of holding a
token, so it can be written to a TOML file or to Redis and turned into a watchable
:class:`~mailoauth.poll.Mailbox` by whoever holds the credentials
(:meth:`MailboxSpec.to_mailbox`).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mailoauth._core.settings import DEFAULT_TIMEOUT, check_login_name
from mailoauth.errors import ConfigurationError
from mailoauth.poll.spec import Mailbox
from mailoauth.security import SecurityOptions, create_ssl_context
from mailoauth.tokens.access_token import AccessToken, TokenProvider

__all__ = ["MailboxSpec"]

#: The keys :meth:`MailboxSpec.from_json` reads; any other key is refused.
_FIELDS = (
    "protocol",
    "host",
    "port",
    "username",
    "credential",
    "security",
    "folder",
    "cafile",
    "key",
    "timeout",
    "max_message_size",
)


@dataclass(frozen=True)
class MailboxSpec:
    """One mailbox to watch, by the name of its credential: no token, no secret.

    ``credential`` names the token source (a ``[credentials.NAME]`` table of a config
    file, or whatever the caller's resolver knows). ``security`` is a
    :class:`~mailoauth.SecurityOptions` or its value (``"auto"``, ``"ssl_implicit"``,
    ``"ssl_explicit"``; ``"none"`` only for loopback test servers, which the client
    refuses elsewhere). ``cafile`` adds a private CA. ``key`` defaults to the one
    :class:`~mailoauth.poll.Mailbox` would give. Raises
    :class:`~mailoauth.errors.ConfigurationError` for a field out of range, naming it.
    """

    protocol: Literal["imap", "pop3"]
    host: str
    port: int
    username: str
    credential: str
    security: SecurityOptions = SecurityOptions.AUTO
    folder: str = "INBOX"
    cafile: str | None = None
    key: str = ""
    timeout: float = DEFAULT_TIMEOUT
    max_message_size: int | None = None
    _context: list[ssl.SSLContext] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.protocol not in ("imap", "pop3"):
            raise ConfigurationError(f"protocol must be 'imap' or 'pop3', not {self.protocol!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigurationError(f"host must be a non-empty string, not {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigurationError(f"port must be an int, not {self.port!r}")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"port must be in 1..65535, not {self.port}")
        check_login_name(self.username)
        if not isinstance(self.credential, str) or not self.credential:
            raise ConfigurationError("credential must name a credential (a non-empty string)")
        if not isinstance(self.security, SecurityOptions):
            try:
                security = SecurityOptions(str(self.security).lower())
            except ValueError:
                names = ", ".join(o.value for o in SecurityOptions)
                raise ConfigurationError(
                    f"security must be one of {names}, not {self.security!r}"
                ) from None
            object.__setattr__(self, "security", security)
        if self.protocol == "pop3" and self.folder != "INBOX":
            raise ConfigurationError("POP3 has one maildrop: leave folder as 'INBOX'")
        if not isinstance(self.folder, str) or not self.folder:
            raise ConfigurationError(f"folder must be a non-empty string, not {self.folder!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
            raise ConfigurationError(f"timeout must be a number of seconds, not {self.timeout!r}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigurationError(f"timeout must be a positive number, not {self.timeout}")
        size = self.max_message_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigurationError(f"max_message_size must be an int >= 1, not {size!r}")
        if not self.key:
            key = f"{self.protocol}://{self.username}@{self.host}:{self.port}/{self.folder}"
            object.__setattr__(self, "key", key)

    # -- (de)serialising ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_json` reads back (defaults left out)."""
        data: dict[str, Any] = {
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "credential": self.credential,
            "security": self.security.value,
            "folder": self.folder,
            "key": self.key,
        }
        if self.cafile is not None:
            data["cafile"] = self.cafile
        if self.timeout != DEFAULT_TIMEOUT:
            data["timeout"] = self.timeout
        if self.max_message_size is not None:
            data["max_message_size"] = self.max_message_size
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MailboxSpec:
        """The spec a ``[[mailbox]]`` table or :meth:`to_json` describes. Raises
        :class:`~mailoauth.errors.ConfigurationError` for an unknown or missing key, or a
        value out of range."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a mailbox is a table of settings, not {data!r}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigurationError(
                f"unknown mailbox setting(s): {', '.join(unknown)}; known: {', '.join(_FIELDS)}"
            )
        missing = [
            k for k in ("protocol", "host", "port", "username", "credential") if k not in data
        ]
        if missing:
            raise ConfigurationError(f"a mailbox needs {', '.join(missing)}")
        return cls(**dict(data))

    # -- to a watchable mailbox -------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context ``cafile`` asks for (made once, then shared), or None for the
        clients' default."""
        if self.cafile is None:
            return None
        if not self._context:
            try:
                self._context.append(create_ssl_context(cafile=self.cafile))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"{self.key}: cannot read cafile {self.cafile!r}: {exc}"
                ) from exc
        return self._context[0]

    def to_mailbox(
        self,
        token: str | AccessToken | TokenProvider,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_insecure_auth: bool = False,
    ) -> Mailbox:
        """The :class:`~mailoauth.poll.Mailbox` this spec describes, authenticating with
        ``token`` (give every mailbox of one credential the same provider object).
        ``ssl_context`` overrides the one made from ``cafile``. Raises
        :class:`~mailoauth.errors.ConfigurationError` as :class:`Mailbox` does, and for
        an unreadable ``cafile``."""
        return Mailbox(
            self.protocol,
            self.host,
            self.port,
            self.username,
            token,
            self.security,
            folder=self.folder,
            key=self.key,
            ssl_context=ssl_context or self.ssl_context(),
            timeout=self.timeout,
            max_message_size=self.max_message_size,
            allow_insecure_auth=allow_insecure_auth,
        )
