"""How the command talks to its user: step lines with timings, warnings, redaction.

Every line goes through :class:`Printer`, which never receives a secret in full: tokens
are passed through :func:`redact` first (six characters and an ellipsis). Lines quote
server text (greetings, replies, error challenges), so :meth:`Printer.line` escapes
control characters (:func:`mailoauth._util.text.escape_controls`): a server cannot set the
terminal's title, clear the screen or draw a fake ``✓ AUTH`` line of its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from mailoauth._util.text import escape_controls, hide_tokens

__all__ = ["REDACT_KEEP", "Printer", "Timer", "print_diagnosis", "redact", "relative_time"]

#: Characters of a token shown before the ellipsis.
REDACT_KEEP = 6


def redact(secret: str | None) -> str:
    """The first :data:`REDACT_KEEP` characters and ``…``; ``-`` for nothing.

    Short values (under 12 characters) are hidden entirely: six of them would be most
    of the secret.
    """
    if not secret:
        return "-"
    if len(secret) < 2 * REDACT_KEEP:
        return "…"
    return secret[:REDACT_KEEP] + "…"


def relative_time(seconds: float) -> str:
    """``in 59 min`` / ``3 s ago`` style text for a time ``seconds`` from now."""
    ahead = seconds >= 0
    span = abs(seconds)
    if span < 90:
        text = f"{span:.0f} s"
    elif span < 90 * 60:
        text = f"{span / 60:.0f} min"
    elif span < 48 * 3600:
        text = f"{span / 3600:.1f} h"
    else:
        text = f"{span / 86400:.1f} days"
    return f"in {text}" if ahead else f"{text} ago"


@dataclass
class Timer:
    """Milliseconds since creation, for step lines."""

    started: float = field(default_factory=time.perf_counter)

    @property
    def ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def text(self) -> str:
        ms = self.ms
        return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _can_encode(stream: TextIO, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class Printer:
    """Step-by-step output: ``✓ LABEL  text in 12 ms``, warnings, notes, indented detail.

    Falls back to ASCII marks when the stream cannot encode the Unicode ones.
    """

    LABEL_WIDTH = 7

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        fancy = _can_encode(self.stream, "✓✗→…↳⚠")
        self.ok_mark = "✓" if fancy else "OK"
        self.fail_mark = "✗" if fancy else "!!"
        self.warn_mark = "⚠" if fancy else "!"
        self.arrow = "→" if fancy else "->"
        self.sub_mark = "↳" if fancy else "-"

    @property
    def stream(self) -> TextIO:
        # Looked up on each use so that redirected or captured stdout is honoured.
        return self._stream or sys.stdout

    def line(self, text: str = "") -> None:
        """Print ``text`` as exactly one line: control characters (ESC, CR, LF, C1,
        bidirectional overrides) are shown escaped, never acted on, and whatever looks
        like a token, in whatever slot it came, is cut to six characters."""
        print(hide_tokens(escape_controls(text)), file=self.stream, flush=True)

    def _step(self, mark: str, label: str, text: str, timer: Timer | None) -> None:
        timing = f" in {timer.text()}" if timer is not None else ""
        self.line(f"{mark} {label:<{self.LABEL_WIDTH}} {text}{timing}")

    def ok(self, label: str, text: str, timer: Timer | None = None) -> None:
        self._step(self.ok_mark, label, text, timer)

    def fail(self, label: str, text: str, timer: Timer | None = None) -> None:
        self._step(self.fail_mark, label, text, timer)

    def warn(self, text: str) -> None:
        self.line(f"  {self.warn_mark} {text}")

    def detail(self, text: str) -> None:
        self.line(f"  {self.sub_mark} {text}")

    def heading(self, text: str) -> None:
        self.line()
        self.line(f"── {text}" if _can_encode(self.stream, "─") else f"-- {text}")

    @contextmanager
    def waiting(self, text: str) -> Iterator[None]:
        """Say what long work is under way (``… text``) before it starts."""
        self.line(f"… {text}" if _can_encode(self.stream, "…") else f"... {text}")
        yield


def print_diagnosis(out: Printer, paragraphs: list[str]) -> None:
    """The ``Diagnosis:`` block after a failed step (nothing when no rule applied)."""
    if not paragraphs:
        return
    out.line()
    out.line("Diagnosis:")
    for text in paragraphs:
        out.line(f"  - {text}")
