"""Every code block of the documentation runs, so that no example can rot.

Each page of docs/, and README.md, is one test. Its ```python blocks run in order, in
one namespace (as a reader would paste them into one file or one ``python -m asyncio``
session); a block may use top-level ``await``. ``__name__`` is not ``"__main__"``, so a program's
``if __name__ == "__main__": asyncio.run(main(...))`` (which would reach the real Gmail
or Office 365) is skipped, and a hidden block calls ``main`` against the sandbox instead.

Hidden blocks are HTML comments, which the site and GitHub do not show::

    <!-- docs-test
    sandbox = await docs_sandbox(Personality.OFFICE365)
    user = sandbox.user("me@contoso.com")
    -->

They run where they stand: before a fragment, to give it the names it uses (a
``client_id``, a provider, a message); after a program, to call it and check what it
printed. A single-line ``<!-- docs-test raises: NAME -->`` says that the next block must
raise the exception ``NAME`` (an upstream bug's reproduction: when upstream fixes it,
this test says so).

What hidden blocks find in the namespace:

- ``await docs_sandbox(personality)``: a :class:`MailSandbox` for the rest of the page,
  with the hosts users type (``imap.gmail.com:993``, ``login.microsoftonline.com``, ...)
  routed to it, as tests/integration/test_examples.py does for examples/: visible code
  keeps the real host names and needs no dialer. ``trusted_as=`` names hosts its
  certificate must also cover (for a client that reaches them through a proxy).
- ``await docs_proxy()``: an HTTP proxy on loopback that follows those routes.
- ``docs_home()``: a fresh ``~`` for the page, also its working directory.
- ``printed()``: the standard output since the last call.
- ``docs_last_block``: the source of the last visible block (to run a test file that a
  page shows under pytest).
- ``with docs_unrouted():``: the page's routes lifted, for code that brings a sandbox of
  its own.
- ``docs_stack``: an ``AsyncExitStack`` for anything else to undo when the page ends.

```console blocks run too: each ``$ mailoauth ...`` line is run as ``python -m
mailoauth ...`` and must exit 0; only harmless commands belong in them (``--help``,
``demo``). Commands that need an account are shown
in ```sh blocks, which do not run.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import dataclasses
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from mailoauth._util import routing
from mailoauth.security import default_ssl_context
from mailoauth.testing.certs import SERVER_NAMES, TestCA
from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: Seconds one block may run (the sandbox answers in milliseconds; a poller is stopped
#: by its page well before this).
BLOCK_TIMEOUT = 60.0
#: Seconds one console command may run (``mailoauth demo`` takes a few).
COMMAND_TIMEOUT = 120.0

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[A-Za-z0-9_+-]*)")
_HIDDEN_OPEN = "<!-- docs-test"
_RAISES = re.compile(r"^<!-- docs-test raises: (?P<name>[A-Za-z_][A-Za-z0-9_.]*) -->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One runnable piece of a page."""

    kind: str  # "python", "hidden" or "console"
    line: int  # 1-based line of its first body line in the page
    source: str
    raises: str | None = None


def blocks(text: str) -> list[Block]:
    """The runnable blocks of a Markdown page, in order.

    Raises ``ValueError`` for an unclosed fence or hidden block, and for Python under
    another fence name (```py, ```python3, ```pycon), which would escape this test.
    """
    lines = text.splitlines()
    found: list[Block] = []
    raises: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _RAISES.match(line)
        if directive:
            raises = directive.group("name")
            i += 1
            continue
        if line.rstrip() == _HIDDEN_OPEN:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->"), None)
            if end is None:
                raise ValueError(f"line {i + 1}: a hidden block without its closing -->")
            found.append(Block("hidden", i + 2, "\n".join(lines[i + 1 : end])))
            i = end + 1
            continue
        fence = _FENCE_OPEN.match(line)
        if fence:
            indent, lang = fence.group("indent"), fence.group("lang")
            close = re.compile(rf"^{re.escape(indent)}```\s*$")
            end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
            if end is None:
                raise ValueError(f"line {i + 1}: a ``` fence without its closing ```")
            body = "\n".join(ln[len(indent) :] for ln in lines[i + 1 : end])
            if lang in {"py", "python3", "pycon", "py3"}:
                raise ValueError(f"line {i + 1}: write ```python, not ```{lang}")
            if lang in {"python", "console"}:
                found.append(Block(lang, i + 2, body, raises if lang == "python" else None))
                raises = None
            i = end + 1
            continue
        i += 1
    if raises is not None:
        raise ValueError(f"'docs-test raises: {raises}' is followed by no python block")
    return found


def pages() -> list[Path]:
    """Every page with something to run: README.md and the pages of docs/."""
    candidates = [README, *sorted(DOCS.rglob("*.md"))]
    return [p for p in candidates if blocks(p.read_text(encoding="utf-8"))]


def page_id(page: Path) -> str:
    """A page's test id: its path under docs/, or README.md."""
    return str(page.relative_to(DOCS if page.is_relative_to(DOCS) else ROOT))


@contextlib.contextmanager
def docs_unrouted() -> Iterator[None]:
    """Within the block, the page's routes are lifted (for code that brings a sandbox
    of its own, such as a guide's self-contained program)."""
    saved = (routing._addresses, routing._urls)
    routing._addresses, routing._urls = MappingProxyType({}), MappingProxyType({})
    try:
        yield
    finally:
        routing._addresses, routing._urls = saved


class RoutingProxy:
    """An HTTP proxy with a user name and password (``me``/``secret``) that sends each
    CONNECT tunnel where the page's routes send that address (the hosts users type
    reach the sandbox through it) and forwards plain-HTTP requests (the token endpoint
    routed to the sandbox's ``http://127.0.0.1``). Only loopback is ever reached.

    A real proxy (tinyproxy, microsocks) would resolve ``outlook.office365.com`` itself,
    which no route can change; tests/integration/test_proxies.py runs those.
    """

    CREDENTIALS = "Basic " + base64.b64encode(b"me:secret").decode()

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.tunnels: list[str] = []  # host:port of every CONNECT
        self.forwarded: list[str] = []  # the URL of every plain-HTTP request

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://me:secret@127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(self._handle(reader, writer), BLOCK_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request, *header_lines = head.split("\r\n")
        method, target, _version = request.split(" ")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in header_lines if line)
        }
        if headers.get("proxy-authorization") != self.CREDENTIALS:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            self.tunnels.append(target)
            route = routing.route_address(host, int(port))
            if route is None:  # nothing off this machine
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            up_reader, up_writer = await asyncio.open_connection(route.host, route.port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urllib.parse.urlsplit(target)
            self.forwarded.append(target)
            if url.hostname != "127.0.0.1":
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
            path = url.path + (f"?{url.query}" if url.query else "")
            kept = [
                ln
                for ln in header_lines
                if ln and not ln.lower().startswith(("proxy-", "connection:"))
            ]
            up_writer.write(
                "\r\n".join(
                    [f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""]
                ).encode("latin-1")
                + body
            )
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    finally:
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()


class PageRun:
    """The namespace and the event loop that one page's blocks share."""

    def __init__(
        self, page: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.page = page
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.namespace: dict[str, Any] = {
            "__name__": "docs_example",
            "docs_sandbox": self.docs_sandbox,
            "docs_home": self.docs_home,
            "docs_stack": self.stack,
            "docs_unrouted": docs_unrouted,
            "docs_proxy": self.docs_proxy,
            "printed": self.printed,
            "Personality": Personality,
        }

    def docs_home(self) -> Path:
        """A fresh, empty ``~`` (``$HOME``) for the rest of the page, and ``~`` as the
        working directory: where ``~/.config/mailoauth/tokens.json`` and the files a
        page names (``app-key.pem``) are."""
        home = Path(tempfile.mkdtemp(prefix="docs-home-"))
        self.stack.callback(shutil.rmtree, home, ignore_errors=True)
        self.monkeypatch.setenv("HOME", str(home))
        self.monkeypatch.delenv("MAILOAUTH_STORE", raising=False)
        self.monkeypatch.chdir(home)
        return home

    async def docs_sandbox(
        self, personality: Personality = Personality.GMAIL, *, trusted_as: Iterable[str] = ()
    ) -> MailSandbox:
        """A sandbox for the rest of the page, with the hosts users type routed to it.

        With ``trusted_as`` host names, its servers' certificate also names them and its
        CA is the system's (``SSL_CERT_FILE``): what a client reaching those names
        without a route (through a proxy) needs to verify it.
        """
        ca = TestCA()
        if trusted_as:
            ca.server_cert = ca.ca.issue_cert(*SERVER_NAMES, *trusted_as)
            self.monkeypatch.setenv("SSL_CERT_FILE", str(ca.files.ca))
            # The system's CAs are read once per process, into one shared context: make
            # it again now, and again (from the real system's) when the page ends.
            default_ssl_context.cache_clear()
            self.stack.callback(default_ssl_context.cache_clear)
        self.stack.callback(ca.cleanup)
        sandbox = MailSandbox(personality=personality, ca=ca)
        sandbox = await self.stack.enter_async_context(sandbox)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.stack.enter_context(sandbox.routes())
        return sandbox

    async def docs_proxy(self) -> RoutingProxy:
        """An HTTP proxy on loopback for the rest of the page (see :class:`RoutingProxy`)."""
        proxy = RoutingProxy()
        await proxy.start()
        self.stack.push_async_callback(proxy.stop)
        return proxy

    def printed(self) -> str:
        """Standard output since the last call."""
        return self.capsys.readouterr().out

    def run(self, block: Block) -> None:
        where = f"{self.page.relative_to(ROOT)}:{block.line}"
        # Line numbers in a traceback are the page's.
        source = "\n" * (block.line - 1) + block.source
        code = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if block.kind == "python":
            self.namespace["docs_last_block"] = block.source
        if block.raises is None:
            self._execute(code)
            return
        with pytest.raises(BaseException) as caught:
            self._execute(code)
        assert type(caught.value).__name__ == block.raises.rsplit(".", 1)[-1], (
            f"{where}: expected {block.raises}, got {caught.value!r}"
        )

    def _execute(self, code: Any) -> None:
        result = eval(code, self.namespace)  # the documentation's own code
        if inspect.iscoroutine(result):
            self.loop.run_until_complete(asyncio.wait_for(result, BLOCK_TIMEOUT))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.stack.aclose())
        finally:
            self.loop.close()


def console_commands(block: Block) -> Iterator[list[str]]:
    """The ``$ mailoauth ...`` commands of a console block (every ``$`` line must be one)."""
    for line in block.source.splitlines():
        if not line.startswith("$ "):
            continue  # what the command printed
        words = shlex.split(line[2:])
        assert words[:1] == ["mailoauth"], f"only mailoauth commands run here: {line!r}"
        yield words[1:]


def run_command(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILOAUTH_STORE": str(tmp_path / "tokens.json")}
    return subprocess.run(
        [sys.executable, "-m", "mailoauth", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_page_runs(
    page: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    run = PageRun(page, capsys, monkeypatch)
    try:
        for block in blocks(page.read_text(encoding="utf-8")):
            if block.kind == "console":
                for args in console_commands(block):
                    done = run_command(args, tmp_path)
                    assert done.returncode == 0, (
                        f"{page.name}:{block.line}: mailoauth {shlex.join(args)} exited "
                        f"{done.returncode}:\n{done.stderr}"
                    )
            else:
                run.run(block)
    finally:
        run.close()


def test_blocks_are_found_where_they_stand() -> None:
    page = (
        "# t\n<!-- docs-test\nx = 1\n-->\n\n1. step\n\n   ```python\n   y = x + 1\n   ```\n"
        "<!-- docs-test raises: ZeroDivisionError -->\n```python\n1 / 0\n```\n"
        "```sh\nmailoauth login google\n```\n```console\n$ mailoauth --help\nusage\n```\n"
    )
    found = blocks(page)
    assert [(b.kind, b.line, b.source, b.raises) for b in found] == [
        ("hidden", 3, "x = 1", None),
        ("python", 9, "y = x + 1", None),
        ("python", 13, "1 / 0", "ZeroDivisionError"),
        ("console", 19, "$ mailoauth --help\nusage", None),
    ]
    assert list(console_commands(found[3])) == [["--help"]]


@pytest.mark.parametrize(
    "page",
    ["```py\nx\n```\n", "```python\nx\n", "<!-- docs-test\nx\n", "<!-- docs-test raises: E -->\n"],
)
def test_a_block_that_would_escape_is_refused(page: str) -> None:
    with pytest.raises(ValueError):
        blocks(page)


def test_every_page_with_code_is_run() -> None:
    with_code = {
        p
        for p in [README, *DOCS.rglob("*.md")]
        if re.search(r"^\s*```(python|console)\s*$", p.read_text(encoding="utf-8"), re.M)
    }
    assert README in with_code  # its python blocks run, every one of them
    assert with_code <= set(pages())
    assert len(pages()) >= 10  # the guides, the architecture, the upstream reports
