"""The documentation site builds strictly, and its pages cover what they promise.

The build is ``mkdocs build --strict`` into a temporary directory, as ``nox -s docs``
runs it: a broken link or anchor, a cross-reference mkdocstrings cannot resolve, a page
missing from the nav or a docstring griffe cannot read fails it. Every code block of
the pages runs in tests/integration/test_docs_examples.py.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import mailoauth.errors
from mailoauth.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Seconds the whole build may take (about 15 on an idle two-core machine).
BUILD_TIMEOUT = 600


def load_hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "_hooks" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        reason = "mkdocs is not installed: pip install -e '.[docs]' (the dev extra has it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must build the site")
        pytest.skip(reason)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", site],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    # The API reference rendered the docstrings, with the Sphinx roles made links.
    errors_page = (site / "reference" / "errors" / "index.html").read_text(encoding="utf-8")
    assert 'id="mailoauth.errors.PermanentTokenError"' in errors_page
    clients = (site / "reference" / "clients" / "index.html").read_text(encoding="utf-8")
    assert ":class:" not in clients and ":meth:" not in clients
    assert 'href="../errors/#mailoauth.errors.' in clients
    # The CLI page carries every subcommand's --help.
    cli = (site / "guides" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "usage: mailoauth check" in cli


def error_classes() -> set[str]:
    return {
        name
        for name in mailoauth.errors.__all__
        if inspect.isclass(obj := getattr(mailoauth.errors, name))
        and issubclass(obj, BaseException)
    }


def test_troubleshooting_has_a_section_for_every_error() -> None:
    page = (DOCS / "guides" / "troubleshooting.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^### (\w+)$", page, flags=re.M))
    missing = error_classes() - sections
    assert not missing, f"add a '### NAME' section (cause, fix) to troubleshooting.md: {missing}"
    assert sections <= error_classes(), sections - error_classes()  # none that is gone
    assert len(sections) >= 18


def test_the_cli_page_covers_every_subcommand() -> None:
    page = (DOCS / "guides" / "cli.md").read_text(encoding="utf-8")
    hook = load_hook("cli_help.py")
    assert hook.MARKER in page
    paths = [path for path, _parser in hook.commands(build_parser())]
    for name in {path[0] for path in paths if path}:
        assert re.search(rf"^## `{name}`", page, flags=re.M), (
            f"docs/guides/cli.md has no '## `{name}`' section for 'mailoauth {name}'"
        )
    reference = hook.reference()
    for path in paths:
        assert f"### `{' '.join(('mailoauth', *path))}`" in reference
    assert ("login", "google") in paths and ("token", "refresh") in paths


def test_sphinx_roles_become_links_or_code() -> None:
    griffe = pytest.importorskip("griffe")
    roles = load_hook("sphinx_roles.py")
    module = griffe.load("mailoauth.errors")
    text = roles._rewrite(
        module["CommandError"],
        "See :data:`PERMANENT_RESPONSE_CODES`, :class:`~mailoauth.errors.TLSError` and "
        ":class:`OSError`.",
    )
    assert '<autoref identifier="mailoauth.errors.PERMANENT_RESPONSE_CODES" optional>' in text
    assert "<code>TLSError</code></autoref>" in text
    assert text.endswith("and <code>OSError</code>.")
    literal = "For example::\n\n    poller.stop()\n\nOr:\n\n::\n\n    x\n"
    assert (
        roles._rewrite(module, literal) == "For example:\n\n    poller.stop()\n\nOr:\n\n\n    x\n"
    )


def test_hidden_test_blocks_stay_out_of_the_site() -> None:
    hook = load_hook("hidden_blocks.py")
    page = (
        "# T\n\n<!-- docs-test\nx = 1\n-->\n\n```python\nprint(x)\n```\n\n"
        "<!-- docs-test raises: E -->\n```python\nraise E\n```\n<!-- a comment -->\n"
    )
    shown = hook.on_page_markdown(page, None, None, None)
    assert (
        shown
        == "# T\n\n\n```python\nprint(x)\n```\n\n```python\nraise E\n```\n<!-- a comment -->\n"
    )


def test_the_readme_links_the_documentation_after_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.index("```sh")
    commands = readme[first_block : readme.index("```\n", first_block + 5)]
    assert "mailoauth demo" in commands and "pytest" in commands
    after = readme[readme.index("```\n", first_block + 5) :]
    link = re.search(r"^\*\*Documentation\*\*: .*\(docs/index\.md\)", after, flags=re.M)
    assert link is not None
    assert after.index(link.group(0)) < after.index("\n## ")  # before the first section
