"""``mailoauth check smtp|imap|pop3 HOST``: connect, authenticate, report each step.

Steps, each with its time: TCP connect, TLS (implicit or STARTTLS, version and
cipher), capabilities (SASL mechanisms offered), token (obtained, expiry, claims and
pre-flight warnings), authentication, and one cheap operation (SMTP NOOP, IMAP SELECT
INBOX, POP3 STAT). On failure, the rules of :mod:`mailoauth.cli.diagnose` explain it.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mailoauth._core.proxy import ProxyDialer
from mailoauth._core.settings import ConnectionSettings
from mailoauth._providers import MS_CLOUDS
from mailoauth.cli import diagnose
from mailoauth.cli.claims import claim_list, decode_jwt
from mailoauth.cli.output import Printer, Timer, print_diagnosis, redact, relative_time
from mailoauth.cli.probe import probe
from mailoauth.cli.profiles import (
    add_proxy_argument,
    add_store_argument,
    load_credential,
    provider_for,
    store_path,
    token_store,
)
from mailoauth.errors import (
    AuthenticationError,
    ConfigurationError,
    MailOAuthError,
    TLSError,
    TokenExpiredError,
)
from mailoauth.imap.client import ImapClient
from mailoauth.pop3.client import Pop3Client
from mailoauth.security import SecurityOptions, create_ssl_context, plan_transport
from mailoauth.smtp import SmtpClient
from mailoauth.tokens.access_token import AccessToken, TokenProvider, utcnow

__all__ = ["add_parser", "run"]

DEFAULT_TIMEOUT = 15.0
#: Port per protocol for (implicit TLS, STARTTLS or plain).
DEFAULT_PORTS = {"smtp": (465, 587), "imap": (993, 143), "pop3": (995, 110)}
SECURITY = {
    "auto": SecurityOptions.AUTO,
    "ssl": SecurityOptions.SSL_IMPLICIT,
    "starttls": SecurityOptions.SSL_EXPLICIT,
    "none": SecurityOptions.NONE,
}
_CLAIMS_SHOWN = ("aud", "scp", "roles", "upn", "preferred_username", "tid", "appid")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="connect to a mail server, authenticate, and diagnose what fails",
        description=(
            "Connect to HOST, set up TLS, read the capabilities, get the token, "
            "authenticate and run one cheap command, printing each step with its time. "
            "On failure, explain the likely cause (scope, audience, SMTP AUTH disabled, "
            "Exchange service principal, Google's 7-day testing tokens, CA, ...)."
        ),
        epilog=(
            "examples: mailoauth check imap outlook.office365.com --store-key microsoft; "
            "mailoauth check smtp smtp.gmail.com --user me@gmail.com --token-file tok.txt"
        ),
    )
    parser.add_argument("protocol", choices=("smtp", "imap", "pop3"))
    parser.add_argument(
        "host", nargs="?", help="the mail server (default with --cloud: that cloud's)"
    )
    parser.add_argument(
        "--cloud",
        choices=sorted(MS_CLOUDS),
        help="a Microsoft cloud: HOST defaults to its Exchange Online host for PROTOCOL",
    )
    parser.add_argument("--port", type=int, help="default: 465/587, 993/143, 995/110")
    parser.add_argument(
        "--security",
        choices=tuple(SECURITY),
        default="auto",
        help="auto (default: implicit TLS on 465/993/995, else STARTTLS), ssl, "
        "starttls, or none (sends the token in plaintext: test servers only)",
    )
    parser.add_argument(
        "--user",
        help="the account to log in as, whose token it is (default: the profile's)",
    )
    parser.add_argument(
        "--mailbox",
        metavar="ADDRESS",
        help="open this shared or delegated mailbox with --user's token (IMAP/POP3: the "
        "SASL user is ADDRESS, and --user needs FullAccess on it; SMTP logs in as --user, "
        "and sending as ADDRESS needs Send As)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--store-key", metavar="KEY", help="a credential saved by 'mailoauth login'"
    )
    source.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding an access token ('-' reads standard input)",
    )
    source.add_argument(
        "--token",
        metavar="TOKEN",
        help="an access token (visible to other users in the process list; prefer --token-file)",
    )
    add_store_argument(parser)
    add_proxy_argument(parser)
    parser.add_argument("--mechanism", choices=("XOAUTH2", "OAUTHBEARER"))
    parser.add_argument("--cafile", metavar="PATH", help="trust this CA too (private CAs)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per network wait"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not args.host:
        args.host = _cloud_host(args.protocol, args.cloud)
    args.token_value = _read_token_argument(args)
    return asyncio.run(check(args, Printer()))


def _cloud_host(protocol: str, cloud: str | None) -> str:
    """The host of ``protocol`` in Microsoft's ``cloud``; ConfigurationError without a
    cloud, or where Microsoft does not document one."""
    if cloud is None:
        raise ConfigurationError("give HOST, or --cloud for a Microsoft cloud's host")
    host = getattr(MS_CLOUDS[cloud], f"{protocol}_host")
    if host is None:
        raise ConfigurationError(
            f"Microsoft documents no {protocol} host for the {cloud!r} cloud: give HOST"
        )
    return str(host)


def _read_token_argument(args: argparse.Namespace) -> str:
    if args.token_file == "-":
        return sys.stdin.readline().strip()
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    return str(args.token or "").strip()


@dataclass
class _Source:
    token: AccessToken | TokenProvider
    username: str | None
    token_url: str
    has_refresh_token: bool | None


async def _token_source(args: argparse.Namespace) -> _Source:
    if args.store_key:
        store = store_path(args.store)
        tokens = token_store(args.store)
        profile, credential = await load_credential(store, args.store_key, tokens=tokens)
        if credential.refresh_token:
            provider: AccessToken | TokenProvider = provider_for(
                profile, store, credential.refresh_token, tokens=tokens, proxy=args.proxy
            )
        else:
            stored = credential.to_access_token()
            if stored is None:
                raise ConfigurationError(f"the credential {args.store_key!r} holds no token")
            provider = stored
        return _Source(
            provider, profile.username, profile.token_url, credential.refresh_token is not None
        )
    value: str = args.token_value
    if not value:
        raise ConfigurationError("the access token is empty")
    return _Source(AccessToken(value), None, "", None)


def _make_client(
    protocol: str,
    args: argparse.Namespace,
    port: int,
    username: str,
    token: AccessToken | TokenProvider,
    security: SecurityOptions,
    ctx: Any,
) -> SmtpClient | ImapClient | Pop3Client:
    cls: type[SmtpClient] | type[ImapClient] | type[Pop3Client] = {
        "smtp": SmtpClient,
        "imap": ImapClient,
        "pop3": Pop3Client,
    }[protocol]
    settings = ConnectionSettings(
        args.host,
        port,
        security,
        ssl_context=ctx,
        timeout=args.timeout,
        mechanism=args.mechanism,
        allow_insecure_auth=security is SecurityOptions.NONE,
        proxy=args.proxy,
    )
    return cls.from_settings(settings, username, token)


async def check(args: argparse.Namespace, out: Printer) -> int:
    """Run the check; 0 when every step passed, 1 after a diagnosed failure."""
    protocol: str = args.protocol
    security = SECURITY[args.security]
    implicit_port, plain_port = DEFAULT_PORTS[protocol]
    port: int = args.port or (implicit_port if args.security == "ssl" else plain_port)
    if args.port is None and args.security == "auto":
        port = implicit_port if protocol != "smtp" else plain_port
    plan = plan_transport(security, port, allow_insecure_auth=security is SecurityOptions.NONE)
    ctx = create_ssl_context(cafile=args.cafile)
    situation = diagnose.Situation(protocol=protocol, host=args.host, security=args.security)
    out.line(f"Checking {protocol.upper()} at {args.host}:{port}")
    source: _Source | None = None
    step = "CONNECT"

    def on_step(label: str, text: str, timer: Timer) -> None:
        nonlocal step
        out.ok(label, text, timer)
        step = {"CONNECT": "TLS" if plan.encrypted else "CAPS", "TLS": "CAPS"}.get(label, label)

    try:
        result = await probe(
            protocol,
            args.host,
            port,
            implicit_tls=plan.implicit_tls,
            starttls=plan.starttls,
            ssl_context=ctx,
            timeout=args.timeout,
            on_step=on_step,
            dialer=ProxyDialer(args.proxy) if args.proxy else None,
        )
        # The greeting names Exchange or Gmail behind a host name of one's own.
        situation = replace(situation, greeting=result.greeting)
        if not plan.encrypted:
            out.warn("no TLS: the token will cross the network in plaintext")
        if result.mechanisms and not {"XOAUTH2", "OAUTHBEARER"} & set(result.mechanisms):
            out.warn("the server offers neither XOAUTH2 nor OAUTHBEARER here")

        step = "TOKEN"
        timer = Timer()
        source = await _token_source(args)
        account = args.user or source.username
        mailbox: str | None = args.mailbox
        # IMAP and POP3 open a shared mailbox by naming it as the SASL user, with the
        # delegate's token; SMTP logs in as the delegate and sends as the shared address.
        username = mailbox if mailbox and protocol != "smtp" else account
        if not username:
            raise ConfigurationError(
                f"give --user: the stored credential {args.store_key!r} does not name the mailbox"
                if args.store_key
                else "give --user: the account to log in as (a token does not say whose it is)"
            )
        situation = replace(
            situation,
            username=username,
            token_url=source.token_url,
            has_refresh_token=source.has_refresh_token,
        )
        token = (
            source.token
            if isinstance(source.token, AccessToken)
            else await source.token.get_access_token()
        )
        claims = _report_token(out, token, timer, source)
        situation = replace(situation, claims=claims)
        for warning in diagnose.preflight(protocol, account or "", claims):
            out.warn(warning)
        if mailbox:
            out.detail(_shared_mailbox_note(protocol, mailbox, account))
        if token.expires_at is not None and token.is_expired():
            ago = relative_time((token.expires_at - utcnow()).total_seconds())
            raise TokenExpiredError(f"the access token expired {ago}")

        step = "AUTH"
        timer = Timer()
        client = _make_client(protocol, args, port, username, source.token, security, ctx)
        async with client:
            out.ok(
                "AUTH",
                f"authenticated as {username} with {client.mechanism_used} (a new session: "
                f"connect, TLS, AUTH)",
                timer,
            )
            step = "OP"
            timer = Timer()
            if isinstance(client, ImapClient):
                info = await client.select("INBOX")
                text = f"SELECT INBOX: {info.exists} messages"
            elif isinstance(client, Pop3Client):
                stat = await client.stat()
                text = f"STAT: {stat.count} messages, {stat.size} bytes"
            else:
                await client.noop()
                text = "NOOP accepted"
            out.ok(step, text, timer)
    except (MailOAuthError, OSError) as exc:
        situation = diagnose.situation_from_error(exc, situation)
        if _hostname_mismatch(exc):
            names = await _certificate_names(args, port, plan.implicit_tls, plan.starttls)
            situation = replace(situation, certificate_names=tuple(names))
        _report_failure(out, step, exc, situation)
        return 1
    finally:
        if source is not None and not isinstance(source.token, AccessToken):
            aclose = getattr(source.token, "aclose", None)
            if aclose is not None:
                await aclose()
    out.line(f"{out.ok_mark} all steps passed")
    return 0


def _hostname_mismatch(exc: BaseException) -> bool:
    cause = exc.__cause__
    return (
        isinstance(exc, TLSError)
        and isinstance(cause, ssl.SSLCertVerificationError)
        and (cause.verify_code == _X509_V_ERR_HOSTNAME_MISMATCH)
    )


#: OpenSSL's verify code for a trusted certificate that does not hold the host name.
_X509_V_ERR_HOSTNAME_MISMATCH = 62


async def _certificate_names(
    args: argparse.Namespace, port: int, implicit_tls: bool, starttls: bool
) -> list[str]:
    """The names the server's certificate holds, read on a connection of its own that
    verifies the chain but not the name (nothing is sent but the probe's commands)."""
    ctx = create_ssl_context(cafile=args.cafile)
    ctx.check_hostname = False
    try:
        result = await probe(
            args.protocol,
            args.host,
            port,
            implicit_tls=implicit_tls,
            starttls=starttls,
            ssl_context=ctx,
            timeout=args.timeout,
            on_step=lambda *_: None,
            dialer=ProxyDialer(args.proxy) if args.proxy else None,
        )
    except (MailOAuthError, OSError):
        return []
    return result.certificate_names


def _shared_mailbox_note(protocol: str, mailbox: str, account: str | None) -> str:
    delegate = account or "the token's owner"
    if protocol == "smtp":
        return (
            f"SMTP logs in as {delegate}; sending as {mailbox} (MAIL FROM) needs Send As: "
            f"Add-RecipientPermission -Identity {mailbox} -Trustee {delegate} "
            f"-AccessRights SendAs"
        )
    return (
        f"opening the shared mailbox {mailbox} with the token of {delegate} (needs "
        f"FullAccess: Add-MailboxPermission -Identity {mailbox} -User {delegate} "
        f"-AccessRights FullAccess)"
    )


def _report_token(
    out: Printer, token: AccessToken, timer: Timer, source: _Source
) -> dict[str, Any] | None:
    if token.expires_at is not None:
        expiry = relative_time((token.expires_at - utcnow()).total_seconds())
        when = f"expires {expiry}"
    else:
        when = "expiry unknown"
    how = "refreshed via the stored credential" if source.has_refresh_token else "as given"
    out.ok("TOKEN", f"{redact(token.value)} ({how}; {when})", timer)
    decoded = decode_jwt(token.value)
    if decoded is None:
        out.detail("opaque token (not a JWT): no claims to inspect")
        return None
    claims = dict(decoded.claims)
    for name in _CLAIMS_SHOWN:
        if name in claims:
            value = claims[name]
            shown = " ".join(claim_list(claims, name)) if isinstance(value, list) else value
            out.detail(f"{name}: {shown}")
    return claims


def _report_failure(out: Printer, step: str, exc: BaseException, s: diagnose.Situation) -> None:
    out.fail(step, diagnose.for_the_command(str(exc)))
    if isinstance(exc, AuthenticationError):
        if exc.server_reply:
            out.detail(f"server reply: {exc.server_reply}")
        if exc.challenge is not None:
            out.detail(f"error challenge: {exc.challenge.describe()}")
    print_diagnosis(out, diagnose.diagnose(s))
