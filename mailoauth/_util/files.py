"""Writing small private files so that a crash leaves the old or the new content.

Used by every file the library keeps secrets or progress in: the token store, the
poller's state, the command's login profiles.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["PRIVATE_DIR_MODE", "make_private_dirs", "write_atomically"]

#: Mode of every directory the library creates for its files (token store, its locks,
#: poll state, CLI profiles), whatever the umask.
PRIVATE_DIR_MODE: Final = 0o700


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: a temporary file in the same directory (created
    with ``mode``), fsync, ``os.replace``, then fsync of the directory. A crash at any
    point leaves either the old file or the new one, never a torn one. Missing parent
    directories are created with :func:`make_private_dirs`. Blocking: call it from a
    worker thread in async code. Raises ``OSError``."""
    directory = path.parent
    make_private_dirs(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode :data:`PRIVATE_DIR_MODE`.

    ``Path.mkdir(mode=..., parents=True)`` gives the parents ``0o777`` less the umask:
    with umask 0, world-writable directories above a secrets file. Each directory
    created here is chmod-ed explicitly, so the umask does not matter; directories that
    already exist are left as they are. Raises ``OSError``.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs to set
        os.chmod(path, PRIVATE_DIR_MODE)
    if not directory.is_dir():
        raise NotADirectoryError(f"{str(directory)!r} exists and is not a directory")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some platforms cannot open a directory.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
