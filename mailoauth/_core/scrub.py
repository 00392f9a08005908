"""Scrubbing the secrets of a SASL exchange out of server text.

A server may echo what it was sent: ``535 5.7.8 Bad AUTH XOAUTH2 dXNlcj1...`` carries
the access token, base64-encoded, and that reply would otherwise land in an
:class:`~mailoauth.errors.AuthenticationError` and in DEBUG logs (aioimaplib logs every
line it receives). The auth loop (:func:`mailoauth._core.auth.authenticate`) wraps
each exchange in a :class:`Scrubber`; while it is active:

- the reply and the decoded error challenge are scrubbed before they reach a message;
- an exception raised by the exchange is scrubbed in place, its whole chain (the
  mapped error and the foreign one it came from);
- log records of :data:`SCRUBBED_LOGGERS` are scrubbed before any handler sees them.

What is scrubbed: the access token and the SASL initial response, raw, base64-encoded
whole, and base64-encoded at each of the three alignments at which they can sit inside
a longer base64 text (so an echo of a longer line that contains them is caught too).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

__all__ = ["MIN_SECRET_FORM", "REDACTED", "SCRUBBED_LOGGERS", "Scrubber", "secret_forms"]

#: What replaces a secret in server text.
REDACTED: Final = "<redacted>"
#: Shortest form of a secret that is scrubbed: shorter base64 fragments would match
#: ordinary text (and a token this short is not a secret worth the name).
MIN_SECRET_FORM: Final = 8
#: Loggers whose records may carry server text during authentication: aioimaplib logs
#: every line received; aiosmtplib and mailoauth's own client loggers may.
SCRUBBED_LOGGERS: Final = (
    "aioimaplib.aioimaplib",
    "aiosmtplib",
    "aiosmtplib.protocol",
    "aiosmtplib.smtp",
    "mailoauth.auth",
    "mailoauth.imap",
    "mailoauth.pop3",
    "mailoauth.smtp",
    "mailoauth.transport",
)

_T = TypeVar("_T")


def secret_forms(secret: bytes) -> set[str]:
    """Every text form of ``secret`` that server text can carry: raw, base64 whole, and
    the part of its base64 encoding that depends on ``secret`` alone at each alignment
    inside a longer base64 text (offset 0, 1 or 2 bytes into a 3-byte group)."""
    whole = base64.b64encode(secret).decode()
    forms = {secret.decode("latin-1"), whole, whole.rstrip("=")}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode()
        # Characters that mix in bits of the bytes before or after the secret are cut.
        start = (8 * offset + 5) // 6
        end = (8 * (offset + len(secret))) // 6
        forms.add(encoded[start:end])
    return {form for form in forms if len(form) >= MIN_SECRET_FORM}


class Scrubber:
    """Removes the given secrets from text. Use :meth:`active` around a SASL exchange
    so that log records are scrubbed too."""

    __slots__ = ("_forms", "_secrets")

    def __init__(self, *secrets: bytes | str) -> None:
        # The forms are worked out on the first scrub: most exchanges succeed without
        # a log record or an error, and never need them.
        self._secrets: tuple[bytes | str, ...] | None = secrets
        self._forms: list[str] = []

    def _all_forms(self) -> list[str]:
        if self._secrets is not None:
            forms: set[str] = set()
            for secret in self._secrets:
                forms |= secret_forms(secret.encode() if isinstance(secret, str) else secret)
            # Longest first: the initial response's base64 goes whole, not in pieces.
            self._forms = sorted(forms, key=len, reverse=True)
            self._secrets = None
        return self._forms

    def scrub(self, text: str) -> str:
        """``text`` with every form of every secret replaced by :data:`REDACTED`."""
        for form in self._all_forms():
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def scrub_fields(self, value: _T) -> _T:
        """A copy of the dataclass ``value`` with its ``str`` fields (and the ``str``
        values of its ``dict`` fields) scrubbed."""
        assert dataclasses.is_dataclass(value) and not isinstance(value, type)
        changes: dict[str, object] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if isinstance(item, str):
                changes[f.name] = self.scrub(item)
            elif isinstance(item, dict):
                changes[f.name] = {
                    k: self.scrub(v) if isinstance(v, str) else v for k, v in item.items()
                }
        return dataclasses.replace(value, **changes)

    def scrub_exception(self, exc: BaseException) -> None:
        """Scrub ``exc`` and every exception in its chain, in place: ``args`` and every
        ``str`` attribute (``reply``, ``server_reply``, aiosmtplib's ``message``)."""
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            current.args = tuple(
                self.scrub(arg) if isinstance(arg, str) else arg for arg in current.args
            )
            for name, item in list(vars(current).items()):
                if isinstance(item, str):
                    setattr(current, name, self.scrub(item))
            current = current.__cause__ or current.__context__

    @contextmanager
    def active(self) -> Iterator[Scrubber]:
        """While inside, records of :data:`SCRUBBED_LOGGERS` are scrubbed; an exception
        leaving the block is scrubbed in place before it propagates."""
        _FILTER.add(self)
        try:
            yield self
        except BaseException as exc:
            self.scrub_exception(exc)
            raise
        finally:
            _FILTER.discard(self)


class _ScrubFilter(logging.Filter):
    """Scrubs records while any :class:`Scrubber` is active. Protocol callbacks
    (aioimaplib's ``data_received``) run outside the authenticating task's context, so
    the active scrubbers are a process-wide set, not a context variable."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._active: list[Scrubber] = []

    def add(self, scrubber: Scrubber) -> None:
        with self._lock:
            self._active.append(scrubber)

    def discard(self, scrubber: Scrubber) -> None:
        with self._lock:
            if scrubber in self._active:
                self._active.remove(scrubber)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._active:
            return True
        with self._lock:
            active = list(self._active)
        try:
            text = record.getMessage()
        except Exception:  # a broken log call is the logging module's to report
            return True
        scrubbed = text
        for scrubber in active:
            scrubbed = scrubber.scrub(scrubbed)
        if scrubbed != text:
            record.msg, record.args = scrubbed, None
        return True


_FILTER: Final = _ScrubFilter()
for _name in SCRUBBED_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)
