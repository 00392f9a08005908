"""A proxy's URL, read once and shown without its password: :class:`ProxyURL`.

Shared by the mail connections (:mod:`mailoauth._core.proxy`) and the token endpoint
(httpx's proxy support), so both accept the same ``proxy=`` and name it the same way.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Literal

from mailoauth.errors import ConfigurationError

__all__ = ["ProxyURL", "proxy_from_environment"]

ProxyScheme = Literal["http", "socks5"]
_SCHEMES: dict[str, ProxyScheme] = {"http": "http", "socks5": "socks5", "socks5h": "socks5"}
_DEFAULT_PORTS: dict[ProxyScheme, int] = {"http": 8080, "socks5": 1080}


@dataclass(frozen=True)
class ProxyURL:
    """A proxy: its scheme (``"http"`` for CONNECT, ``"socks5"``), address and
    credentials. Made with :meth:`parse`; ``str()`` and ``repr()`` hide the password."""

    scheme: ProxyScheme
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str | ProxyURL) -> ProxyURL:
        """Read ``http://[user:pass@]host[:port]`` or ``socks5://...`` (``socks5h``
        too); the default port is 8080 for HTTP and 1080 for SOCKS5.

        Raises :class:`~mailoauth.errors.ConfigurationError` naming what is wrong (the
        message shows the URL with its password hidden)."""
        if isinstance(url, ProxyURL):
            return url
        if not isinstance(url, str):
            raise ConfigurationError(f"proxy must be a URL string, not {type(url).__name__}")
        parts = urllib.parse.urlsplit(url.strip())
        shown = _redact(parts)
        scheme = _SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise ConfigurationError(
                f"proxy {shown!r}: the scheme must be http:// (HTTP CONNECT) or socks5://, "
                f"not {parts.scheme + '://' if parts.scheme else 'missing'}"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError(
                f"proxy {shown!r}: the port is not a number from 1 to 65535"
            ) from None
        if not parts.hostname:
            raise ConfigurationError(f"proxy {shown!r} names no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigurationError(
                f"proxy {shown!r}: give only scheme://[user:password@]host:port"
            )
        username = urllib.parse.unquote(parts.username) if parts.username is not None else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        return cls(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], username, password)

    @property
    def netloc(self) -> str:
        """``host:port`` (IPv6 literals bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def secret_url(self) -> str:
        """The URL with the password, for the HTTP client that must send it. From then
        on the password is scrubbed from the records of httpcore's loggers (its SOCKS
        trace logs the credentials at DEBUG)."""
        if self.password:
            _HTTPCORE_FILTER.add(self.password)
        auth = ""
        if self.username is not None:
            auth = urllib.parse.quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + urllib.parse.quote(self.password, safe="")
            auth += "@"
        scheme = "socks5h" if self.scheme == "socks5" else self.scheme
        return f"{scheme}://{auth}{self.netloc}"

    def __str__(self) -> str:
        auth = ""
        if self.username is not None:
            auth = self.username + (":***" if self.password is not None else "") + "@"
        return f"{self.scheme}://{auth}{self.netloc}"


def _redact(parts: urllib.parse.SplitResult) -> str:
    if parts.password is None:
        return parts.geturl()
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def proxy_from_environment(host: str) -> ProxyURL | None:
    """The proxy the environment names for a mail connection to ``host``:
    ``ALL_PROXY`` (or ``all_proxy``), unless ``NO_PROXY`` lists ``host``; None when
    unset. (``HTTPS_PROXY`` is for HTTPS, the token endpoint's, as httpx reads it.)
    Raises :class:`~mailoauth.errors.ConfigurationError` when the variable is not a
    proxy URL this module understands."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get("all")
    if not url:
        return None
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    try:
        return ProxyURL.parse(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"ALL_PROXY in the environment: {exc}") from None


class _PasswordFilter(logging.Filter):
    """Replaces proxy passwords (as text and as the inside of a bytes repr) with
    ``***`` in log records: httpcore's ``setup_socks5_connection`` trace carries
    ``auth=(b'user', b'password')``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._forms: set[str] = set()

    def add(self, password: str) -> None:
        with self._lock:
            self._forms.update({password, repr(password.encode())[2:-1]})

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            forms = sorted(self._forms, key=len, reverse=True)
        if not forms:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a broken log call is the logging module's to report
            return True
        scrubbed = text
        for form in forms:
            scrubbed = scrubbed.replace(form, "***")
        if scrubbed != text:
            record.msg, record.args = scrubbed, None
        return True


_HTTPCORE_FILTER = _PasswordFilter()
for _name in ("httpcore.socks", "httpcore.proxy", "httpcore.connection", "httpx"):
    logging.getLogger(_name).addFilter(_HTTPCORE_FILTER)
