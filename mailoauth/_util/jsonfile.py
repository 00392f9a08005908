"""Reading the library's small JSON files: the token store, the poller's state, the
command's login profiles, a Google service-account key.

One reading, one set of errors: a missing file is ``None`` (each caller knows what a
missing file means to it), a file that is not JSON is a
:class:`~mailoauth.errors.ConfigurationError` naming the file and the fix, and
:func:`json_object_member` picks the one top-level object each file is keyed by. Writing
is :func:`mailoauth._util.files.write_atomically`. Blocking: call from a worker thread
in async code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mailoauth.errors import ConfigurationError

__all__ = ["json_object_member", "read_json_file"]


def read_json_file(path: Path, what: str) -> object | None:
    """The parsed content of ``path``, or None if there is no such file.

    ``what`` names the file in messages ("token store", "poll state file"). Raises
    :class:`~mailoauth.errors.ConfigurationError` if the file is not valid JSON (or not
    UTF-8), and ``OSError`` if it cannot be read for another reason (permissions, a
    directory in its place).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc: object = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ConfigurationError(
            f"{what} {str(path)!r} is not valid JSON; fix or delete it"
        ) from exc
    return doc


def json_object_member(doc: object, key: str) -> dict[str, Any] | None:
    """``doc[key]`` if ``doc`` is a JSON object whose ``key`` is an object; else None
    (the caller says what kind of file it expected)."""
    member = doc.get(key) if isinstance(doc, dict) else None
    return member if isinstance(member, dict) else None
