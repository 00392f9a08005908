"""``mailoauth token show|refresh|import``: what the token store holds, refresh now,
and bring in a refresh token obtained elsewhere.

``show`` prints each credential with every secret redacted (six characters and an
ellipsis): token URL, client id, user, scopes, expiry, and for a JWT access token its
header and claims, decoded without verification (the signature is never shown).
``refresh`` refreshes through the provider machinery and saves the rotated refresh
token. ``import`` saves a refresh token (read from standard input or an environment
variable, never from the command line, where other users see it) with the profile that
``refresh`` and ``check --store-key`` need; given the key of a credential a library
provider saved, it adds what the key cannot tell (a client secret, the user).

Every key ``show`` lists works with ``refresh`` and ``check --store-key``, those of
library providers included (see :mod:`mailoauth.cli.profiles`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import sys
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Any

import anyio.to_thread

from mailoauth._providers import (
    GOOGLE_MAIL_SCOPE,
    GOOGLE_TOKEN_URL,
    MS_AUTHORITY,
    MS_DELEGATED_SCOPES,
    MS_OFFLINE_ACCESS,
)
from mailoauth.cli import diagnose
from mailoauth.cli.claims import decode_jwt
from mailoauth.cli.output import Printer, Timer, print_diagnosis, redact, relative_time
from mailoauth.cli.profiles import (
    Profile,
    add_proxy_argument,
    add_store_argument,
    library_view,
    load_credential,
    load_profiles,
    profile_client_options,
    profile_from_key,
    save_profile,
    store_path,
    stored_keys,
    token_store,
)
from mailoauth.errors import ConfigurationError, MailOAuthError
from mailoauth.tokens.access_token import utcnow
from mailoauth.tokens.grants import RefreshTokenGrant
from mailoauth.tokens.microsoft import microsoft_endpoint
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.stores import (
    FileTokenStore,
    LockingTokenStore,
    StoredCredential,
    TokenStore,
)

__all__ = ["add_parser", "import_credential", "run_import", "run_refresh", "run_show"]

#: Claims printed first, in this order; the others follow.
_CLAIM_ORDER = (
    "aud", "scp", "scope", "roles", "upn", "preferred_username", "email", "sub", "tid",
    "appid", "azp", "iss", "exp", "iat", "nbf",
)  # fmt: skip
_TIME_CLAIMS = frozenset({"exp", "iat", "nbf", "auth_time"})


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "token",
        help="show the stored tokens (redacted) or refresh them now",
        description="Inspect or refresh the credentials in the token store.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="what is stored: expiry, scopes, JWT claims; secrets redacted",
        description="Print each stored credential (or only KEY) with secrets redacted; "
        "a JWT access token's header and claims are decoded without verification.",
    )
    show.add_argument("key", nargs="?", help="only this credential")
    add_store_argument(show)
    show.set_defaults(handler=run_show)
    refresh = actions.add_parser(
        "refresh",
        help="refresh a stored credential now and save the rotated refresh token",
        description="Use the stored refresh token now; save the new access token and "
        "the new refresh token if the server rotated it.",
    )
    refresh.add_argument("key", nargs="?", help="the credential (default: the only one)")
    add_store_argument(refresh)
    add_proxy_argument(refresh)
    refresh.set_defaults(handler=run_refresh)
    _add_import_parser(actions)


def _add_import_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "import",
        help="save a refresh token obtained elsewhere, for refresh and check --store-key",
        description="Save a refresh token under KEY with what is needed to use it (token "
        "URL, client id, scope, user). The refresh token is read from standard input "
        "(one line) or from the environment variable --refresh-token-env names, never "
        "from the command line. For a KEY that a library provider saved (token show "
        "lists it), the token URL, client id and scope come from the key and the stored "
        "refresh token is kept unless a new one is given.",
        epilog="example: mailoauth token import work --provider google --client-id ID "
        "--client-secret-env GOOGLE_SECRET --username me@gmail.com < refresh-token.txt",
    )
    parser.add_argument("key", metavar="KEY", help="the name to save it under")
    parser.add_argument(
        "--provider",
        choices=("google", "microsoft", "oauth2"),
        help="google and microsoft know their token URL and mail scopes (default: "
        "oauth2, which needs --token-url and --scope)",
    )
    parser.add_argument("--client-id", help="the OAuth client (app) the token was issued to")
    parser.add_argument(
        "--client-secret-env",
        metavar="VAR",
        help="the environment variable holding the client secret (confidential clients)",
    )
    parser.add_argument(
        "--refresh-token-env",
        metavar="VAR",
        help="the environment variable holding the refresh token (default: standard input)",
    )
    parser.add_argument("--token-url", help="the token endpoint (default: the provider's)")
    parser.add_argument(
        "--tenant", default="organizations", help="Microsoft tenant (default: organizations)"
    )
    parser.add_argument("--scope", help="space-separated scopes (default: the mail scopes)")
    parser.add_argument("--username", help="the mailbox address, remembered for 'check'")
    add_store_argument(parser)
    parser.set_defaults(handler=run_import)


def run_show(args: argparse.Namespace) -> int:
    tokens = token_store(args.store)
    return asyncio.run(show(store_path(args.store), args.key, Printer(), tokens=tokens))


def run_refresh(args: argparse.Namespace) -> int:
    return asyncio.run(
        refresh(
            store_path(args.store),
            args.key,
            Printer(),
            proxy=args.proxy,
            tokens=token_store(args.store),
        )
    )


async def show(
    store: Path, only: str | None, out: Printer, *, tokens: TokenStore | None = None
) -> int:
    """Print the credentials in ``store`` (or only ``only``; read from ``tokens`` when
    given, e.g. the keyring, whose keys are the profiles'), secrets redacted."""
    profiles = load_profiles(store)
    # A keyring cannot list its entries: the profiles name them.
    keys = await anyio.to_thread.run_sync(stored_keys, store, tokens)
    if only is not None:
        if only not in keys:
            raise ConfigurationError(
                f"no credential {only!r} in {str(store)!r} (stored: {', '.join(keys) or 'none'})"
            )
        keys = [only]
    if not keys:
        out.line(
            f"no credentials in {store}; sign in with: mailoauth login google|microsoft|oauth2"
        )
        return 0
    file_backed = tokens is None or isinstance(tokens, FileTokenStore)
    out.line(f"token store {store}" if file_backed else f"token store {tokens!r}")
    file_store = tokens or FileTokenStore(store)
    for key in keys:
        credential = await file_store.load(key)
        if credential is not None:
            _show_one(out, key, profiles.get(key), credential)
    return 0


def _field(out: Printer, name: str, value: object) -> None:
    out.line(f"  {name:<15} {value}")


def _when(moment: dt.datetime | None) -> str:
    if moment is None:
        return "unknown"
    relative = relative_time((moment - utcnow()).total_seconds())
    return f"{moment.isoformat(timespec='seconds')} ({relative})"


def _show_one(
    out: Printer, key: str, profile: Profile | None, credential: StoredCredential
) -> None:
    out.line()
    out.line(key)
    if profile is not None:
        _field(out, "provider", profile.kind)
        _field(out, "token URL", profile.token_url)
        _field(out, "client id", profile.client_id)
        _field(out, "client secret", "stored (not shown)" if profile.client_secret else "none")
        _field(out, "client auth", profile.client_auth)
        _field(out, "user", profile.username or "unknown")
    elif (derived := profile_from_key(key, credential)) is not None:
        _field(out, "profile", "none: saved by a library provider, read from its key")
        _field(out, "token URL", derived.token_url)
        _field(out, "client id", derived.client_id)
        _field(out, "client secret", "none stored (add one: mailoauth token import)")
    else:
        _field(out, "profile", "none (saved by a library provider, not by login)")
    _field(out, "refresh token", redact(credential.refresh_token))
    _field(out, "access token", redact(credential.access_token))
    state = ""
    if credential.expires_at is not None:
        state = " (expired)" if credential.expires_at <= utcnow() else ""
    _field(out, "expires", _when(credential.expires_at) + state)
    _field(out, "scopes", credential.scope or (profile.scope if profile else None) or "unknown")
    decoded = decode_jwt(credential.access_token or "")
    if decoded is None:
        if credential.access_token:
            _field(out, "format", "opaque (not a JWT)")
        return
    header = ", ".join(f"{k}={v}" for k, v in decoded.header.items())
    _field(out, "JWT header", header)
    out.line("  JWT claims (unverified; signature not shown):")
    claims = dict(decoded.claims)
    ordered = [c for c in _CLAIM_ORDER if c in claims] + sorted(
        c for c in claims if c not in _CLAIM_ORDER
    )
    for name in ordered:
        out.line(f"    {name:<18} {_claim_text(name, claims[name])}")
    for protocol in ("imap", "pop3", "smtp"):
        for warning in diagnose.preflight(protocol, "", claims):
            out.warn(f"{protocol.upper()}: {warning}")


def _claim_text(name: str, value: Any) -> str:
    if name in _TIME_CLAIMS and isinstance(value, (int, float)):
        return _when(dt.datetime.fromtimestamp(value, dt.timezone.utc))
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


async def refresh(
    store: Path,
    key: str | None,
    out: Printer,
    *,
    proxy: str | None = None,
    tokens: TokenStore | None = None,
) -> int:
    """Refresh ``key`` now (under the store's lock) and save the result in ``tokens``
    (default: the file ``store``); the token endpoint is reached through ``proxy`` when
    given."""
    if key is None:
        keys = sorted(load_profiles(store)) or await anyio.to_thread.run_sync(
            stored_keys, store, tokens
        )
        if len(keys) != 1:
            raise ConfigurationError(
                f"name the credential to refresh (stored: {', '.join(keys) or 'none'})"
            )
        key = keys[0]
    # A library provider's key: its shared refresh-token entry and lock kept in step.
    file_store = library_view(tokens or FileTokenStore(store), key)
    lock: AbstractAsyncContextManager[object] = (
        file_store.lock(key) if isinstance(file_store, LockingTokenStore) else nullcontext()
    )
    async with lock:
        profile, credential = await load_credential(store, key, tokens=file_store)
        if not credential.refresh_token:
            raise ConfigurationError(
                f"the credential {key!r} has no refresh token to refresh with; sign in "
                "again with mailoauth login"
                + (" (request offline_access)" if profile.kind == "microsoft" else "")
            )
        # No store on the provider: a stored access token that is still fresh would be
        # handed back; here the point is a new one. The lock above keeps other
        # processes from spending the same refresh token meanwhile.
        provider = OAuth2TokenProvider(
            profile.token_url,
            RefreshTokenGrant(credential.refresh_token),
            client_id=profile.client_id,
            scope=profile.scope,
            # RFC 6749 §6: ask for no more than the server granted.
            granted_scope=credential.scope or profile.granted_scope,
            proxy=proxy,
            **profile_client_options(profile),
        )
        timer = Timer()
        try:
            token = await provider.get_access_token()
        except MailOAuthError as exc:
            out.fail("TOKEN", diagnose.for_the_command(str(exc)), timer)
            situation = diagnose.situation_from_error(
                exc,
                diagnose.Situation(
                    protocol="token", token_url=profile.token_url, has_refresh_token=True
                ),
            )
            print_diagnosis(out, diagnose.diagnose(situation))
            return 1
        finally:
            await provider.aclose()
        newest = provider.current_refresh_token or credential.refresh_token
        saved = StoredCredential.from_token(token, refresh_token=newest)
        if saved.scope is None and provider.granted_scope:
            saved = dataclasses.replace(saved, scope=provider.granted_scope)
        await file_store.save(key, saved)
    expiry = _when(token.expires_at)
    out.ok(
        "TOKEN", f"refreshed {key!r}: access token {redact(token.value)}, expires {expiry}", timer
    )
    if newest != credential.refresh_token:
        out.detail(
            f"the server rotated the refresh token: {redact(credential.refresh_token)} → "
            f"{redact(newest)} (saved)"
        )
    else:
        out.detail("refresh token unchanged")
    return 0


def run_import(args: argparse.Namespace) -> int:
    refresh_token = _secret_input(args.refresh_token_env, "refresh token")
    client_secret = _secret_input(args.client_secret_env, "client secret", stdin=False)
    return asyncio.run(
        import_credential(
            store_path(args.store),
            args.key,
            Printer(),
            tokens=token_store(args.store),
            refresh_token=refresh_token,
            client_secret=client_secret,
            provider=args.provider,
            client_id=args.client_id,
            token_url=args.token_url,
            tenant=args.tenant,
            scope=args.scope,
            username=args.username,
        )
    )


def _secret_input(variable: str | None, what: str, *, stdin: bool = True) -> str | None:
    """A secret from the environment variable ``variable``, else (``stdin``) the first
    line of standard input when it is not a terminal; None when neither gives one."""
    if variable:
        value = os.environ.get(variable, "").strip()
        if not value:
            raise ConfigurationError(
                f"the environment variable {variable} holding the {what} is unset or empty"
            )
        return value
    if stdin and not sys.stdin.isatty():
        return sys.stdin.readline().strip() or None
    return None


def _provider_defaults(provider: str, tenant: str) -> tuple[str | None, str | None]:
    """(token URL, scope) a provider knows."""
    if provider == "google":
        return GOOGLE_TOKEN_URL, GOOGLE_MAIL_SCOPE
    if provider == "microsoft":
        return (
            microsoft_endpoint(MS_AUTHORITY, tenant),
            " ".join((*MS_DELEGATED_SCOPES, MS_OFFLINE_ACCESS)),
        )
    return None, None


async def import_credential(
    store: Path,
    key: str,
    out: Printer,
    *,
    tokens: TokenStore | None = None,
    refresh_token: str | None,
    client_secret: str | None = None,
    provider: str | None = None,
    client_id: str | None = None,
    token_url: str | None = None,
    tenant: str = "organizations",
    scope: str | None = None,
    username: str | None = None,
) -> int:
    """Save ``refresh_token`` (or keep the one stored under ``key``) with its profile.

    Options not given come from an existing profile of ``key``, then from ``key`` itself
    when a library provider saved it, then from ``provider``'s defaults. Raises
    ConfigurationError for a missing refresh token, client id or token URL."""
    tokens = tokens or FileTokenStore(store)
    existing = await library_view(tokens, key).load(key)
    known = load_profiles(store).get(key)
    if known is None and existing is not None:
        known = profile_from_key(key, existing)
    kind = provider or (known.kind if known else "oauth2")
    default_url, default_scope = _provider_defaults(kind, tenant)
    token_url = token_url or (known.token_url if known else None) or default_url
    client_id = client_id or (known.client_id if known else None)
    if refresh_token is None and (existing is None or not existing.refresh_token):
        raise ConfigurationError(
            f"no refresh token to import as {key!r}: give it on standard input (one line) "
            "or name the environment variable that holds it with --refresh-token-env"
        )
    if not client_id:
        raise ConfigurationError("give --client-id: the OAuth client the token was issued to")
    if not token_url:
        raise ConfigurationError("give --token-url (or --provider google|microsoft)")
    profile = Profile(
        key=key,
        kind=kind,
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret or (known.client_secret if known else None),
        scope=scope or (known.scope if known else None) or default_scope,
        username=username or (known.username if known else None),
        granted_scope=known.granted_scope if known else None,
    )
    if refresh_token is not None:
        saved = StoredCredential(refresh_token=refresh_token)
        await library_view(tokens, key).save(key, saved)
        what = f"refresh token {redact(refresh_token)}"
    else:
        what = "the stored refresh token"
    save_profile(store, profile)
    out.ok("SAVED", f"{what} as {key!r} in {store}, with its profile (mode 0600)")
    out.detail(f"next: mailoauth token refresh {key!r} (checks it now)")
    return 0
