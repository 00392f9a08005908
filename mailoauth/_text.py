"""Moved to :mod:`mailoauth._util.text`; this private path re-exports it."""

from mailoauth._util.text import (
    CONTROL_CHARACTERS,
    TERMINAL_UNSAFE,
    escape_controls,
    find_control,
    refuse_controls,
)

__all__ = [
    "CONTROL_CHARACTERS",
    "TERMINAL_UNSAFE",
    "escape_controls",
    "find_control",
    "refuse_controls",
]
