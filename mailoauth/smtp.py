"""SmtpClient: SMTP submission with an OAuth 2.0 bearer token, over aiosmtplib.

aiosmtplib parses and formats; the socket is the connection core's (implicit TLS or
required STARTTLS, timeouts). Authentication is SASL OAUTHBEARER or XOAUTH2 with the
one retry on a rejected token.
"""

from __future__ import annotations

import contextlib
import email.errors
import email.message
import logging
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default, SMTPStatus

from mailoauth._core.auth import SaslOutcome, authenticate, choose_mechanism
from mailoauth._core.client_base import BaseClient
from mailoauth._core.connection import ProtocolTransport
from mailoauth._core.settings import ConnectionOptions
from mailoauth._providers import SEND_AS_DENIED_CODE, SEND_AS_DENIED_HINT
from mailoauth._util.text import refuse_controls
from mailoauth.errors import (
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    LimitExceededError,
    MailConnectionError,
    MailOAuthError,
    MailTimeoutError,
    ProtocolError,
    TLSError,
)
from mailoauth.sasl import (
    SMTP_MAX_COMMAND_LINE,
    Mechanism,
    decode_error_challenge,
    fits_initial_response,
)
from mailoauth.security import SecurityOptions
from mailoauth.tokens.access_token import AccessToken, TokenProvider

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["RecipientReply", "SendResult", "SmtpClient"]

log = logging.getLogger("mailoauth.smtp")

#: A connection idle longer than this is checked with NOOP before the next message, so
#: a server-side idle timeout costs a reconnect instead of a failed send.
IDLE_CHECK_AFTER = 30.0


@dataclass(frozen=True)
class RecipientReply:
    """The server's answer to one RCPT TO."""

    code: int
    message: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


@dataclass(frozen=True)
class SendResult:
    """What the server said about a message: one reply per refused recipient (the
    others were accepted) and the final reply to DATA."""

    refused: dict[str, RecipientReply]
    data_reply: str


class _CoreSMTP(aiosmtplib.SMTP):
    """aiosmtplib's SMTP whose socket comes from the connection core.

    Two overrides: ``_create_connection`` (the greeting over our stream) and
    ``starttls`` (upgrade the core's stream; required, never skipped).
    """

    def __init__(self, client: SmtpClient) -> None:
        super().__init__(
            hostname=client.host,
            port=client.port,
            timeout=client.timeout,
            start_tls=False,
            use_tls=False,
            local_hostname=client.local_hostname,
        )
        self._client = client
        self._mo_transport: ProtocolTransport | None = None

    async def _create_connection(self, timeout: float | None) -> SMTPResponse:
        conn = await self._client._dial()
        protocol = SMTPProtocol(loop=self.loop, connection_lost_callback=self._on_connection_lost)
        transport = conn.attach(protocol)
        self.protocol = protocol
        self.transport = transport
        self._mo_transport = transport
        response = await protocol.read_response(timeout=timeout)
        if response.code != 220:
            raise aiosmtplib.SMTPConnectResponseError(response.code, response.message)
        return response

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Default | None = Default.token,
    ) -> SMTPResponse:
        # The reply to the final dot comes only once the whole message is out: a long
        # upload is bounded by min_rate (timeout + 1 s per min_rate bytes), not by the
        # timeout of one reply.
        if timeout is Default.token:
            client = self._client
            timeout = client.timeout + len(message) / client.min_rate
        return await super().data(message, timeout=timeout)

    async def mo_starttls(self) -> None:
        await self._ehlo_or_helo_if_needed()
        if not self.supports_extension("starttls"):
            raise TLSError(
                f"{self.hostname}:{self.port} does not offer STARTTLS, and STARTTLS is "
                f"required ({self._client.security.name}); the connection was closed. "
                f"If the server uses implicit TLS, use port 465 or SSL_IMPLICIT"
            )
        response = await self.execute_command(b"STARTTLS")
        if response.code != 220:
            raise TLSError(
                f"{self.hostname}:{self.port} refused STARTTLS: {response.code} {response.message}"
            )
        protocol = self.protocol
        assert protocol is not None and self._mo_transport is not None

        def discard() -> None:
            protocol._buffer.clear()  # aiosmtplib keeps unread bytes here

        await self._mo_transport.start_tls(discard)
        protocol._over_ssl = True
        # RFC 3207 §4.2: forget everything learnt before TLS, then EHLO again.
        self._reset_server_state()
        await self.ehlo()


# RFC 3463 §2: class "." subject "." detail, at the start of the reply text (RFC 2034).
_ENHANCED_STATUS = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.])")


def enhanced_status(text: str) -> str | None:
    """The enhanced status code (RFC 3463, ``"5.7.1"``) that starts an SMTP reply's
    text, or None when the server sent none."""
    found = _ENHANCED_STATUS.match(text.lstrip())
    return None if found is None else found.group(1)


#: The command each of aiosmtplib's refusals answers, for ``CommandError.command``.
_REFUSED_COMMANDS: dict[type[aiosmtplib.SMTPResponseException], str] = {
    aiosmtplib.SMTPSenderRefused: "MAIL",
    aiosmtplib.SMTPRecipientRefused: "RCPT",
    aiosmtplib.SMTPDataError: "DATA",
    aiosmtplib.SMTPHeloError: "EHLO",
    aiosmtplib.SMTPAuthenticationError: "AUTH",
}


@contextmanager
def _map_smtp_errors(host: str, port: int) -> Iterator[None]:
    where = f"{host}:{port}"
    try:
        yield
    except MailOAuthError:
        raise
    except (ValueError, email.errors.MessageError) as exc:
        # aiosmtplib refuses addresses and arguments it cannot put on a command line
        # (control characters, "\x85", whitespace) with ValueError; the email package
        # refuses headers it cannot serialise.
        raise ConfigurationError(
            f"could not send to {where}: {exc}; nothing was sent for this message"
        ) from exc
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = ", ".join(f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients)
        # The codes are those of the least final refusal: a 4xx on any recipient
        # means that sending again later may reach it.
        first = min(exc.recipients, key=lambda r: r.code, default=None)
        raise CommandError(
            f"{where} refused every recipient: {refused}",
            command="RCPT",
            reply=refused,
            code=None if first is None else first.code,
            enhanced_code=None if first is None else enhanced_status(first.message),
            host=host,
            port=port,
        ) from exc
    except aiosmtplib.SMTPTimeoutError as exc:
        raise MailTimeoutError(f"timed out waiting for {where}; the connection was closed") from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        raise ConnectionLostError(f"{where} closed the connection: {exc}") from exc
    except aiosmtplib.SMTPConnectError as exc:
        raise MailConnectionError(f"could not connect to {where}: {exc}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code == SMTPStatus.invalid_response:  # aiosmtplib could not parse the reply
            error = LimitExceededError if "too long" in exc.message else ProtocolError
            raise error(f"{where} sent an invalid SMTP response: {exc.message}") from exc
        command = next(
            (name for cls, name in _REFUSED_COMMANDS.items() if isinstance(exc, cls)), ""
        )
        enhanced = enhanced_status(exc.message)
        raise CommandError(
            f"{where} refused {command or 'a command'}: {exc.code} {exc.message}"
            f"{_send_as_hint(enhanced, exc.message)}",
            command=command,
            reply=f"{exc.code} {exc.message}",
            code=exc.code,
            enhanced_code=enhanced,
            host=host,
            port=port,
        ) from exc
    except aiosmtplib.SMTPException as exc:
        raise ProtocolError(f"SMTP error with {where}: {exc}") from exc


def _send_as_hint(enhanced: str | None, text: str) -> str:
    """The fix for Exchange's ``554 5.2.252 SendAsDenied`` (sending as a shared mailbox
    without the Send As right), else nothing."""
    if enhanced == SEND_AS_DENIED_CODE or "SendAsDenied" in text:
        return f"; {SEND_AS_DENIED_HINT}"
    return ""


def _check_addresses(sender: str, recipients: Sequence[str]) -> None:
    refuse_controls(sender, "sender address")
    for value in recipients:
        refuse_controls(value, "recipient address")


#: The headers ``send_message`` takes the envelope from (aiosmtplib's choice, RFC 5322
#: §3.6.2/§3.6.3/§3.6.6).
ENVELOPE_HEADERS = (
    "From",
    "Sender",
    "To",
    "Cc",
    "Bcc",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
)
# A fold is CRLF (or LF) followed by whitespace (RFC 5322 §2.2.3); any other line break
# in a header value starts a new header.
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _check_envelope_headers(message: email.message.Message) -> None:
    """Refuse control characters in the headers the envelope is read from.

    A compat32 :class:`email.message.Message` keeps a header value as the caller set it:
    ``msg["To"] = "a@example.com\\r\\nBcc: b@example.com"`` would add a recipient that
    nobody wrote in To (aiosmtplib reads the envelope from these headers). Folds (a
    line break followed by white space) are header syntax and are allowed.
    """
    for name in ENVELOPE_HEADERS:
        for value in message.get_all(name, failobj=[]):
            refuse_controls(_FOLD.sub("", str(value)), f"message's {name} header", allow="\t")


class SmtpClient(BaseClient):
    """Send mail over SMTP, authenticated with an OAuth 2.0 bearer token.

    ``token`` is an access token string, an :class:`~mailoauth.AccessToken`, or a
    :class:`~mailoauth.TokenProvider` (refreshed when needed). Use as
    ``async with SmtpClient(...) as smtp: await smtp.send_message(msg)``.

    Errors: :class:`~mailoauth.errors.AuthenticationError` (token rejected twice),
    :class:`~mailoauth.errors.TLSError` (STARTTLS missing, bad certificate),
    :class:`~mailoauth.errors.MailTimeoutError`,
    :class:`~mailoauth.errors.MailConnectionError`,
    :class:`~mailoauth.errors.CommandError` (the server refused a command), and token
    errors from the provider. One task at a time per client.
    """

    protocol_name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        token: str | AccessToken | TokenProvider,
        security: SecurityOptions = SecurityOptions.AUTO,
        *,
        local_hostname: str | None = None,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        settings = self._settings_from(host, port, security, options)
        super().__init__(settings, username, token)
        #: The name sent in EHLO; "localhost" keeps the machine's name private.
        self.local_hostname = refuse_controls(local_hostname or "localhost", "local_hostname")
        self._smtp: _CoreSMTP | None = None
        self._last_used = 0.0

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def _open(self) -> None:
        smtp = _CoreSMTP(self)
        self._smtp = smtp
        try:
            with _map_smtp_errors(self.host, self.port):
                await smtp.connect()
                if self.plan.starttls:
                    await smtp.mo_starttls()
                else:
                    await smtp.ehlo()
                await self._authenticate(smtp)
        except BaseException:
            smtp.close()
            self._smtp = None
            raise
        self._last_used = time.monotonic()

    async def _authenticate(self, smtp: _CoreSMTP) -> None:
        mechanism = choose_mechanism(
            smtp.server_auth_methods, self.mechanism, "smtp", host=self.host, port=self.port
        )

        async def exchange(mech: Mechanism) -> SaslOutcome:
            name = mech.name.encode()
            initial = mech.initial_response_b64()
            if fits_initial_response(b"AUTH " + name + b" ", mech, SMTP_MAX_COMMAND_LINE):
                response = await smtp.execute_command(b"AUTH", name, initial)
            else:
                # RFC 4954 §4: too long for one line; send it after the 334.
                response = await smtp.execute_command(b"AUTH", name)
                if response.code == 334:
                    response = await smtp.execute_command(initial)
            challenge = None
            if response.code == 334:
                challenge = decode_error_challenge(response.message)
                response = await smtp.execute_command(mech.respond(response.message.encode()))
            reply = f"{response.code} {response.message}"
            if response.code == 235:
                return SaslOutcome(ok=True, reply=reply)
            return SaslOutcome(
                ok=False,
                reply=reply,
                challenge=challenge,
                temporary=response.code == 454,
            )

        await authenticate(
            tokens=self.tokens,
            username=self.username,
            host=self.host,
            port=self.port,
            protocol="smtp",
            mechanism=mechanism,
            exchange=exchange,
        )
        self.mechanism_used = mechanism

    async def _ensure_connected(self) -> _CoreSMTP:
        """Reconnect (and re-authenticate) when the server has dropped us. On a client
        that is not open, connect with a DeprecationWarning (see :meth:`sendmail`)."""
        if not self._opened:
            warnings.warn(
                "sending on an SmtpClient that is not open (connect() never called, or "
                "aclose() called) connects by itself; this is deprecated and will raise "
                "UsageError, as ImapClient and Pop3Client do: use `async with "
                "SmtpClient(...) as smtp:` or await smtp.connect() first",
                DeprecationWarning,
                stacklevel=3,
            )
            self._opened = True
        if self._smtp is not None and self._smtp.is_connected:
            if time.monotonic() - self._last_used > IDLE_CHECK_AFTER:
                try:
                    response = await self._smtp.noop()
                    if response.code == 250:
                        return self._smtp
                except (aiosmtplib.SMTPException, OSError):
                    pass
            else:
                return self._smtp
        log.debug("SMTP connection to %s:%s is gone; reconnecting", self.host, self.port)
        await self._close()
        await self._connect()
        assert self._smtp is not None
        return self._smtp

    async def sendmail(
        self, sender: str, recipients: str | Sequence[str], message: bytes
    ) -> SendResult:
        """Send ``message`` (bytes, CRLF or LF line ends) to ``recipients``.

        Returns the refused recipients (if some were accepted) and the DATA reply.
        Raises :class:`~mailoauth.errors.CommandError` when the server refuses the
        sender, every recipient or the data (its ``code``, ``enhanced_code`` and
        ``retryable`` say whether sending later may work); a message is only reported
        sent when the server accepted it with 250 after DATA. To send as a shared
        mailbox, log in as the delegate (its own username and token) and give the
        shared address as ``sender``: Exchange Online refuses it without the Send As
        right (``554 5.2.252 SendAsDenied``), and the CommandError names the
        ``Add-RecipientPermission`` command that grants it. Reconnects when the
        server dropped the connection. Called before :meth:`connect` (or after
        :meth:`aclose`) it connects by itself, with a DeprecationWarning: open the
        client with ``async with`` instead.
        """
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        _check_addresses(sender, rcpts)
        if not rcpts:
            raise ConfigurationError("sendmail needs at least one recipient")
        smtp = await self._ensure_connected()
        with _map_smtp_errors(self.host, self.port):
            errors, data_reply = await smtp.sendmail(sender, rcpts, message)
        self._last_used = time.monotonic()
        return SendResult(
            {addr: RecipientReply(r.code, r.message) for addr, r in errors.items()}, data_reply
        )

    async def send_message(
        self,
        message: email.message.EmailMessage | email.message.Message,
        *,
        sender: str | None = None,
        recipients: str | Sequence[str] | None = None,
    ) -> SendResult:
        """Send an :class:`email.message.EmailMessage`; sender and recipients default to
        its From/Sender and To/Cc/Bcc headers (Bcc is not transmitted). Raises as
        :meth:`sendmail`, and :class:`~mailoauth.errors.ConfigurationError` before
        sending when an address header holds a line break that is not a fold (it would
        add a recipient), when an address holds a control character, or when the
        message cannot be serialised."""
        explicit = [recipients] if isinstance(recipients, str) else list(recipients or ())
        _check_addresses(sender or "", explicit)
        _check_envelope_headers(message)
        smtp = await self._ensure_connected()
        with _map_smtp_errors(self.host, self.port):
            errors, data_reply = await smtp.send_message(
                message, sender=sender, recipients=recipients
            )
        self._last_used = time.monotonic()
        return SendResult(
            {addr: RecipientReply(r.code, r.message) for addr, r in errors.items()}, data_reply
        )

    async def noop(self) -> None:
        """Send NOOP. Raises :class:`~mailoauth.errors.UsageError` on a client that is
        not open, :class:`~mailoauth.errors.ConnectionLostError` if the connection is
        gone."""
        self._require_opened()
        if self._smtp is None:
            raise ConnectionLostError(
                f"the connection to {self.host}:{self.port} is not open (connecting failed); "
                f"call connect() to try again"
            )
        with _map_smtp_errors(self.host, self.port):
            await self._smtp.noop()

    async def _close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit(timeout=min(self.timeout, 5.0))
        smtp.close()
