"""SmtpClient: SMTP submission with an OAuth 2.0 bearer token, over aiosmtplib.

aiosmtplib parses and formats; the socket is the connection core's (implicit TLS or
required STARTTLS, timeouts). Authentication is SASL OAUTHBEARER or XOAUTH2 with the
one retry on a rejected token.

When the server offers PIPELINING (RFC 2920), a message goes out in one write: MAIL
FROM, every RCPT TO and DATA, whose replies are read in order (two round trips per
message instead of 3 + recipients); with CHUNKING too (RFC 3030) the message follows as
``BDAT <size> LAST`` in that same write (one round trip, no dot-stuffing). aiosmtplib
cannot read several replies to one write, so that exchange is done here, over
aiosmtplib's protocol object (:class:`_CoreProtocol`) with the sans-IO parser of
:mod:`mailoauth.smtp.replies`. The results are reported as without pipelining.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.errors
import email.message
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import aiosmtplib
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message, quote_address
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
from mailoauth.smtp.replies import Reply, ReplyParser, canonical_lines, dot_stuffed
from mailoauth.tokens.access_token import AccessToken, TokenProvider

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Outgoing", "RecipientReply", "SendResult", "SmtpClient", "enhanced_status"]

log = logging.getLogger("mailoauth.smtp")

#: A connection idle longer than this is checked with NOOP before the next message, so
#: a server-side idle timeout costs a reconnect instead of a failed send.
IDLE_CHECK_AFTER = 30.0
#: The most bytes written as one pipelined group with its message. A server answers the
#: replies it has when it runs out of buffered input: Postfix reads 4 KiB at a time
#: (VSTREAM_BUFSIZE), so a longer group gets its replies in two TCP segments, and the
#: second waits for the client's delayed ACK (Nagle): 40 ms more per message, measured
#: for 6 and 12 KB messages. A larger message waits for the replies to its envelope
#: before its BDAT, as RFC 3030 §2 describes it (nor is it uploaded to refused
#: recipients).
GROUP_LIMIT: Final = 4096
#: How many small messages :meth:`SmtpClient.send_many` writes at once (PIPELINING and
#: CHUNKING), within :data:`GROUP_LIMIT` bytes: against Postfix, 4 small messages per
#: write halve the client's CPU per message.
DEFAULT_WINDOW: Final = 4
#: The RCPT replies that accept a recipient (aiosmtplib's rule: 250, and 251 "will
#: forward").
_RCPT_OK: Final = frozenset((250, 251))


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
    others were accepted) and the final reply to DATA (or to ``BDAT ... LAST``)."""

    refused: dict[str, RecipientReply]
    data_reply: str


class _CoreProtocol(SMTPProtocol):
    """aiosmtplib's protocol, which can also read several replies to one write.

    aiosmtplib reads one reply per command and drops whatever comes while no command
    waits, so a pipelined group (RFC 2920) is read here instead: between
    :meth:`mo_expect` and :meth:`mo_done` every byte goes to a :class:`ReplyParser`,
    and the waiter completes once the expected number of replies is in (or fails on a
    parse error, EOF or a lost connection). Outside that, aiosmtplib reads as usual.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connection_lost_callback: Callable[[SMTPProtocol], None],
    ) -> None:
        super().__init__(loop=loop, connection_lost_callback=connection_lost_callback)
        self.mo_loop = loop
        #: Set while a pipelined group's replies are read.
        self.mo_waiter: asyncio.Future[None] | None = None
        self.mo_replies: list[Reply] = []
        self.mo_expected = 0
        self.mo_parser = ReplyParser()

    def mo_expect(self, count: int) -> asyncio.Future[None]:
        """Read the next ``count`` replies into :attr:`mo_replies`; the future
        completes when they are in."""
        self.mo_replies = []
        self.mo_expected = count
        self.mo_parser = ReplyParser()
        self.mo_waiter = waiter = self.mo_loop.create_future()
        return waiter

    def mo_done(self) -> None:
        """Back to aiosmtplib's reading (bytes after the group are dropped, as
        aiosmtplib drops unsolicited ones)."""
        self.mo_waiter = None

    def mo_fail(self, error: BaseException) -> None:
        waiter = self.mo_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def data_received(self, data: bytes) -> None:
        waiter = self.mo_waiter
        if waiter is None:
            super().data_received(data)
            return
        if waiter.done():
            return
        try:
            replies = self.mo_parser.feed(data)
        except MailOAuthError as exc:  # mapped with the host, as aiosmtplib's own
            waiter.set_exception(
                aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, str(exc))
            )
            return
        if replies:
            self.mo_replies += replies
            if len(self.mo_replies) >= self.mo_expected:
                waiter.set_result(None)

    def eof_received(self) -> bool:
        self.mo_fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.mo_fail(aiosmtplib.SMTPServerDisconnected(f"Connection lost: {exc or 'closed'}"))
        super().connection_lost(exc)


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
        self.mo_protocol: _CoreProtocol | None = None

    async def _create_connection(self, timeout: float | None) -> SMTPResponse:
        conn = await self._client._dial()
        protocol = _CoreProtocol(asyncio.get_running_loop(), self._on_connection_lost)
        transport = conn.attach(protocol)
        self.protocol = protocol
        self.mo_protocol = protocol
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


@lru_cache(maxsize=256)
def _quoted(address: str, encoding: str) -> bytes:
    """``<address>`` as aiosmtplib writes it in MAIL and RCPT (``quote_address``: parsed,
    and refused with ValueError when unsafe on a command line), cached: parsing an
    address is the costliest part of a small message's envelope."""
    return quote_address(address).encode(encoding)


#: One message for :meth:`SmtpClient.send_many`: a message with its envelope in its
#: headers, or ``(sender, recipients, data)``.
Outgoing = email.message.Message | tuple[str, str | Sequence[str], bytes]


@dataclass(frozen=True, slots=True)
class _Transaction:
    """One message ready to pipeline: its MAIL and RCPT lines and its canonical body."""

    sender: str
    rcpts: Sequence[str]
    envelope: bytes
    body: bytes

    @classmethod
    def make(
        cls,
        smtp: _CoreSMTP,
        sender: str,
        rcpts: Sequence[str],
        message: bytes,
        options: list[bytes],
        encoding: str,
    ) -> _Transaction:
        """Raises ValueError (UnicodeEncodeError included) for an address aiosmtplib
        would refuse, before anything is sent."""
        body = canonical_lines(message)
        if smtp.supports_extension("size"):
            options = [b"SIZE=%d" % len(body), *options]
        parts = [b"MAIL FROM:", _quoted(sender, encoding)]
        if options:
            parts += (b" ", b" ".join(options))
        parts.append(b"\r\n")
        for rcpt in rcpts:
            parts += (b"RCPT TO:", _quoted(rcpt, encoding), b"\r\n")
        return cls(sender, rcpts, b"".join(parts), body)

    def outcome(
        self, replies: Sequence[Reply], ok: int = 250
    ) -> tuple[SendResult | None, aiosmtplib.SMTPException | None]:
        """The result of the transaction from its replies (MAIL, each RCPT, the last
        to DATA or BDAT, whose success is ``ok``), or the refusal aiosmtplib's
        ``sendmail`` would raise."""
        mail, last = replies[0], replies[-1]
        refused = {
            rcpt: RecipientReply(reply.code, reply.message)
            for rcpt, reply in zip(self.rcpts, replies[1:-1], strict=True)
            if reply.code not in _RCPT_OK
        }
        if mail.code != 250:
            return None, aiosmtplib.SMTPSenderRefused(mail.code, mail.message, self.sender)
        if len(refused) == len(self.rcpts):
            return None, aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(r.code, r.message, a) for a, r in refused.items()]
            )
        if last.code != ok:
            return None, aiosmtplib.SMTPDataError(last.code, last.message)
        return SendResult(refused, last.message), None


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(
            aiosmtplib.SMTPReadTimeoutError(f"no complete reply within {timeout:g}s")
        )


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
    ``async with SmtpClient(...) as smtp: await smtp.send_message(msg)``. Many
    messages: :meth:`send_many`, or :class:`~mailoauth.SmtpPool` for several
    connections. ``pipelining=False`` keeps to one command per round trip even where
    the server offers PIPELINING and CHUNKING (for a middlebox that mishandles them).

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
        pipelining: bool = True,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        settings = self._settings_from(host, port, security, options)
        super().__init__(settings, username, token)
        #: The name sent in EHLO; "localhost" keeps the machine's name private.
        self.local_hostname = refuse_controls(local_hostname or "localhost", "local_hostname")
        #: Whether PIPELINING and CHUNKING are used when the server offers them (False:
        #: one command per round trip, for a server or middlebox that mishandles them).
        self.pipelining = pipelining
        #: A pipelined window ended with a failed transaction: RSET before the next.
        self._dirty = False
        self._smtp: _CoreSMTP | None = None
        self._last_used = 0.0

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def _open(self) -> None:
        smtp = _CoreSMTP(self)
        self._smtp = smtp
        self._dirty = False
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
        ``Add-RecipientPermission`` command that grants it. When the server offers
        PIPELINING (and CHUNKING), the message takes one round trip instead of three
        or more; the results are the same. Reconnects when the server dropped the
        connection. Called before :meth:`connect` (or after
        :meth:`aclose`) it connects by itself, with a DeprecationWarning: open the
        client with ``async with`` instead.
        """
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        _check_addresses(sender, rcpts)
        if not rcpts:
            raise ConfigurationError("sendmail needs at least one recipient")
        smtp = await self._ensure_connected()
        if self.pipelining and smtp.supports_extension("pipelining"):
            with _map_smtp_errors(self.host, self.port):
                if isinstance(message, str):  # as aiosmtplib: ASCII only
                    message = message.encode("ascii")
                tx = _Transaction.make(smtp, sender, rcpts, message, [], "ascii")
                result = await self._send_pipelined(smtp, tx)
            self._last_used = time.monotonic()
            return result
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
        if self.pipelining and smtp.supports_extension("pipelining"):
            with _map_smtp_errors(self.host, self.port):
                tx = self._message_transaction(smtp, message, sender, recipients)
                result = await self._send_pipelined(smtp, tx)
            self._last_used = time.monotonic()
            return result
        with _map_smtp_errors(self.host, self.port):
            errors, data_reply = await smtp.send_message(
                message, sender=sender, recipients=recipients
            )
        self._last_used = time.monotonic()
        return SendResult(
            {addr: RecipientReply(r.code, r.message) for addr, r in errors.items()}, data_reply
        )

    async def send_many(
        self, messages: Iterable[Outgoing], *, window: int = DEFAULT_WINDOW
    ) -> list[SendResult | MailOAuthError]:
        """Send several messages on this connection; one result per message, in order:
        its :class:`SendResult`, or the error :meth:`sendmail` would have raised for it
        (a :class:`~mailoauth.errors.CommandError` for a refusal, a
        :class:`~mailoauth.errors.ConfigurationError` for a message that could not be
        sent, a transport error when the connection failed under it).

        A message is an :class:`email.message.Message` (its envelope from its headers,
        as :meth:`send_message`) or a ``(sender, recipients, data)`` tuple (as
        :meth:`sendmail`). When the server offers PIPELINING and CHUNKING, up to
        ``window`` small messages go out in one write (each after an RSET, so that one
        refused message cannot affect the next) and their replies are read in order;
        otherwise they are sent one after the other. A message whose replies did not all
        come when the connection failed may or may not have been accepted: its result
        is the transport error, and the next message reconnects. When reconnecting
        fails (a token rejected twice, a server gone), that error is the result of every
        message left. Raises only :class:`~mailoauth.errors.ConfigurationError` for
        ``window`` < 1.
        """
        if window < 1:
            raise ConfigurationError(f"window must be at least 1, not {window}")
        items = list(messages)
        results: list[SendResult | MailOAuthError] = []
        while len(results) < len(items):
            try:
                smtp = await self._ensure_connected()
            except MailOAuthError as exc:  # e.g. the token rejected twice: for all left
                return results + [exc] * (len(items) - len(results))
            batch = items[len(results) : len(results) + window]
            if window > 1 and self._pipelines_bodies(smtp):
                results += await self._send_window(smtp, batch)
            else:
                results.append(await self._send_one(batch[0]))
        return results

    async def _send_one(self, item: Outgoing) -> SendResult | MailOAuthError:
        try:
            if isinstance(item, email.message.Message):
                return await self.send_message(item)
            sender, recipients, data = item
            return await self.sendmail(sender, recipients, data)
        except MailOAuthError as exc:
            return exc

    def _pipelines_bodies(self, smtp: _CoreSMTP) -> bool:
        return (
            self.pipelining
            and smtp.supports_extension("pipelining")
            and smtp.supports_extension("chunking")
        )

    async def _send_window(
        self, smtp: _CoreSMTP, batch: list[Outgoing]
    ) -> list[SendResult | MailOAuthError]:
        """Several small transactions in one write: ``[RSET] MAIL RCPT... BDAT n LAST``
        each; a large message (or one that cannot be sent) ends the window early."""
        results: list[SendResult | MailOAuthError] = []
        txs: list[_Transaction] = []
        size = 0
        for item in batch:
            try:
                with _map_smtp_errors(self.host, self.port):
                    tx = self._prepare(smtp, item)
            except MailOAuthError as exc:
                if txs:
                    break  # sent with the next window, in order
                return [exc]
            size += len(tx.envelope) + len(tx.body) + 32  # and RSET, BDAT n LAST
            if size > GROUP_LIMIT:
                if txs:
                    break
                return [await self._send_one(item)]
            txs.append(tx)
        parts: list[bytes] = []
        count = 0
        for k, tx in enumerate(txs):
            if k or self._dirty:
                parts.append(b"RSET\r\n")
                count += 1
            parts += (tx.envelope, b"BDAT %d LAST\r\n" % len(tx.body), tx.body)
            count += len(tx.rcpts) + 2
        try:
            with _map_smtp_errors(self.host, self.port):
                replies = await self._round_trip(
                    smtp, count, self.timeout + size / self.min_rate, b"".join(parts)
                )
        except MailOAuthError as exc:
            self._dirty = False  # the next window is on a new connection
            return results + [exc] * len(txs)
        self._last_used = time.monotonic()
        at = 0
        for k, tx in enumerate(txs):
            at += 1 if k or self._dirty else 0
            end = at + len(tx.rcpts) + 2
            result, error = tx.outcome(replies[at:end])
            at = end
            if error is None:
                assert result is not None
                results.append(result)
            else:
                results.append(self._mapped(error))
        self._dirty = error is not None
        return results

    def _mapped(self, error: BaseException) -> MailOAuthError:
        try:
            with _map_smtp_errors(self.host, self.port):
                raise error
        except MailOAuthError as exc:
            return exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _prepare(self, smtp: _CoreSMTP, item: Outgoing) -> _Transaction:
        """The transaction of one item of :meth:`send_many` (checked as :meth:`sendmail`
        and :meth:`send_message` check theirs). Raises ConfigurationError, or
        aiosmtplib's ValueError/SMTPNotSupported for the caller to map."""
        if isinstance(item, email.message.Message):
            _check_envelope_headers(item)
            return self._message_transaction(smtp, item, None, None)
        sender, recipients, data = item
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        _check_addresses(sender, rcpts)
        if not rcpts:
            raise ConfigurationError("sendmail needs at least one recipient")
        if isinstance(data, str):
            data = data.encode("ascii")
        return _Transaction.make(smtp, sender, rcpts, data, [], "ascii")

    def _message_transaction(
        self,
        smtp: _CoreSMTP,
        message: email.message.EmailMessage | email.message.Message,
        sender: str | None,
        recipients: str | Sequence[str] | None,
    ) -> _Transaction:
        """aiosmtplib's ``send_message`` (the envelope from the headers, SMTPUTF8 and
        8BITMIME as it decides them, Bcc dropped), as a transaction to pipeline."""
        if sender is None:
            sender = extract_sender(message)
        if sender is None:
            raise ValueError("No From header provided in message")
        if isinstance(recipients, str):
            rcpts = [recipients]
        elif recipients is None:
            rcpts = extract_recipients(message)
        else:
            rcpts = list(recipients)
        if not rcpts:
            raise ValueError("No recipient headers provided in message")
        options: list[bytes] = []
        utf8 = not (sender.isascii() and all(r.isascii() for r in rcpts))
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported(
                    "An address containing non-ASCII characters was provided, but "
                    "SMTPUTF8 is not supported by this server"
                )
            options.append(b"SMTPUTF8")
        cte_type = "7bit"
        if smtp.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
            cte_type = "8bit"
        flat = flatten_message(message, utf8=utf8, cte_type=cte_type)
        return _Transaction.make(smtp, sender, rcpts, flat, options, "utf-8" if utf8 else "ascii")

    async def _send_pipelined(self, smtp: _CoreSMTP, tx: _Transaction) -> SendResult:
        """One transaction with PIPELINING: MAIL, every RCPT and DATA in one write, or,
        with CHUNKING, MAIL, every RCPT and ``BDAT n LAST`` with the message (a large
        message waits for the envelope's replies first: no upload to refused
        recipients). Raises aiosmtplib's refusals, for the caller to map, as its
        ``sendmail`` does: after an RSET."""
        body = tx.body
        count = len(tx.rcpts) + 2
        transfer = self.timeout + len(body) / self.min_rate
        bdat = b"BDAT %d LAST\r\n" % len(body)
        if not smtp.supports_extension("chunking"):
            replies = await self._round_trip(smtp, count, self.timeout, tx.envelope + b"DATA\r\n")
            result, error = tx.outcome(replies, ok=354)
            if replies[-1].code == 354:
                if error is not None:
                    # The server took DATA though the transaction failed: end the
                    # (empty) message, which it then refuses (RFC 2920 §3.1).
                    await self._round_trip(smtp, 1, self.timeout, b".\r\n")
                else:
                    last = await self._round_trip(smtp, 1, transfer, dot_stuffed(body))
                    result, error = tx.outcome([*replies[:-1], last[0]])
        elif len(tx.envelope) + len(bdat) + len(body) <= GROUP_LIMIT:
            replies = await self._round_trip(smtp, count, transfer, tx.envelope + bdat + body)
            result, error = tx.outcome(replies)
        else:
            replies = await self._round_trip(smtp, count - 1, self.timeout, tx.envelope)
            result, error = tx.outcome([*replies, Reply(250, "")])
            if error is None:
                last = await self._round_trip(smtp, 1, transfer, bdat, body)
                result, error = tx.outcome([*replies, last[0]])
        if error is not None:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, MailOAuthError):
                await smtp.rset()  # as aiosmtplib: a clean envelope for the next message
            raise error
        assert result is not None
        return result

    async def _round_trip(
        self, smtp: _CoreSMTP, count: int, timeout: float, *writes: bytes
    ) -> list[Reply]:
        """Write ``writes`` and read ``count`` replies, within ``timeout`` seconds.
        On a timeout, a lost connection, an unreadable reply or a cancellation the
        connection is closed (the server's state is unknown) and aiosmtplib's error
        raised, for the caller's mapping."""
        protocol, transport = smtp.mo_protocol, smtp.transport
        if protocol is None or transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        waiter = protocol.mo_expect(count)
        timer = protocol.mo_loop.call_later(timeout, _expire, waiter, timeout)
        try:
            for data in writes:
                transport.write(data)  # type: ignore[attr-defined]
            await waiter
            return protocol.mo_replies
        except BaseException as exc:
            smtp.close()
            if isinstance(exc, aiosmtplib.SMTPServerDisconnected) and protocol.mo_replies:
                got = protocol.mo_replies
                raise aiosmtplib.SMTPServerDisconnected(
                    f"{exc} in a pipelined transaction, after {len(got)} of {count} replies "
                    f"(the last: {got[-1].code} {got[-1].message})"
                ) from exc
            raise
        finally:
            timer.cancel()
            protocol.mo_done()

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
