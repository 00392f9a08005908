"""Moved to :mod:`mailoauth._util.files`; this private path re-exports it."""

from mailoauth._util.files import PRIVATE_DIR_MODE, make_private_dirs, write_atomically

__all__ = ["PRIVATE_DIR_MODE", "make_private_dirs", "write_atomically"]
