"""``mailoauth login google|microsoft|oauth2``: get a refresh token interactively.

The authorization-code flow with PKCE (S256) on a loopback redirect
(:mod:`mailoauth.tokens.authcode`, which this command drives with callbacks that print):
a one-shot HTTP server listens on ``127.0.0.1`` on a free port, the user signs in in a
browser, the browser is sent back to ``http://127.0.0.1:PORT/`` with the code, and the
code is exchanged at the token URL. Or, for headless machines, the device-code flow
(RFC 8628, :class:`~mailoauth.tokens.grants.DeviceCodeGrant`). Either way the
tokens are saved in the token store (see :mod:`mailoauth.cli.profiles`), with the scope
the server granted, which later refreshes ask for (RFC 6749 §6).

The client authenticates the same way on every endpoint (``--client-auth post``, the
default, ``basic`` or ``private_key_jwt`` with ``--private-key``). ``--auth-param
KEY=VALUE`` adds authorization parameters (``prompt``, ``login_hint``, ``domain_hint``,
``access_type``) over the presets: Google gets ``access_type=offline`` and
``prompt=consent`` (its refresh token comes only with them), Microsoft asks for
``offline_access``. ``login oauth2 --issuer URL`` discovers the endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from mailoauth._providers import (
    GOOGLE_AUTHORIZATION_URL,
    GOOGLE_MAIL_SCOPE,
    GOOGLE_TOKEN_URL,
    MS_AUTHORITY,
    MS_CLOUDS,
    MS_DELEGATED_SCOPES,
    MS_OFFLINE_ACCESS,
)
from mailoauth.cli.claims import decode_jwt
from mailoauth.cli.output import Printer, Timer, redact, relative_time
from mailoauth.cli.profiles import (
    ClientOptions,
    Profile,
    add_proxy_argument,
    add_store_argument,
    client_options,
    save_profile,
    store_path,
    token_store,
)
from mailoauth.errors import ConfigurationError, MailTimeoutError
from mailoauth.tokens import authcode
from mailoauth.tokens.access_token import AccessToken, utcnow
from mailoauth.tokens.authcode import LoopbackRedirect, RedirectResult
from mailoauth.tokens.discovery import discover
from mailoauth.tokens.endpoint import TokenEndpoint
from mailoauth.tokens.grants import DeviceCodeGrant
from mailoauth.tokens.microsoft import microsoft_endpoint
from mailoauth.tokens.oauth2 import OAuth2TokenProvider
from mailoauth.tokens.responses import DeviceAuthorization
from mailoauth.tokens.stores import StoredCredential

# LoopbackRedirect and RedirectResult moved to mailoauth.tokens.authcode (the library's
# authorization-code grant); they stay importable from here.
__all__ = ["LoopbackRedirect", "RedirectResult", "add_parser", "authorization_code_flow", "run"]

#: Seconds to wait for the browser to come back (or the device code to be entered).
DEFAULT_LOGIN_TIMEOUT = authcode.DEFAULT_AUTHORIZATION_TIMEOUT

#: Opens the authorization URL; tests replace it with a scripted browser.
open_browser: Callable[[str], object] = webbrowser.open


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "login",
        help="sign in interactively and save a refresh token",
        description=(
            "Sign in with the authorization-code flow and PKCE (a browser and a loopback "
            "redirect to 127.0.0.1) or the device-code flow (--device, for headless "
            "machines), and save the tokens in the token store under --name."
        ),
    )
    providers = parser.add_subparsers(title="providers", metavar="PROVIDER", required=True)

    google = providers.add_parser(
        "google",
        help=f"Gmail (scope {GOOGLE_MAIL_SCOPE})",
        description="Sign in to Google for Gmail's IMAP, POP3 and SMTP (needs a Desktop "
        "app OAuth client: its client id and secret).",
    )
    _common(google, "google", secret_required=True)
    google.set_defaults(
        handler=run,
        provider="google",
        default_authorization_url=GOOGLE_AUTHORIZATION_URL,
        default_token_url=GOOGLE_TOKEN_URL,
        default_scope=GOOGLE_MAIL_SCOPE,
        # A refresh token comes only with access_type=offline
        # (https://developers.google.com/identity/protocols/oauth2/web-server#offline),
        # and again after a first consent only with prompt=consent.
        extra_params={"access_type": "offline", "prompt": "consent"},
        device=False,
        device_authorization_url=None,
    )

    microsoft = providers.add_parser(
        "microsoft",
        help="Microsoft 365 / Outlook (IMAP, POP, SMTP delegated + offline_access)",
        description="Sign in to the Microsoft identity platform for Exchange Online's "
        "IMAP, POP3 and SMTP (an app registration with 'Mobile and desktop' redirect "
        "http://localhost, or public client flows on for --device).",
    )
    _common(microsoft, "microsoft", secret_required=False)
    microsoft.add_argument(
        "--tenant", default="organizations", help="tenant id or domain (default: organizations)"
    )
    microsoft.add_argument(
        "--authority",
        default=None,
        help=f"identity platform (default: the cloud's; {MS_AUTHORITY} for global)",
    )
    microsoft.add_argument(
        "--cloud",
        default="global",
        choices=sorted(MS_CLOUDS),
        help="Microsoft cloud: its sign-in authority and mail scopes (default: global)",
    )
    _device_arguments(microsoft)
    microsoft.set_defaults(
        handler=run,
        provider="microsoft",
        # offline_access asks for the refresh token
        # (https://learn.microsoft.com/en-us/entra/identity-platform/scopes-oidc#offline_access).
        default_scope=" ".join((*MS_DELEGATED_SCOPES, MS_OFFLINE_ACCESS)),
        extra_params={"prompt": "select_account"},
    )

    generic = providers.add_parser(
        "oauth2",
        help="any OAuth 2.0 server (endpoints and scope given explicitly)",
        description="Sign in to any OAuth 2.0 authorization server.",
    )
    _common(generic, "oauth2", secret_required=False, scope_required=True)
    generic.add_argument(
        "--issuer",
        help="the authorization server's issuer URL: its endpoints are discovered "
        "(/.well-known/openid-configuration or oauth-authorization-server)",
    )
    _device_arguments(generic)
    generic.set_defaults(handler=run, provider="oauth2", extra_params={})


def _common(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    secret_required: bool,
    scope_required: bool = False,
) -> None:
    parser.add_argument("--client-id", required=True)
    parser.add_argument(
        "--client-secret",
        required=secret_required,
        help="the OAuth client's secret (stored in the profiles file, mode 0600)",
    )
    parser.add_argument(
        "--scope",
        required=scope_required,
        help="space-separated scopes" + ("" if scope_required else " (default: the mail scopes)"),
    )
    parser.add_argument(
        "--client-auth",
        choices=("post", "basic", "private_key_jwt"),
        default="post",
        help="how the client authenticates on every endpoint: client secret in the form "
        "(post, the default), HTTP Basic, or a JWT signed with --private-key",
    )
    parser.add_argument(
        "--private-key",
        metavar="PEM_FILE",
        help="RSA private key for --client-auth private_key_jwt (its path is remembered)",
    )
    parser.add_argument("--key-id", help="the key's id (JWT 'kid') for private_key_jwt")
    parser.add_argument(
        "--auth-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra authorization parameter (prompt, login_hint, domain_hint, "
        "access_type, ...); repeatable; overrides the provider's presets",
    )
    parser.add_argument("--authorization-url", help="override the authorization endpoint")
    parser.add_argument("--token-url", help="override the token endpoint")
    parser.add_argument(
        "--name", default=name, help=f"key to save the credential under (default: {name})"
    )
    parser.add_argument("--username", help="the mailbox address, remembered for 'check'")
    parser.add_argument(
        "--no-browser", action="store_true", help="print the URL only; do not open a browser"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_LOGIN_TIMEOUT,
        help=f"seconds to wait for the sign-in (default: {DEFAULT_LOGIN_TIMEOUT:g})",
    )
    add_store_argument(parser)
    add_proxy_argument(parser)


def _device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", action="store_true", help="device-code flow (no browser on this machine)"
    )
    parser.add_argument("--device-authorization-url", help="override the device endpoint")


@dataclass(frozen=True)
class _Endpoints:
    authorization_url: str | None
    token_url: str
    device_authorization_url: str | None
    scope: str
    revocation_url: str | None = None


def _auth_params(args: argparse.Namespace) -> dict[str, str]:
    """The provider's preset authorization parameters with ``--auth-param`` over them."""
    params = dict(getattr(args, "extra_params", None) or {})
    for item in getattr(args, "auth_param", None) or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"--auth-param takes KEY=VALUE, not {item!r}")
        params[name.strip()] = value
    return params


async def _discover_endpoints(args: argparse.Namespace) -> str | None:
    """Fill the endpoints --issuer names (explicit URLs win); the revocation URL."""
    issuer = getattr(args, "issuer", None)
    if not issuer:
        return None
    metadata = await discover(issuer, proxy=args.proxy)
    args.authorization_url = args.authorization_url or metadata.authorization_endpoint
    args.token_url = args.token_url or metadata.token_endpoint
    args.device_authorization_url = (
        args.device_authorization_url or metadata.device_authorization_endpoint
    )
    return metadata.revocation_endpoint


def _endpoints(args: argparse.Namespace) -> _Endpoints:
    scope = args.scope or getattr(args, "default_scope", None)
    if getattr(args, "provider", None) == "microsoft":
        cloud = MS_CLOUDS[args.cloud]
        args.authority = args.authority or cloud.authority
        if not args.scope:
            scope = " ".join((*(cloud.delegated_scopes() or ()), MS_OFFLINE_ACCESS))
    if not scope:
        raise ConfigurationError("give --scope")
    if args.provider == "microsoft":
        return _Endpoints(
            args.authorization_url or microsoft_endpoint(args.authority, args.tenant, "authorize"),
            args.token_url or microsoft_endpoint(args.authority, args.tenant, "token"),
            args.device_authorization_url
            or microsoft_endpoint(args.authority, args.tenant, "devicecode"),
            scope,
        )
    authorization_url = args.authorization_url or getattr(args, "default_authorization_url", None)
    token_url = args.token_url or getattr(args, "default_token_url", None)
    if not token_url:
        raise ConfigurationError("give --token-url")
    if args.device and not args.device_authorization_url:
        raise ConfigurationError("--device needs --device-authorization-url")
    if not args.device and not authorization_url:
        raise ConfigurationError("give --authorization-url (or --device)")
    return _Endpoints(authorization_url, token_url, args.device_authorization_url, scope)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(login(args, Printer()))


async def login(args: argparse.Namespace, out: Printer) -> int:
    """Sign in, save the tokens and the profile; the exit status."""
    revocation_url = await _discover_endpoints(args)
    endpoints = _endpoints(args)
    client = client_options(
        args.client_id, args.client_auth, args.client_secret, args.private_key, args.key_id
    )
    extra_params = _auth_params(args)
    store = store_path(args.store)
    timer = Timer()
    if args.device:
        token = await device_code_flow(
            token_url=endpoints.token_url,
            device_authorization_url=endpoints.device_authorization_url or "",
            client_id=args.client_id,
            client_secret=args.client_secret,
            scope=endpoints.scope,
            out=out,
            timeout=args.timeout,
            client=client,
            proxy=args.proxy,
        )
    else:
        token = await authorization_code_flow(
            authorization_url=endpoints.authorization_url or "",
            token_url=endpoints.token_url,
            client_id=args.client_id,
            client_secret=args.client_secret,
            scope=endpoints.scope,
            extra_params=extra_params,
            out=out,
            timeout=args.timeout,
            browser=None if args.no_browser else open_browser,
            client=client,
            proxy=args.proxy,
        )
    expiry = (
        relative_time((token.expires_at - utcnow()).total_seconds())
        if token.expires_at
        else "at an unknown time"
    )
    out.ok("TOKEN", f"access token {redact(token.value)} (expires {expiry})", timer)
    if not token.refresh_token:
        out.warn(
            "the server sent no refresh token: the credential stops working when this "
            "access token expires"
            + (" (request offline_access)" if args.provider == "microsoft" else "")
        )
    username = args.username or _username_from(token)
    await token_store(args.store).save(args.name, StoredCredential.from_token(token))
    save_profile(
        store,
        Profile(
            key=args.name,
            kind=args.provider,
            token_url=endpoints.token_url,
            client_id=args.client_id,
            client_secret=args.client_secret,
            scope=endpoints.scope,
            username=username,
            authorization_url=endpoints.authorization_url,
            device_authorization_url=endpoints.device_authorization_url if args.device else None,
            client_auth=args.client_auth,
            private_key=args.private_key,
            key_id=args.key_id,
            granted_scope=token.scope,
            revocation_url=revocation_url,
            issuer=getattr(args, "issuer", None),
        ),
    )
    if token.scope and set(token.scope.split()) != set(endpoints.scope.split()):
        out.detail(f"granted scope: {token.scope} (asked for {endpoints.scope})")
    out.ok(
        "SAVED",
        f"refresh token {redact(token.refresh_token)} as {args.name!r} in {store} (mode 0600)",
    )
    user_flag = "" if username else " --user YOU@EXAMPLE.COM"
    out.detail(f"next: mailoauth check imap HOST --store-key {args.name}{user_flag}")
    return 0


def _username_from(token: AccessToken) -> str | None:
    decoded = decode_jwt(token.value)
    if decoded is None:
        return None
    for name in ("upn", "preferred_username", "email", "unique_name"):
        value = decoded.claims.get(name)
        if isinstance(value, str) and "@" in value:
            return value
    return None


# -- the authorization-code flow -------------------------------------------------------


async def authorization_code_flow(
    *,
    authorization_url: str,
    token_url: str,
    client_id: str,
    client_secret: str | None,
    scope: str,
    extra_params: dict[str, str],
    out: Printer,
    timeout: float,
    browser: Callable[[str], object] | None,
    client: ClientOptions | None = None,
    proxy: str | None = None,
) -> AccessToken:
    """Run :func:`mailoauth.tokens.authcode.authorization_code_flow`, printing the URL
    and opening ``browser`` on it; the token.

    ``client`` says how the client authenticates at the token endpoint (default: the
    ``client_secret`` in the form). Raises :class:`MailTimeoutError` when the browser
    does not come back in time, :class:`PermanentTokenError` when the server reports an
    error, the state does not match, or the code is refused.
    """

    def open_url(url: str) -> None:
        out.line("Open this URL in a browser and sign in:")
        out.line(f"  {url}")
        if browser is not None:
            try:
                browser(url)
            except Exception as exc:  # a missing browser must not end the login
                out.warn(f"could not open a browser ({type(exc).__name__}); open the URL")

    waited_at: list[str] = []

    def waiting(redirect_uri: str) -> None:
        waited_at.append(redirect_uri)
        with out.waiting(f"waiting for the sign-in to come back to {redirect_uri}"):
            pass

    if client is None:
        client = client_options(client_id, "post", client_secret, None)
    endpoint = TokenEndpoint(token_url, client_id=client_id, proxy=proxy, **client)
    try:
        return await authcode.authorization_code_flow(
            endpoint,
            authorization_url,
            scope=scope,
            extra_params=extra_params,
            on_open_url=open_url,
            on_waiting=waiting,
            timeout=timeout,
        )
    except MailTimeoutError as exc:
        if not waited_at:
            raise
        raise MailTimeoutError(
            f"no sign-in came back to {waited_at[0]} within {timeout:g} s; run login again "
            "(--timeout to wait longer)"
        ) from exc
    finally:
        await endpoint.aclose()


# -- the device-code flow --------------------------------------------------------------


async def device_code_flow(
    *,
    token_url: str,
    device_authorization_url: str,
    client_id: str,
    client_secret: str | None,
    scope: str,
    out: Printer,
    timeout: float,
    client: ClientOptions | None = None,
    proxy: str | None = None,
) -> AccessToken:
    """Run the device-code flow (RFC 8628) through :class:`DeviceCodeGrant`; the client
    authenticates as ``client`` says on the device and token endpoints alike."""

    def prompt(auth: DeviceAuthorization) -> None:
        # Only now, the device request having succeeded, is there a code to wait for.
        out.line(auth.message)
        out.detail(f"code {auth.user_code}, valid {relative_time(auth.expires_in)}")
        with out.waiting("waiting for the code to be entered"):
            pass

    if client is None:
        client = client_options(client_id, "post", client_secret, None)
    provider = OAuth2TokenProvider(
        token_url,
        DeviceCodeGrant(device_authorization_url, on_prompt=prompt),
        client_id=client_id,
        scope=scope,
        proxy=proxy,
        **client,
    )
    try:
        try:
            with anyio.fail_after(timeout):
                return await provider.get_access_token()
        except TimeoutError:
            raise MailTimeoutError(
                f"nobody entered the code within {timeout:g} s; run login again"
            ) from None
    finally:
        await provider.aclose()
