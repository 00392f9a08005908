"""Where the command keeps credentials: a :class:`~mailoauth.FileTokenStore` plus a
profiles file beside it.

The token store (default ``~/.config/mailoauth/tokens.json``, mode 0600) holds the
tokens under a key, the profile name: ``google``, ``microsoft`` or ``oauth2`` unless
``login --name`` says otherwise. The profiles file (``tokens.profiles.json`` next to
it, also 0600) holds what is needed to refresh them: token URL, client id, how the
client authenticates (client secret, or the path of its private key for
``private_key_jwt``), the scope asked for and the scope granted, and the username.
Library code can use the same store and key::

    provider = OAuth2TokenProvider(token_url, RefreshTokenGrant(refresh_token),
                                   client_id=..., store=FileTokenStore(path),
                                   store_key="google")

One view of the store: a credential that a library provider saved under its own key
(``{token_url}|{client_id}|{who}|{scope}``, see :mod:`mailoauth.tokens.oauth2`) has no
profile, yet every command that ``token show`` lists it for takes its key: the profile
is read from the key (:func:`profile_from_key`; no client secret: ``token import``
adds one), and :class:`LibraryKeyView` keeps the provider's shared refresh-token entry
and its lock in step, so that the command and the library never spend one rotating
refresh token twice.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from mailoauth._providers import vendor_of
from mailoauth._util.files import write_atomically
from mailoauth._util.jsonfile import json_object_member, read_json_file
from mailoauth.errors import ConfigurationError
from mailoauth.tokens.endpoint import AssertionFactory, ClientAuth
from mailoauth.tokens.grants import RefreshTokenGrant
from mailoauth.tokens.jwt import load_rsa_private_key, make_client_assertion
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.stores import (
    FileTokenStore,
    LockingTokenStore,
    StoredCredential,
    TokenStore,
)

__all__ = [
    "DEFAULT_STORE",
    "KEYRING_STORE",
    "ClientOptions",
    "LibraryKeyView",
    "Profile",
    "add_proxy_argument",
    "add_store_argument",
    "client_options",
    "library_view",
    "load_profiles",
    "private_key_assertion",
    "profile_client_options",
    "profile_from_key",
    "profiles_path",
    "provider_for",
    "save_profile",
    "stored_keys",
    "token_store",
]

#: The token store used when ``--store`` is not given (``~`` is expanded).
DEFAULT_STORE = "~/.config/mailoauth/tokens.json"


def add_proxy_argument(parser: argparse.ArgumentParser) -> None:
    """``--proxy URL``: the HTTP CONNECT or SOCKS5 proxy for the mail server and the
    token endpoint (``pip install 'mailoauth[proxy]'``)."""
    parser.add_argument(
        "--proxy",
        metavar="URL",
        help="reach the servers through this proxy: http://USER:PASSWORD@HOST:PORT (HTTP "
        "CONNECT) or socks5://USER:PASSWORD@HOST:PORT (needs pip install "
        "'mailoauth[proxy]'); the password is never printed",
    )


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="PATH",
        default=os.environ.get("MAILOAUTH_STORE", DEFAULT_STORE),
        help=f"token store file (default: $MAILOAUTH_STORE or {DEFAULT_STORE}; the "
        "profiles file sits next to it), or 'keyring' for the OS keyring (pip install "
        "'mailoauth[keyring]')",
    )


#: ``--store keyring``: credentials in the OS keyring (:class:`KeyringTokenStore`, the
#: ``keyring`` extra); the profiles stay in the file next to :data:`DEFAULT_STORE`.
KEYRING_STORE = "keyring"


def store_path(value: str) -> Path:
    """The token store file ``--store`` names (for ``keyring``: the default file, next
    to which the profiles are kept)."""
    return Path(DEFAULT_STORE if value == KEYRING_STORE else value).expanduser()


def token_store(value: str) -> TokenStore:
    """The store ``--store`` names: the OS keyring for ``keyring`` (raises
    ConfigurationError without the keyring package), else the file."""
    if value == KEYRING_STORE:
        from mailoauth.tokens.keyring_store import KeyringTokenStore

        return KeyringTokenStore()
    return FileTokenStore(store_path(value))


def profiles_path(store: Path) -> Path:
    """``tokens.json`` → ``tokens.profiles.json``, in the same directory."""
    return store.with_name(f"{store.stem}.profiles.json")


@dataclass(frozen=True)
class Profile:
    """How to refresh the credential stored under ``key``. The repr hides the secret."""

    key: str
    kind: str
    token_url: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None
    username: str | None = None
    authorization_url: str | None = None
    device_authorization_url: str | None = None
    client_auth: str = "post"
    private_key: str | None = None
    """Path of the PEM private key for ``client_auth="private_key_jwt"`` (not the key)."""
    key_id: str | None = None
    granted_scope: str | None = None
    revocation_url: str | None = None
    issuer: str | None = None

    @classmethod
    def from_json(cls, key: str, data: dict[str, Any]) -> Profile:
        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) and value else None

        token_url, client_id = text("token_url"), text("client_id")
        if token_url is None or client_id is None:
            raise ConfigurationError(f"profile {key!r} lacks token_url or client_id")
        return cls(
            key=key,
            kind=text("kind") or "oauth2",
            token_url=token_url,
            client_id=client_id,
            client_secret=text("client_secret"),
            scope=text("scope"),
            username=text("username"),
            authorization_url=text("authorization_url"),
            device_authorization_url=text("device_authorization_url"),
            client_auth=text("client_auth") or "post",
            private_key=text("private_key"),
            key_id=text("key_id"),
            granted_scope=text("granted_scope"),
            revocation_url=text("revocation_url"),
            issuer=text("issuer"),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["key"]
        if data["client_auth"] == "post":
            del data["client_auth"]  # the default: profiles from before read the same
        return {k: v for k, v in data.items() if v is not None}


def load_profiles(store: Path) -> dict[str, Profile]:
    """Every profile next to ``store``; empty if there is no profiles file."""
    path = profiles_path(store)
    doc = read_json_file(path, "profiles file")
    if doc is None:
        return {}
    profiles = json_object_member(doc, "profiles")
    if profiles is None:
        raise ConfigurationError(f"{str(path)!r} is not a mailoauth profiles file")
    return {
        key: Profile.from_json(key, value)
        for key, value in profiles.items()
        if isinstance(value, dict)
    }


def save_profile(store: Path, profile: Profile) -> None:
    """Add or replace ``profile``; the file is written atomically with mode 0600."""
    path = profiles_path(store)
    profiles = {key: p.to_json() for key, p in load_profiles(store).items()}
    profiles[profile.key] = profile.to_json()
    data = json.dumps({"version": 1, "profiles": profiles}, indent=2).encode()
    write_atomically(path, data)


def stored_keys(store: Path, tokens: TokenStore | None = None) -> list[str]:
    """Every key the store holds: the file's entries, or for a store that cannot list
    its entries (the keyring) the profiles' keys."""
    if tokens is not None and not isinstance(tokens, FileTokenStore):
        return sorted(load_profiles(store))
    creds = json_object_member(read_json_file(store, "token store"), "credentials")
    return sorted(creds) if creds is not None else []


#: A library provider's store key: ``{token_url}|{client_id}|{who}`` (its refresh-token
#: chain, shared by its providers of every scope) or that plus ``|{scope}``.
_LIBRARY_KEY_PARTS = (3, 4)


def _library_key(key: str) -> tuple[str, str, str | None] | None:
    """(token URL, client id, scope or None) of a library provider's key, else None."""
    parts = key.split("|")
    if len(parts) not in _LIBRARY_KEY_PARTS or "://" not in parts[0] or not parts[1]:
        return None
    scope = parts[3] if len(parts) == 4 else None
    return parts[0], parts[1], scope or None


def profile_from_key(key: str, credential: StoredCredential) -> Profile | None:
    """The profile of a credential a library provider saved under ``key`` (read from
    the key itself: token URL, client id, scope; no client secret), or None when the key
    is not a library provider's."""
    parsed = _library_key(key)
    if parsed is None:
        return None
    token_url, client_id, scope = parsed
    return Profile(
        key=key,
        kind=vendor_of(token_url) or "oauth2",
        token_url=token_url,
        client_id=client_id,
        scope=scope,
        granted_scope=credential.scope,
    )


class LibraryKeyView:
    """The store as a library provider sees its key ``key`` (with a scope): the newest
    refresh token is the one of the grant's shared entry (``key`` less the scope), every
    save updates that entry too, keeping the chain's ``origin``, and the lock is the
    grant's. Other keys pass through unchanged."""

    def __init__(self, inner: TokenStore, key: str) -> None:
        self.inner = inner
        self.key = key
        self.grant_key = key.rsplit("|", 1)[0]
        self._origin: str | None = None

    async def load(self, key: str) -> StoredCredential | None:
        stored = await self.inner.load(key)
        if key != self.key:
            return stored
        shared = await self.inner.load(self.grant_key)
        self._origin = (shared.origin if shared else None) or (stored.origin if stored else None)
        if shared is None or not shared.refresh_token:
            return stored
        if stored is None:
            return shared
        return dataclasses.replace(stored, refresh_token=shared.refresh_token, origin=self._origin)

    async def save(self, key: str, credential: StoredCredential) -> None:
        if key == self.key:
            credential = dataclasses.replace(credential, origin=self._origin or credential.origin)
            if credential.refresh_token:
                shared = StoredCredential(
                    refresh_token=credential.refresh_token, origin=credential.origin
                )
                await self.inner.save(self.grant_key, shared)
        await self.inner.save(key, credential)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """The lock a library provider of this grant takes (its grant key's)."""
        if not isinstance(self.inner, LockingTokenStore):
            yield
            return
        async with self.inner.lock(self.grant_key if key == self.key else key):
            yield

    def __repr__(self) -> str:
        return repr(self.inner)


def library_view(tokens: TokenStore, key: str) -> TokenStore:
    """``tokens`` as a library provider of ``key`` sees it (:class:`LibraryKeyView`) when
    ``key`` is a library provider's key with a scope, else ``tokens`` itself."""
    if len(key.split("|")) == 4 and _library_key(key) is not None:
        return LibraryKeyView(tokens, key)
    return tokens


async def load_credential(
    store: Path, key: str, *, tokens: TokenStore | None = None
) -> tuple[Profile, StoredCredential]:
    """The profile and stored tokens named ``key`` (read from ``tokens``, by default the
    file ``store``); for a credential a library provider saved, the profile its key
    tells (:func:`profile_from_key`). ConfigurationError naming the keys there are when
    it is missing."""
    profiles = load_profiles(store)
    tokens = tokens or FileTokenStore(store)
    credential = await library_view(tokens, key).load(key)
    profile = profiles.get(key)
    if profile is None and credential is not None:
        profile = profile_from_key(key, credential)
    if profile is None or credential is None:
        known = ", ".join(stored_keys(store, tokens)) or "none"
        raise ConfigurationError(
            f"no stored credential {key!r} in {str(store)!r} (stored: {known}); run "
            f"mailoauth login first (or mailoauth token import), or pass --store"
        )
    return profile, credential


class ClientOptions(TypedDict):
    """How a client authenticates: keyword arguments of the providers and endpoints."""

    client_secret: str | None
    client_assertion: AssertionFactory | None
    client_auth: ClientAuth


def private_key_assertion(client_id: str, path: str, key_id: str | None) -> AssertionFactory:
    """A ``private_key_jwt`` assertion factory signing with the PEM key at ``path``.

    Raises ConfigurationError when the file cannot be read or is not an RSA key (the
    key is checked now, not at the first request)."""
    try:
        pem = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the private key {path!r}: {exc.strerror or exc}"
        ) from exc
    load_rsa_private_key(pem)

    def assertion(audience: str, now: dt.datetime) -> str:
        return make_client_assertion(
            client_id=client_id,
            audience=audience,
            private_key=pem,
            certificate=None,
            now=now,
            key_id=key_id,
        )

    return assertion


def client_options(
    client_id: str,
    client_auth: str,
    client_secret: str | None,
    private_key: str | None,
    key_id: str | None = None,
) -> ClientOptions:
    """The client authentication options for ``client_auth`` (post, basic,
    private_key_jwt, none); ConfigurationError naming the missing option."""
    if client_auth == "private_key_jwt":
        if not private_key:
            raise ConfigurationError("--client-auth private_key_jwt needs --private-key PEM_FILE")
        return ClientOptions(
            client_secret=None,
            client_assertion=private_key_assertion(client_id, private_key, key_id),
            client_auth="private_key_jwt",
        )
    if client_auth == "basic" and not client_secret:
        raise ConfigurationError("--client-auth basic needs --client-secret")
    if client_auth not in ("post", "basic", "none"):
        raise ConfigurationError(f"unknown client authentication {client_auth!r}")
    method: ClientAuth = "basic" if client_auth == "basic" else "post"
    return ClientOptions(client_secret=client_secret, client_assertion=None, client_auth=method)


def profile_client_options(profile: Profile) -> ClientOptions:
    """:func:`client_options` for a saved profile."""
    return client_options(
        profile.client_id,
        profile.client_auth,
        profile.client_secret,
        profile.private_key,
        profile.key_id,
    )


def provider_for(
    profile: Profile,
    store: Path,
    refresh_token: str,
    *,
    tokens: TokenStore | None = None,
    proxy: str | None = None,
) -> OAuth2TokenProvider:
    """A provider refreshing ``refresh_token`` that keeps the store (``tokens``, by
    default the file ``store``) up to date; it authenticates as at login and asks for no
    more than was granted."""
    return OAuth2TokenProvider(
        profile.token_url,
        RefreshTokenGrant(refresh_token),
        client_id=profile.client_id,
        scope=profile.scope,
        granted_scope=profile.granted_scope,
        revocation_url=profile.revocation_url,
        store=library_view(tokens or FileTokenStore(store), profile.key),
        store_key=profile.key,
        proxy=proxy,
        **profile_client_options(profile),
    )
