"""The authentication loop every protocol shares: choose a mechanism, run the SASL
exchange, and on a rejected token get a fresh one and retry exactly once.

The protocol-specific part is a :data:`SaslExchange`: a coroutine that sends one
AUTH/AUTHENTICATE with the given mechanism, answers an error challenge if one comes,
and reports a :class:`SaslOutcome`. It never raises for a rejection.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Final

from mailoauth._core.scrub import Scrubber
from mailoauth._providers import AUTH_FAILURE_HINTS, auth_failure_hint
from mailoauth._util.text import looks_like_token, shown
from mailoauth.errors import AuthenticationError, TokenExpiredError
from mailoauth.sasl import MECHANISMS, ErrorChallenge, Mechanism, create_mechanism
from mailoauth.tokens.access_token import AccessToken
from mailoauth.tokens.manager import TokenManager

__all__ = ["BARE_TOKEN_FIX", "SaslExchange", "SaslOutcome", "authenticate", "choose_mechanism"]

log = logging.getLogger("mailoauth.auth")

#: The fix for a rejected bare token, in the library's words (the command has its own).
BARE_TOKEN_FIX: Final = "pass a TokenProvider (e.g. GoogleTokenProvider) instead"


@dataclass(frozen=True)
class SaslOutcome:
    """How one SASL exchange ended.

    ``reply`` is the server's final line; ``challenge`` the decoded error challenge if
    one came first; ``temporary`` marks a server-side temporary failure (the token was
    not judged, so refreshing it would not help).
    """

    ok: bool
    reply: str = ""
    challenge: ErrorChallenge | None = None
    temporary: bool = False


SaslExchange = Callable[[Mechanism], Awaitable[SaslOutcome]]

_HINTS = AUTH_FAILURE_HINTS


def choose_mechanism(
    offered: Collection[str],
    preferred: str | None,
    protocol: str,
    *,
    host: str = "",
    port: int | None = None,
) -> str:
    """OAUTHBEARER if offered, else XOAUTH2; or the caller's ``preferred`` choice.

    Raises :class:`~mailoauth.errors.ConfigurationError` for a ``preferred`` mechanism
    mailoauth does not implement, and :class:`AuthenticationError` (carrying ``host``
    and ``port``, not retryable) when the server offers neither (or not the preferred
    one), naming what it does offer.
    """
    upper = {m.upper() for m in offered}
    if preferred is not None:
        choice = preferred.upper()
        if choice not in MECHANISMS:
            from mailoauth.errors import ConfigurationError

            raise ConfigurationError(
                f"mechanism={preferred!r} is not supported; use 'XOAUTH2' or 'OAUTHBEARER'"
            )
        if choice in upper:
            return choice
        raise AuthenticationError(
            f"the {protocol.upper()} server does not offer {choice} (it offers: "
            f"{', '.join(sorted(upper)) or 'no SASL mechanisms'}); leave mechanism= unset "
            f"to pick one it offers",
            mechanism=choice,
            host=host,
            port=port,
        )
    for name in MECHANISMS:
        if name in upper:
            return name
    raise AuthenticationError(
        f"the {protocol.upper()} server offers neither OAUTHBEARER nor XOAUTH2 (it offers: "
        f"{', '.join(sorted(upper)) or 'no SASL mechanisms'}); OAuth is not enabled there "
        f"or not before TLS",
        host=host,
        port=port,
    )


def _scrubbed(outcome: SaslOutcome, scrubber: Scrubber) -> SaslOutcome:
    challenge = outcome.challenge
    return dataclasses.replace(
        outcome,
        reply=scrubber.scrub(outcome.reply),
        challenge=None if challenge is None else scrubber.scrub_fields(challenge),
    )


async def authenticate(
    *,
    tokens: TokenManager,
    username: str,
    host: str,
    port: int,
    protocol: str,
    mechanism: str,
    exchange: SaslExchange,
) -> AccessToken:
    """Authenticate with ``mechanism``, retrying once with a refreshed token.

    Returns the token that was accepted. Raises :class:`AuthenticationError` after the
    second rejection (or at once for a temporary server failure), carrying the server's
    reply and the decoded challenge; token errors (:class:`~mailoauth.errors.TokenError`)
    from the provider propagate unchanged. The access token and the SASL initial
    response (raw and base64) are scrubbed from the reply, the challenge, any exception
    the exchange raises and the DEBUG logs of the exchange: a server may echo them.
    """
    token = await tokens.get_access_token()
    for attempt in (1, 2):
        mech = create_mechanism(mechanism, username, token.value, host=host, port=port)
        # A server may echo what it was sent: nothing of the token may reach a message
        # or a log through its reply (see mailoauth/_core/scrub.py).
        # A username that looks like a token (the two swapped) is scrubbed as one.
        extra = (username,) if looks_like_token(username) else ()
        scrubber = Scrubber(token.value, mech.initial_response(), *extra)
        with scrubber.active():
            outcome = await exchange(mech)
        if outcome.ok:
            return token  # its reply goes nowhere: nothing to scrub
        outcome = _scrubbed(outcome, scrubber)
        detail = f"; server challenge: {outcome.challenge.describe()}" if outcome.challenge else ""
        if outcome.temporary:
            raise AuthenticationError(
                f"the {protocol.upper()} server {host}:{port} could not check the token "
                f"right now (temporary failure: {outcome.reply!r}); try again later",
                server_reply=outcome.reply,
                challenge=outcome.challenge,
                mechanism=mechanism,
                temporary=True,
                host=host,
                port=port,
            )
        if attempt == 1:
            log.debug(
                "%s %s:%s rejected the token for %s (%s%s); refreshing and retrying once",
                protocol.upper(),
                host,
                port,
                shown(username, "username"),
                outcome.reply,
                detail,
            )
            try:
                token = await tokens.refresh_rejected(token)
            except TokenExpiredError as exc:
                raise AuthenticationError(
                    f"the {protocol.upper()} server {host}:{port} rejected the access token "
                    f"for {shown(username, 'username')} ({outcome.reply!r}{detail}) and a bare "
                    f"token cannot be refreshed; {BARE_TOKEN_FIX}",
                    server_reply=outcome.reply,
                    challenge=outcome.challenge,
                    mechanism=mechanism,
                    host=host,
                    port=port,
                ) from exc
            continue
        raise AuthenticationError(
            f"the {protocol.upper()} server {host}:{port} rejected the token for "
            f"{shown(username, 'username')} "
            f"twice, the second time just after a refresh ({outcome.reply!r}{detail}); "
            f"{auth_failure_hint(protocol, outcome.reply, host)}",
            server_reply=outcome.reply,
            challenge=outcome.challenge,
            mechanism=mechanism,
            host=host,
            port=port,
        )
    raise AssertionError("unreachable")  # pragma: no cover
