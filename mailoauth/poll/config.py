"""The TOML file that ``mailoauth poll`` runs from: credentials, mailboxes, settings.

::

    [credentials.alice]            # one token provider per credential
    kind = "oauth2"                # or "google", "microsoft"
    token_url = "https://idp.example.com/token"
    client_id = "mail-worker"
    client_secret_env = "ALICE_SECRET"     # or client_secret = "..."
    refresh_token_env = "ALICE_RT"         # or refresh_token = "..."

    [[mailbox]]                    # a MailboxSpec: protocol, host, port, username,
    protocol = "imap"              # credential, security, folder, cafile, key,
    host = "imap.example.com"      # timeout, max_message_size
    port = 993
    username = "alice@example.com"
    credential = "alice"

    [tokens]                       # optional: where refreshed tokens are kept
    store = "tokens.json"          # (a FileTokenStore; relative to this file)

    [poll]                         # optional: the poller's settings
    interval = 60                  # also use_idle, idle_timeout, start, fetch_batch,
                                   # max_connections, max_per_host, max_per_account,
                                   # presets (PollLimits: the providers' caps)

A credential also takes ``grant`` (``"refresh_token"``, the default, or
``"client_credentials"``), ``scope`` (a string) or ``scopes`` (a list), ``store`` (its
own token store file); Microsoft's takes ``tenant``, ``authority`` and ``cloud``, and
``token_url`` overrides its endpoint (Google's too). :func:`load_config` reads and
checks the file; :class:`TokenSources` turns it into one provider per credential and
:meth:`TokenSources.resolve` a :class:`~mailoauth.poll.MailboxSpec` into a watchable
:class:`~mailoauth.poll.Mailbox`. Secrets read from the environment are read once, at
load time; no secret is ever part of an error message or a repr.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

from mailoauth._core.dialer import Dialer
from mailoauth._providers import GOOGLE_TOKEN_URL
from mailoauth.errors import ConfigurationError
from mailoauth.poll.mailbox_spec import MailboxSpec
from mailoauth.poll.spec import Mailbox, PollLimits
from mailoauth.tokens.endpoint import DEFAULT_TIMEOUT as TOKEN_TIMEOUT
from mailoauth.tokens.google import GoogleTokenProvider
from mailoauth.tokens.grants import ClientCredentialsGrant, RefreshTokenGrant
from mailoauth.tokens.microsoft import MicrosoftTokenProvider
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.stores import FileTokenStore, TokenStore

if TYPE_CHECKING:
    import httpx

    from mailoauth.tokens.redis_store import RedisTokenStore

__all__ = [
    "CREDENTIAL_KINDS",
    "CredentialConfig",
    "PollConfig",
    "TokenSources",
    "load_config",
]

log = logging.getLogger("mailoauth.poll")

CredentialKind = Literal["oauth2", "google", "microsoft"]
GrantName = Literal["refresh_token", "client_credentials"]

#: The credential kinds, and the keys each one reads (besides the common ones).
CREDENTIAL_KINDS: Final[Mapping[str, frozenset[str]]] = {
    "oauth2": frozenset(),
    "google": frozenset(),
    "microsoft": frozenset({"tenant", "authority", "cloud"}),
}
_COMMON_KEYS: Final = frozenset(
    {
        "kind",
        "grant",
        "token_url",
        "client_id",
        "client_secret",
        "client_secret_env",
        "refresh_token",
        "refresh_token_env",
        "scope",
        "scopes",
        "store",
    }
)
_GRANTS: Final = ("refresh_token", "client_credentials")
#: The ``[poll]`` table: key -> the kind of value it takes.
_POLL_KEYS: Final[Mapping[str, str]] = {
    "interval": "seconds",
    "use_idle": "bool",
    "idle_timeout": "seconds",
    "start": "start",
    "fetch_batch": "count",
    "max_connections": "count",
    "max_per_host": "count",
    "max_per_account": "count",
    "presets": "bool",
}
#: The ``[poll]`` keys that make its :class:`~mailoauth.poll.PollLimits`.
_LIMIT_KEYS: Final = frozenset({"max_connections", "max_per_host", "max_per_account", "presets"})
_TOP_LEVEL: Final = ("credentials", "mailbox", "tokens", "poll")
#: The key prefix of the Redis token store (RedisTokenStore's default).
DEFAULT_TOKEN_PREFIX: Final = "mailoauth:"
#: The most connections the Redis token store opens; more callers wait for one (a
#: worker starting hundreds of mailboxes refreshes their credentials all at once, which
#: would exceed a plain pool's limit and fail).
REDIS_MAX_CONNECTIONS: Final = 64
#: Seconds any one Redis call of the token store may take, waiting for a connection
#: included.
REDIS_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class CredentialConfig:
    """One ``[credentials.NAME]`` table, checked, its secrets read (never shown in a
    repr). :meth:`provider` builds its token provider."""

    name: str
    kind: CredentialKind
    client_id: str
    grant: GrantName = "refresh_token"
    token_url: str | None = None
    scope: str | None = None
    tenant: str | None = None
    authority: str | None = None
    cloud: str | None = None
    store: Path | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)

    def provider(
        self,
        *,
        store: TokenStore | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> OAuth2TokenProvider:
        """A new token provider for this credential, keeping its tokens in ``store``
        and reaching the token endpoint with ``http_client`` (default: its own).
        Raises :class:`~mailoauth.errors.ConfigurationError` as the provider does."""
        if self.kind == "google":
            assert self.refresh_token is not None
            return GoogleTokenProvider(
                self.client_id,
                self.client_secret,
                self.refresh_token,
                scope=self.scope,
                store=store,
                http_client=http_client,
                token_url=self.token_url or GOOGLE_TOKEN_URL,
            )
        if self.kind == "microsoft":
            where: dict[str, Any] = {
                "authority": self.authority,
                "token_url": self.token_url,
                "cloud": self.cloud or "global",
            }
            if self.grant == "client_credentials":
                assert self.tenant is not None
                return MicrosoftTokenProvider.client_credentials(
                    self.client_id,
                    self.client_secret,
                    tenant=self.tenant,
                    scopes=self.scope,
                    store=store,
                    http_client=http_client,
                    **where,
                )
            assert self.refresh_token is not None
            return MicrosoftTokenProvider.refresh_token(
                self.client_id,
                self.refresh_token,
                tenant=self.tenant or "common",
                scopes=self.scope,
                client_secret=self.client_secret,
                store=store,
                http_client=http_client,
                **where,
            )
        assert self.token_url is not None
        grant = (
            ClientCredentialsGrant()
            if self.grant == "client_credentials"
            else RefreshTokenGrant(self.refresh_token or "")
        )
        return OAuth2TokenProvider(
            self.token_url,
            grant,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope=self.scope,
            store=store,
            http_client=http_client,
        )


@dataclass(frozen=True)
class PollConfig:
    """A checked config file: its credentials by name, its mailboxes in file order,
    the token store file of ``[tokens]`` (if any) and the ``[poll]`` settings as
    keywords for :class:`~mailoauth.poll.Poller`."""

    path: Path
    credentials: Mapping[str, CredentialConfig]
    mailboxes: tuple[MailboxSpec, ...]
    token_store: Path | None = None
    poll_options: Mapping[str, Any] = field(default_factory=dict)
    #: False when loaded with ``secrets=False``: no provider can be built from it.
    secrets_read: bool = True

    def sources(
        self,
        *,
        redis: str | None = None,
        redis_prefix: str = DEFAULT_TOKEN_PREFIX,
        dialer: Dialer | None = None,
        on_token_request: Callable[[str], None] | None = None,
    ) -> TokenSources:
        """The :class:`TokenSources` of this file (see there)."""
        return TokenSources(
            self,
            redis=redis,
            redis_prefix=redis_prefix,
            dialer=dialer,
            on_token_request=on_token_request,
        )


# -- reading ---------------------------------------------------------------------------


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigurationError(
                f"{path}: reading TOML on Python 3.10 needs tomli: pip install tomli"
            ) from None
    try:
        with path.open("rb") as file:
            data: dict[str, Any] = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: there is no such config file") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        # The decoder names a line and column, never the value found there.
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    return data


class _Where:
    """Names the file and the table in every error message."""

    def __init__(self, path: Path, table: str) -> None:
        self.path = path
        self.table = table

    def error(self, key: str | None, text: str) -> ConfigurationError:
        where = f"{self.path}: {self.table}" + (f" {key}" if key else "")
        return ConfigurationError(f"{where}: {text}")

    def string(self, data: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise self.error(key, "missing (a string is required)")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, not a {_toml_type(value)}")
        return value

    def secret(self, data: Mapping[str, Any], key: str, *, read: bool = True) -> str | None:
        """``key`` written in the file, or read from the variable ``{key}_env`` names
        (only checked, and None returned, unless ``read``)."""
        env_key = f"{key}_env"
        if key in data and env_key in data:
            raise self.error(key, f"give {key} or {env_key}, not both")
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value:
                # The value itself is a secret: only its type is named.
                raise self.error(key, f"must be a non-empty string, not a {_toml_type(value)}")
            return value if read else None
        variable = self.string(data, env_key)
        if variable is None or not read:
            return None
        found = os.environ.get(variable)
        if not found:
            state = "is empty" if found == "" else "is not set"
            raise self.error(env_key, f"the environment variable {variable} {state}")
        return found


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    if isinstance(value, dict):
        return "table"
    return names.get(type(value), type(value).__name__)


def _relative(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _credential(path: Path, name: str, data: object, secrets: bool) -> CredentialConfig:
    where = _Where(path, f"[credentials.{name}]")
    if not isinstance(data, dict):
        raise where.error(None, f"must be a table, not a {_toml_type(data)}")
    kind = where.string(data, "kind", required=True)
    if kind is None or kind not in CREDENTIAL_KINDS:
        raise where.error("kind", f"must be one of {', '.join(CREDENTIAL_KINDS)}, not {kind!r}")
    known = _COMMON_KEYS | CREDENTIAL_KINDS[kind]
    unknown = sorted(set(data) - known)
    if unknown:
        raise where.error(
            unknown[0],
            f"is not a setting of {kind} credentials; known: {', '.join(sorted(known))}",
        )
    grant = where.string(data, "grant") or "refresh_token"
    if grant not in _GRANTS:
        raise where.error("grant", f"must be one of {', '.join(_GRANTS)}, not {grant!r}")
    if kind == "google" and grant != "refresh_token":
        raise where.error("grant", "a google credential uses the refresh_token grant")
    client_id = where.string(data, "client_id", required=True)
    assert client_id is not None
    token_url = where.string(data, "token_url")
    if kind == "oauth2" and token_url is None:
        raise where.error("token_url", "missing: an oauth2 credential names its token endpoint")
    client_secret = where.secret(data, "client_secret", read=secrets)
    refresh_token = where.secret(data, "refresh_token", read=secrets)
    has_refresh_token = "refresh_token" in data or "refresh_token_env" in data
    if grant == "refresh_token" and not has_refresh_token:
        raise where.error("refresh_token", "missing: give refresh_token or refresh_token_env")
    if grant == "client_credentials":
        if "client_secret" not in data and "client_secret_env" not in data:
            raise where.error(
                "client_secret", "missing: the client_credentials grant needs the client secret"
            )
        if has_refresh_token:
            raise where.error("refresh_token", "the client_credentials grant takes none")
        if kind == "microsoft" and "tenant" not in data:
            raise where.error("tenant", "missing: app-only tokens need the tenant id or domain")
    if "scope" in data and "scopes" in data:
        raise where.error("scope", "give scope or scopes, not both")
    scope = where.string(data, "scope")
    if "scopes" in data:
        scopes = data["scopes"]
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
            raise where.error("scopes", "must be an array of non-empty strings")
        scope = " ".join(scopes) or None
    store = where.string(data, "store")
    return CredentialConfig(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        client_id=client_id,
        grant=grant,  # type: ignore[arg-type]
        token_url=token_url,
        scope=scope,
        tenant=where.string(data, "tenant"),
        authority=where.string(data, "authority"),
        cloud=where.string(data, "cloud"),
        store=_relative(path.parent, store) if store else None,
        client_secret=client_secret,
        refresh_token=refresh_token,
    )


def _mailbox(path: Path, number: int, data: object, credentials: Mapping[str, Any]) -> MailboxSpec:
    where = _Where(path, f"[[mailbox]] #{number}")
    if not isinstance(data, dict):
        raise where.error(None, f"must be a table, not a {_toml_type(data)}")
    if isinstance(data.get("key"), str) and data["key"]:
        where = _Where(path, f"[[mailbox]] #{number} ({data['key']})")
    fields = dict(data)
    cafile = fields.get("cafile")
    if isinstance(cafile, str) and cafile:
        fields["cafile"] = str(_relative(path.parent, cafile))
    try:
        spec = MailboxSpec.from_json(fields)
    except ConfigurationError as exc:
        raise where.error(None, str(exc)) from None
    except TypeError as exc:  # a value of the wrong type reached a comparison
        raise where.error(None, f"a setting has the wrong type: {exc}") from None
    if spec.credential not in credentials:
        defined = ", ".join(sorted(credentials)) or "none"
        raise where.error(
            "credential",
            f"names {spec.credential!r}, but there is no [credentials.{spec.credential}] "
            f"table (defined: {defined})",
        )
    return spec


def _poll_options(path: Path, data: object) -> dict[str, Any]:
    where = _Where(path, "[poll]")
    if not isinstance(data, dict):
        raise where.error(None, f"must be a table, not a {_toml_type(data)}")
    options: dict[str, Any] = {}
    for key, value in data.items():
        kind = _POLL_KEYS.get(key)
        if kind is None:
            raise where.error(key, f"is not a poll setting; known: {', '.join(_POLL_KEYS)}")
        if kind == "bool":
            if not isinstance(value, bool):
                raise where.error(key, f"must be true or false, not a {_toml_type(value)}")
        elif kind == "start":
            if value not in ("new", "all"):
                raise where.error(key, f"must be 'new' or 'all', not {value!r}")
        elif kind == "count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise where.error(key, f"must be an integer >= 1, not {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value > 0)
        ):
            raise where.error(key, f"must be a positive number of seconds, not {value!r}")
        options[key] = value
    limits = {k: options.pop(k) for k in list(options) if k in _LIMIT_KEYS}
    if limits:
        options["limits"] = PollLimits(**limits)
    return options


def load_config(path: str | os.PathLike[str], *, secrets: bool = True) -> PollConfig:
    """Read and check the config file at ``path``.

    With ``secrets=False`` the secrets are checked for shape but not read (no
    environment variable needs to be set): enough to add the file's mailboxes to a
    fleet, not to build providers (:attr:`PollConfig.secrets_read` is then False).

    Raises :class:`~mailoauth.errors.ConfigurationError` naming the file, the table
    (``[credentials.NAME]``, ``[[mailbox]] #N``, ``[poll]``, ``[tokens]``) and the key
    for anything missing, unknown or out of range, and an environment variable a
    ``*_env`` key names that is not set (by its name; no secret is ever quoted).
    """
    file = Path(path)
    data = _load_toml(file)
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigurationError(
            f"{file}: unknown table or key {unknown[0]!r}; known: {', '.join(_TOP_LEVEL)}"
        )
    raw_credentials = data.get("credentials", {})
    if not isinstance(raw_credentials, dict):
        raise ConfigurationError(f"{file}: credentials must be tables ([credentials.NAME])")
    credentials = {
        name: _credential(file, name, raw, secrets) for name, raw in raw_credentials.items()
    }
    raw_mailboxes = data.get("mailbox", [])
    if not isinstance(raw_mailboxes, list):
        raise ConfigurationError(f"{file}: mailboxes are written [[mailbox]] (an array of tables)")
    mailboxes: list[MailboxSpec] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(raw_mailboxes, start=1):
        spec = _mailbox(file, number, raw, credentials)
        if spec.key in seen:
            raise ConfigurationError(
                f"{file}: [[mailbox]] #{number} key: {spec.key!r} is mailbox "
                f"#{seen[spec.key]}'s too; give one of them another key"
            )
        seen[spec.key] = number
        mailboxes.append(spec)
    token_store: Path | None = None
    tokens = data.get("tokens")
    if tokens is not None:
        where = _Where(file, "[tokens]")
        if not isinstance(tokens, dict):
            raise where.error(None, f"must be a table, not a {_toml_type(tokens)}")
        if set(tokens) - {"store"}:
            raise where.error(sorted(set(tokens) - {"store"})[0], "is not known; known: store")
        store = where.string(tokens, "store")
        token_store = _relative(file.parent, store) if store else None
    options = _poll_options(file, data["poll"]) if "poll" in data else {}
    return PollConfig(file, credentials, tuple(mailboxes), token_store, options, secrets)


# -- providers and mailboxes -----------------------------------------------------------


def _redis_store(url: str, prefix: str) -> tuple[RedisTokenStore, Any]:
    """A RedisTokenStore on a client of its own over a blocking pool, and the client
    (closed by the caller). Raises ConfigurationError without redis-py."""
    from mailoauth.tokens.redis_store import RedisTokenStore

    try:
        module: Any = importlib.import_module("redis.asyncio")
    except ImportError:
        raise ConfigurationError(
            "the Redis token store needs the redis package: pip install 'mailoauth[redis]'"
        ) from None
    pool = module.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
    )
    client = module.Redis(connection_pool=pool)
    return RedisTokenStore(client, prefix=prefix), client


class TokenSources:
    """One token provider per credential of ``config`` (made on first use, shared by
    all of its mailboxes), and :meth:`resolve` to turn a spec into a Mailbox.

    With ``redis`` (a URL) every provider keeps its tokens in one
    :class:`~mailoauth.RedisTokenStore` under ``redis_prefix`` (so a fleet refreshes
    each credential once), over a blocking pool of :data:`REDIS_MAX_CONNECTIONS`;
    otherwise in the credential's ``store``, else the ``[tokens]`` store, else in
    memory. ``dialer`` opens every mail connection. ``on_token_request`` is called
    with the credential's name before every request to its token endpoint. Close with
    :meth:`aclose` (or ``async with``). Raises
    :class:`~mailoauth.errors.ConfigurationError` when redis-py is missing.
    """

    def __init__(
        self,
        config: PollConfig,
        *,
        redis: str | None = None,
        redis_prefix: str = DEFAULT_TOKEN_PREFIX,
        dialer: Dialer | None = None,
        on_token_request: Callable[[str], None] | None = None,
    ) -> None:
        if not config.secrets_read:
            raise ConfigurationError(
                f"{config.path} was loaded without its secrets (secrets=False): load it "
                "again with them to build token providers"
            )
        self.config = config
        self.dialer = dialer
        self._on_token_request = on_token_request
        self._redis: RedisTokenStore | None = None
        self._redis_client: Any = None
        if redis is not None:
            self._redis, self._redis_client = _redis_store(redis, redis_prefix)
        if redis is not None and (
            config.token_store or any(c.store for c in config.credentials.values())
        ):
            log.info(
                "%s: with Redis, tokens are kept in Redis, not in the store files", config.path
            )
        self._files: dict[Path, FileTokenStore] = {}
        self._providers: dict[str, OAuth2TokenProvider] = {}
        self._clients: list[httpx.AsyncClient] = []
        if redis is None:
            for credential in config.credentials.values():
                if (
                    credential.kind == "microsoft"
                    and credential.grant == "refresh_token"
                    and self._store_path(credential) is None
                ):
                    log.warning(
                        "%s: [credentials.%s] has no token store: Microsoft rotates refresh "
                        "tokens, and the newest is lost at exit; set [tokens] store",
                        config.path,
                        credential.name,
                    )

    def _store_path(self, credential: CredentialConfig) -> Path | None:
        return credential.store or self.config.token_store

    def _store(self, credential: CredentialConfig) -> TokenStore | None:
        if self._redis is not None:
            return self._redis
        path = self._store_path(credential)
        if path is None:
            return None
        return self._files.setdefault(path, FileTokenStore(path))

    def _http_client(self, name: str) -> httpx.AsyncClient | None:
        hook = self._on_token_request
        if hook is None:
            return None
        import httpx

        async def count(request: httpx.Request) -> None:
            hook(name)

        # As the providers' own client: no redirects, no proxy from the environment.
        client = httpx.AsyncClient(
            timeout=TOKEN_TIMEOUT,
            follow_redirects=False,
            trust_env=False,
            event_hooks={"request": [count]},
        )
        self._clients.append(client)
        return client

    def provider(self, name: str) -> OAuth2TokenProvider:
        """The provider of the credential ``name`` (the same object on every call).
        Raises :class:`~mailoauth.errors.ConfigurationError` for an unknown name."""
        provider = self._providers.get(name)
        if provider is None:
            credential = self.config.credentials.get(name)
            if credential is None:
                defined = ", ".join(sorted(self.config.credentials)) or "none"
                raise ConfigurationError(
                    f"no credential {name!r} in {self.config.path} (defined: {defined}); "
                    f"add a [credentials.{name}] table"
                )
            provider = credential.provider(
                store=self._store(credential), http_client=self._http_client(name)
            )
            self._providers[name] = provider
        return provider

    def resolve(self, spec: MailboxSpec) -> Mailbox:
        """The watchable :class:`~mailoauth.poll.Mailbox` of ``spec``, with its
        credential's provider. Raises :class:`~mailoauth.errors.ConfigurationError` for
        a credential this config does not define, or an unreadable ``cafile``."""
        mailbox = spec.to_mailbox(self.provider(spec.credential))
        if self.dialer is None:
            return mailbox
        return Mailbox.from_settings(
            mailbox.protocol,
            mailbox.settings.replace(dialer=self.dialer),
            mailbox.username,
            mailbox.token,
            folder=mailbox.folder,
            key=mailbox.key,
            max_message_size=mailbox.max_message_size,
        )

    async def aclose(self) -> None:
        """Close the providers, their HTTP clients and the Redis store."""
        closers: list[Callable[[], Awaitable[None]]] = [p.aclose for p in self._providers.values()]
        closers += [c.aclose for c in self._clients]
        if self._redis_client is not None:
            client = self._redis_client
            closers.append(lambda: client.aclose(close_connection_pool=True))
        self._redis = self._redis_client = None
        self._providers.clear()
        self._clients.clear()
        for close in closers:
            try:
                await close()
            except Exception as exc:  # closing is best effort; say what failed
                log.warning("closing %s failed: %s", close, type(exc).__name__)

    async def __aenter__(self) -> TokenSources:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
