"""Deprecated spellings that keep working, with a DeprecationWarning naming the new one."""

from __future__ import annotations

import warnings
from typing import TypeVar

__all__ = ["renamed_keyword"]

_T = TypeVar("_T")


def renamed_keyword(
    where: str, new: str, new_value: _T | None, old: str, old_value: _T | None
) -> _T | None:
    """The value of keyword ``new``, or of its old spelling ``old`` (with a
    DeprecationWarning pointing at the caller of ``where``).

    Raises TypeError when both are given, as Python does for a keyword given twice.
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"{where}() got both {new}= and its old spelling {old}=: pass {new}=")
    warnings.warn(
        f"{where}({old}=...) is deprecated: pass {new}= (one spelling for every provider)",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value
