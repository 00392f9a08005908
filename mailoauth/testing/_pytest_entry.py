"""The ``pytest11`` entry point: the pytest plugin when the testing extra is installed,
and nothing but a header line when it is not.

The entry point is registered by every install of mailoauth, including a production
one (the four runtime dependencies), where pytest may well be installed for the user's
own tests while pytest-asyncio, trustme or aiosmtpd are not. Loading the plugin there
would stop pytest with an ImportError before any test ran. So this module checks first,
without importing them, and only then asks pytest to load
:mod:`mailoauth.testing.pytest_plugin`.
"""

from __future__ import annotations

import importlib.util
from typing import Final

__all__ = ["MISSING", "PLUGIN_REQUIREMENTS"]

#: What the plugin imports beyond a production install: the ``testing`` extra.
PLUGIN_REQUIREMENTS: Final = ("pytest_asyncio", "trustme", "aiosmtpd")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses the name outright
        return False


MISSING: Final = [name for name in PLUGIN_REQUIREMENTS if not _installed(name)]

if MISSING:

    def pytest_report_header() -> str:
        return (
            f"mailoauth: the pytest plugin is off ({', '.join(MISSING)} not installed); "
            "for the mailoauth_* fixtures: pip install 'mailoauth[testing]'"
        )

else:
    pytest_plugins = ["mailoauth.testing.pytest_plugin"]
