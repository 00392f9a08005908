"""Lazy package attributes (PEP 562): a package names what it exports and where each
name lives, and the defining module is imported on first access.

So ``import mailoauth.pop3.protocol`` (sans-IO) does not drag in the clients and their
network libraries (aiosmtplib, aioimaplib, httpx) through ``mailoauth/__init__.py``,
while ``from mailoauth import ImapClient`` and ``mailoauth.ImapClient`` work as before.
Each package also imports the same names under ``typing.TYPE_CHECKING`` for type
checkers; tests/unit/test_public_api.py checks the two lists agree.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, modules: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, for ``modules``: a module
    (absolute name) -> the public names imported from it.

    ``__getattr__`` imports the module, caches the value on the package (later
    accesses are plain attribute reads) and returns it; for any other name it raises
    ``AttributeError`` as a module does. ``__dir__`` lists the package's globals and
    every export, loaded or not.
    """
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
