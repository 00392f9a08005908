"""Every private member of aiosmtplib and aioimaplib that mailoauth touches, checked.

mailoauth overrides or reaches into a few internals of the two libraries (see
DESIGN.md, "Third-party internals"). An upgrade that renames or reshapes one must fail
here, naming the member and the installed version, and not at a user's first connect.

To extend: add a :class:`Member` row to :data:`MEMBERS`. :func:`test_the_table_is_complete`
scans the modules that import the libraries for ``._name`` uses and ``def _name``
overrides of names the libraries define, and fails for any not in the table.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aioimaplib.aioimaplib as aio
import aiosmtplib
import aiosmtplib.protocol
import pytest
from packaging.requirements import Requirement

import mailoauth

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

Kind = Literal["method", "coroutine", "attribute"]


@dataclass(frozen=True)
class Member:
    """One private member: where it lives, what shape mailoauth relies on, and where
    mailoauth uses it."""

    owner: str  # "module:Class"
    name: str
    kind: Kind
    used_in: str
    #: methods: the leading parameter names after ``self`` that mailoauth passes.
    params: tuple[str, ...] = ()
    #: attributes: the type of the value on a fresh instance.
    value_type: type | tuple[type, ...] | None = None

    @property
    def distribution(self) -> str:
        return self.owner.split(".")[0]

    def where(self) -> str:
        version = importlib.metadata.version(self.distribution)
        return (
            f"{self.owner.replace(':', '.')}.{self.name} ({self.kind}, used in "
            f"{self.used_in}) with {self.distribution} {version}"
        )


SMTP = "aiosmtplib.smtp:SMTP"
SMTP_PROTOCOL = "aiosmtplib.protocol:SMTPProtocol"
IMAP_PROTOCOL = "aioimaplib.aioimaplib:IMAP4ClientProtocol"
IMAP_COMMAND = "aioimaplib.aioimaplib:Command"

MEMBERS: tuple[Member, ...] = (
    # -- aiosmtplib: the connection core supplies the socket ------------------------
    Member(
        SMTP, "_create_connection", "coroutine", "smtp/client.py _CoreSMTP (override)", ("timeout",)
    ),
    Member(
        SMTP,
        "_on_connection_lost",
        "method",
        "smtp/client.py _CoreSMTP._create_connection",
        ("protocol",),
    ),
    Member(SMTP, "_ehlo_or_helo_if_needed", "coroutine", "smtp/client.py _CoreSMTP.mo_starttls"),
    Member(SMTP, "_reset_server_state", "method", "smtp/client.py _CoreSMTP.mo_starttls"),
    Member(
        SMTP_PROTOCOL,
        "__init__",
        "method",
        "smtp/client.py _CoreSMTP._create_connection",
        ("loop", "connection_lost_callback"),
    ),
    Member(
        SMTP_PROTOCOL,
        "_buffer",
        "attribute",
        "smtp/client.py mo_starttls (cleared after STARTTLS)",
        value_type=bytearray,
    ),
    Member(
        SMTP_PROTOCOL, "_over_ssl", "attribute", "smtp/client.py mo_starttls (set)", value_type=bool
    ),
    # -- aioimaplib: the protocol is fed by the connection core ---------------------
    Member(
        IMAP_PROTOCOL,
        "__init__",
        "method",
        "imap/_aioimaplib.py ImapProtocol",
        ("loop", "conn_lost_cb"),
    ),
    Member(
        IMAP_PROTOCOL,
        "_handle_line",
        "method",
        "imap/_aioimaplib.py ImapProtocol._line",
        ("line", "current_cmd"),
    ),
    Member(
        IMAP_PROTOCOL,
        "_response_done",
        "method",
        "imap/_aioimaplib.py ImapProtocol (override)",
        ("line",),
    ),
    Member(
        IMAP_PROTOCOL,
        "_untagged_response",
        "method",
        "imap/_aioimaplib.py ImapProtocol (override)",
        ("line",),
    ),
    Member(
        IMAP_PROTOCOL,
        "_idle_event",
        "attribute",
        "imap/_aioimaplib.py ImapProtocol: replaced by a _Signal; _give_up, start_idle",
        value_type=asyncio.Event,
    ),
    Member(
        IMAP_COMMAND,
        "_expected_size",
        "attribute",
        "imap/_aioimaplib.py (literal size)",
        value_type=int,
    ),
    Member(
        IMAP_COMMAND,
        "_resp_literal_data",
        "attribute",
        "imap/_aioimaplib.py (literal bytes so far)",
        value_type=bytearray,
    ),
    Member(
        IMAP_COMMAND,
        "_resp_lines",
        "attribute",
        "imap/_aioimaplib.py _FetchCommand, RawCommand",
        value_type=list,
    ),
    Member(
        IMAP_COMMAND,
        "_event",
        "attribute",
        "imap/_aioimaplib.py (failing pending commands; start_idle replaces it)",
        value_type=asyncio.Event,
    ),
    Member(
        IMAP_COMMAND,
        "_exception",
        "attribute",
        "imap/_aioimaplib.py (failing pending commands)",
        value_type=type(None),
    ),
    Member(
        IMAP_COMMAND,
        "_timer",
        "attribute",
        "imap/_aioimaplib.py (failing pending commands; start_idle replaces it)",
        value_type=asyncio.Handle,
    ),
)

#: The modules that import aiosmtplib or aioimaplib: the only places that may touch
#: their internals (relative to the package).
USERS = ("smtp/client.py", "smtp/pool.py", "imap/_aioimaplib.py", "imap/client.py")


def owner_class(member: Member) -> type:
    module, _, name = member.owner.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def fresh_instance(cls: type, loop: asyncio.AbstractEventLoop) -> Any:
    """An instance of ``cls`` as aiosmtplib/aioimaplib build one, to read attributes."""
    factories: dict[type, Callable[[], Any]] = {
        aiosmtplib.protocol.SMTPProtocol: lambda: aiosmtplib.protocol.SMTPProtocol(loop=loop),
        aio.Command: lambda: aio.Command("NOOP", "A1", loop=loop),
        aio.IMAP4ClientProtocol: lambda: aio.IMAP4ClientProtocol(loop),
        aiosmtplib.SMTP: lambda: aiosmtplib.SMTP(hostname="localhost"),
    }
    return factories[cls]()


@pytest.mark.asyncio
@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: f"{m.owner.split(':')[1]}.{m.name}")
async def test_member_exists_with_the_expected_shape(member: Member) -> None:
    cls = owner_class(member)
    if member.kind == "attribute":
        instance = fresh_instance(cls, asyncio.get_running_loop())
        assert hasattr(instance, member.name), f"{member.where()} is missing"
        value = getattr(instance, member.name)
        assert member.value_type is not None
        assert isinstance(value, member.value_type), (
            f"{member.where()} is now {type(value).__name__}, not {member.value_type}"
        )
        return
    function = getattr(cls, member.name, None)
    assert callable(function), f"{member.where()} is missing"
    is_coroutine = inspect.iscoroutinefunction(function)
    assert is_coroutine == (member.kind == "coroutine"), (
        f"{member.where()} is {'now' if is_coroutine else 'no longer'} a coroutine function"
    )
    params = list(inspect.signature(function).parameters)[1:]  # after self
    assert params[: len(member.params)] == list(member.params), (
        f"{member.where()} now takes {params}, mailoauth passes {list(member.params)}"
    )


def library_private_names() -> set[str]:
    """Every single-underscore name the two libraries' classes define or set in
    ``__init__`` (read from the source, so instance attributes count too)."""
    names: set[str] = set()
    for module in (aio, aiosmtplib.smtp, aiosmtplib.protocol, aiosmtplib.esmtp):
        source = inspect.getsource(module)
        names |= set(re.findall(r"def (_[a-z]\w*)\(", source))
        names |= set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", source))
    return names


def test_the_table_is_complete() -> None:
    package = Path(mailoauth.__file__).parent
    ours = library_private_names()
    listed = {m.name for m in MEMBERS}
    missing: dict[str, list[str]] = {}
    for relative in USERS:
        source = (package / relative).read_text()
        # What mailoauth sets itself on its own objects is not the libraries'.
        own = set(re.findall(r"self\.(_[a-z]\w*)\s*(?::[^=\n]+)?=", source))
        own -= {"_buffer", "_over_ssl", "_exception"}  # set on library objects: theirs
        # Attribute uses, and methods defined in classes (overrides); module-level
        # functions are mailoauth's own.
        used = set(re.findall(r"\.(_[a-z]\w*)", source)) | set(
            re.findall(r"^[ \t]+(?:async )?def (_[a-z]\w*)\(", source, re.MULTILINE)
        )
        for name in sorted((used & ours) - listed - own):
            missing.setdefault(name, []).append(relative)
    assert not missing, (
        f"mailoauth uses private members of aiosmtplib/aioimaplib not in MEMBERS: {missing}; "
        f"add a Member row for each (tests/unit/test_private_members.py)"
    )


def test_the_installed_versions_are_inside_the_declared_ranges() -> None:
    # The table is checked against what is installed; pyproject.toml says what may be.
    pyproject = Path(mailoauth.__file__).parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    declared = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"]}
    for dist in ("aiosmtplib", "aioimaplib"):
        version = importlib.metadata.version(dist)
        assert declared[dist].contains(version), (
            f"{dist} {version} is installed, outside the declared {declared[dist]}"
        )
