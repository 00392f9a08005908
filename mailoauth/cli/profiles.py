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
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from mailoauth._util.files import write_atomically
from mailoauth._util.jsonfile import json_object_member, read_json_file
from mailoauth.errors import ConfigurationError
from mailoauth.tokens.endpoint import AssertionFactory, ClientAuth
from mailoauth.tokens.grants import RefreshTokenGrant
from mailoauth.tokens.jwt import load_rsa_private_key, make_client_assertion
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.stores import FileTokenStore, StoredCredential, TokenStore

__all__ = [
    "DEFAULT_STORE",
    "KEYRING_STORE",
    "ClientOptions",
    "Profile",
    "add_proxy_argument",
    "add_store_argument",
    "client_options",
    "load_profiles",
    "private_key_assertion",
    "profile_client_options",
    "profiles_path",
    "provider_for",
    "save_profile",
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


async def load_credential(
    store: Path, key: str, *, tokens: TokenStore | None = None
) -> tuple[Profile, StoredCredential]:
    """The profile and stored tokens named ``key`` (read from ``tokens``, by default the
    file ``store``); ConfigurationError naming the keys there are when it is missing."""
    profiles = load_profiles(store)
    credential = await (tokens or FileTokenStore(store)).load(key)
    if key not in profiles or credential is None:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigurationError(
            f"no stored credential {key!r} in {str(store)!r} (stored: {known}); run "
            f"mailoauth login first, or pass --store"
        )
    return profiles[key], credential


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
        store=tokens or FileTokenStore(store),
        store_key=profile.key,
        proxy=proxy,
        **profile_client_options(profile),
    )
