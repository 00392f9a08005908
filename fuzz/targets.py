"""Fuzz targets: each takes arbitrary bytes, feeds them to one parser, and lets only
mailoauth's own errors (:class:`~mailoauth.errors.MailOAuthError`) escape.

A target returns normally or raises a ``MailOAuthError``; anything else (``IndexError``,
``UnicodeDecodeError``, ``RecursionError``, ...) is a bug the fuzzer reports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable

from mailoauth.errors import MailOAuthError
from mailoauth.imap import parsing
from mailoauth.pop3.protocol import NEED_DATA, AuthChallenge, Pop3Protocol
from mailoauth.sasl import XOAuth2, decode_error_challenge
from mailoauth.tokens.responses import parse_device_authorization, parse_token_response

__all__ = ["TARGETS", "imap_parsers", "pop3_protocol", "sasl_challenge", "token_response"]

_NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
_MAX_EVENTS = 10_000


def _pieces(data: bytes) -> list[bytes]:
    """Split ``data`` where the first byte says, so reads of every size are tried."""
    if not data:
        return []
    step = data[0] % 17 + 1
    body = data[1:]
    return [body[i : i + step] for i in range(0, len(body), step)]


def _transaction() -> Pop3Protocol:
    proto = Pop3Protocol()
    proto.receive_data(b"+OK ready\r\n")
    proto.next_event()
    proto.auth(XOAuth2("u@example.test", "at-fuzz"))
    proto.receive_data(b"+OK logged in\r\n")
    proto.next_event()
    return proto


def pop3_protocol(data: bytes) -> None:
    """Server bytes answering a pipelined CAPA/STAT/LIST/UIDL/RETR/TOP/DELE/NOOP, then
    the end of the stream. With the first byte odd, the bytes are the greeting and
    AUTH exchange instead."""
    if data[:1] and data[0] & 1:
        proto = Pop3Protocol()
        proto_auth = True
    else:
        proto = _transaction()
        proto_auth = False
        for command in (
            proto.capa(),
            proto.stat(),
            proto.list(),
            proto.uidl(),
            proto.retr(1),
            proto.top(1, 0),
            proto.dele(1),
            proto.noop(),
        ):
            assert command.endswith(b"\r\n")
    events = 0

    def drain() -> None:
        nonlocal events, proto_auth
        while events < _MAX_EVENTS:
            event = proto.next_event()
            events += 1
            if event is NEED_DATA:
                return
            if (
                proto_auth
                and type(event).__name__ == "Greeting"
                and proto.state.name == ("AUTHORIZATION")
            ):
                proto.auth(XOAuth2("u@example.test", "at-fuzz"))
                proto_auth = False
            elif isinstance(event, AuthChallenge):
                proto.auth_continue()
            elif not proto.pending_responses:
                return

    for piece in _pieces(data):
        proto.receive_data(piece)
        drain()
    proto.receive_data(b"")
    drain()


def sasl_challenge(data: bytes) -> None:
    """An error challenge as the server sent it: raw, and as text."""
    decode_error_challenge(data)
    decode_error_challenge(data.decode("latin-1"))


def token_response(data: bytes) -> None:
    """A token endpoint's answer: status from the first two bytes, body the rest."""
    status = 100 + int.from_bytes(data[:2], "big") % 500 if len(data) >= 2 else 200
    body = data[2:]
    content_type = ("application/json", "text/html", None)[len(body) % 3]
    parse_token_response(status, body, now=_NOW, content_type=content_type, secrets=["s3cret"])
    parse_device_authorization(status, body, content_type=content_type)


def imap_parsers(data: bytes) -> None:
    """Untagged response lines (split at CRLF) through every response parser."""
    lines: list[bytes | bytearray] = list(data.split(b"\r\n"))
    parsing.parse_fetch(lines)
    parsing.parse_search(lines)
    parsing.parse_list(lines)
    parsing.parse_select("INBOX", lines, False)
    parsing.parse_status(lines)
    parsing.parse_appenduid(lines)
    parsing.decode_mailbox(data.decode("latin-1"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "pop3": pop3_protocol,
    "sasl": sasl_challenge,
    "token": token_response,
    "imap": imap_parsers,
}


def run(target: Callable[[bytes], None], data: bytes) -> None:
    """Call ``target``; swallow mailoauth's own errors, let anything else through."""
    with contextlib.suppress(MailOAuthError):
        target(data)
