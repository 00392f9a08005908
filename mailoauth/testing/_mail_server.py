"""What the IMAP and POP3 test servers share: the mail store, the token checker and
the personality, on top of :class:`~mailoauth.testing._serving.StreamServer`."""

from __future__ import annotations

import base64
import ssl
from typing import TYPE_CHECKING

from mailoauth.testing._serving import Channel, StreamServer
from mailoauth.testing.bearer_auth import (
    AuthResult,
    SaslParseError,
    TokenChecker,
    Validator,
    decode_sasl_response,
    oauth_validator,
    run_exchange,
)
from mailoauth.testing.mailstore import MailStore
from mailoauth.testing.personality import Delegations, Personality, TenantStates

if TYPE_CHECKING:
    from mailoauth.testing.oauth_server import FakeOAuthServer

__all__ = ["BearerMailServer"]


class BearerMailServer(StreamServer):
    """A stream server over a :class:`MailStore` that accepts bearer tokens.

    Pass exactly one of ``oauth`` (tokens issued by that :class:`FakeOAuthServer` to
    the SASL user) or ``validator`` (``validate(username, token) -> bool``); otherwise
    ``ValueError``. ``delegations`` (with ``oauth``) says which delegate's token opens
    which other mailbox (:class:`~mailoauth.testing.personality.Delegations`; a new,
    empty one if omitted, in :attr:`delegations`). The other arguments are
    :class:`StreamServer`'s.
    """

    def __init__(
        self,
        store: MailStore | None = None,
        *,
        oauth: FakeOAuthServer | None = None,
        validator: Validator | None = None,
        personality: Personality = Personality.RFC,
        delegations: Delegations | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        implicit_tls: bool = True,
        starttls: bool = True,
        require_tls: bool = True,
        tls_port: int = 0,
        starttls_port: int = 0,
        timeout: float = 300.0,
    ) -> None:
        super().__init__(
            ssl_context=ssl_context,
            host=host,
            implicit_tls=implicit_tls,
            starttls=starttls,
            require_tls=require_tls,
            tls_port=tls_port,
            starttls_port=starttls_port,
            timeout=timeout,
        )
        if (oauth is None) == (validator is None):
            raise ValueError("pass exactly one of oauth= or validator=")
        self.delegations = delegations if delegations is not None else Delegations()
        #: Tenant states that refuse valid tokens as Exchange does (shared by a sandbox).
        self.tenant = TenantStates()
        if validator is None:
            assert oauth is not None
            validator = oauth_validator(oauth, self.delegations)
        self.store = store if store is not None else MailStore()
        self.checker = TokenChecker(validator)
        self.personality = personality

    def fail_next(self, count: int = 1) -> None:
        """Reject the next ``count`` authentications whatever their token."""
        self.checker.fail_next(count)

    async def authenticate(
        self, channel: Channel, mechanism: str, initial: bytes | None, *, protocol: str
    ) -> AuthResult:
        """Run one SASL exchange on a line ``channel`` (IMAP's and POP3's framing):
        each challenge goes out as ``+ <base64>``; an answer of ``*``, or one that is
        not base64, aborts it. ``protocol`` names the service to the personality."""

        async def ask(challenge: bytes) -> bytes | None:
            await channel.send_line(b"+ " + base64.b64encode(challenge))
            answer = await channel.readline()
            if answer.strip() == b"*":
                return None
            try:
                return decode_sasl_response(answer)
            except SaslParseError:
                return None

        return await run_exchange(
            mechanism,
            initial,
            ask,
            self.checker,
            self.personality,
            tenant=self.tenant,
            protocol=protocol,
        )
