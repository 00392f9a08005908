"""Every code block of the documentation runs, so that no example can rot.

Each page of docs/ is one test. Its ```python blocks run in order, in one namespace (as
a reader would paste them into one file or one ``python -m asyncio`` session); a block
may use top-level ``await``. ``__name__`` is not ``"__main__"``, so a program's
``if __name__ == "__main__": asyncio.run(main(...))`` (which would reach the real Gmail
or Office 365) is skipped, and a hidden block calls ``main`` against the sandbox instead.

Hidden blocks are HTML comments, which the site and GitHub do not show::

    <!-- docs-test
    sandbox = await docs_sandbox(Personality.OFFICE365)
    user = sandbox.user("me@contoso.com")
    -->

They run where they stand: before a fragment, to give it the names it uses (a
``client_id``, a provider, a message); after a program, to call it and check what it
printed (``printed()`` returns the standard output since the last call). A single-line
``<!-- docs-test raises: NAME -->`` says that the next block must raise the exception
``NAME`` (an upstream bug's reproduction: when upstream fixes it, this test says so).

``docs_home()`` gives the page a fresh ``~`` as its working directory, and
``docs_stack`` (an ``AsyncExitStack``) holds whatever else must be undone when the page
ends. ``docs_sandbox(personality)`` starts a :class:`MailSandbox` for the page and routes the
hosts users type (``imap.gmail.com:993``, ``login.microsoftonline.com``, ...) to it for
the rest of the page, as tests/integration/test_examples.py does for examples/:
visible code keeps the real host names and needs no dialer.

```console blocks run too: each ``$ mailoauth ...`` line is run as ``python -m
mailoauth.cli ...`` (what the ``mailoauth`` script runs) and must exit 0; only harmless
commands belong in them (``--help``, ``demo``). Commands that need an account are shown
in ```sh blocks, which do not run.
"""

from __future__ import annotations

import ast
import asyncio
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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailoauth.testing.personality import Personality
from mailoauth.testing.sandbox import MailSandbox

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
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
    """Every page with something to run."""
    return [p for p in sorted(DOCS.rglob("*.md")) if blocks(p.read_text(encoding="utf-8"))]


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

    async def docs_sandbox(self, personality: Personality = Personality.GMAIL) -> MailSandbox:
        """A sandbox for the rest of the page, with the hosts users type routed to it."""
        sandbox = await self.stack.enter_async_context(MailSandbox(personality=personality))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.stack.enter_context(sandbox.routes())
        return sandbox

    def printed(self) -> str:
        """Standard output since the last call."""
        return self.capsys.readouterr().out

    def run(self, block: Block) -> None:
        where = f"{self.page.relative_to(ROOT)}:{block.line}"
        # Line numbers in a traceback are the page's.
        source = "\n" * (block.line - 1) + block.source
        code = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if block.raises is None:
            self._execute(code)
            return
        with pytest.raises(BaseException) as caught:
            self._execute(code)
        assert type(caught.value).__name__ == block.raises.rsplit(".", 1)[-1], (
            f"{where}: expected {block.raises}, got {caught.value!r}"
        )

    def _execute(self, code: Any) -> None:
        result = eval(code, self.namespace)  # noqa: S307 - the documentation's own code
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
        [sys.executable, "-m", "mailoauth.cli", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
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
        for p in DOCS.rglob("*.md")
        if re.search(r"^\s*```(python|console)\s*$", p.read_text(encoding="utf-8"), re.M)
    }
    assert with_code <= set(pages())
    assert len(pages()) >= 10  # the guides, the architecture, the upstream reports
