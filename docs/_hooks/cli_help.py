"""An MkDocs hook: the CLI page's reference section is the command's own ``--help``.

``<!-- cli-reference -->`` in a page becomes one section per command and subcommand,
walked from :func:`mailoauth.cli.build_parser` when the site is built, so the page
shows every subcommand there is (a new one included) with the help it prints today.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

MARKER = "<!-- cli-reference -->"
#: The terminal width the help is formatted for.
COLUMNS = "88"


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(("login", "google"), parser)`` for the command and every subcommand, in order."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def reference() -> str:
    """The Markdown of every command's ``--help``."""
    from mailoauth.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS  # argparse reads it when formatting
    try:
        sections = []
        for path, parser in commands(build_parser()):
            name = " ".join(("mailoauth", *path))
            help_text = parser.format_help().rstrip()
            sections.append(f"### `{name}`\n\n```text\n{help_text}\n```\n")
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(sections)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
