"""A griffe extension for the API reference: Sphinx roles become links, ``#:`` comments
become docstrings, reST's ``::`` goes.

mailoauth's docstrings name other objects the Sphinx way (``:class:`~mailoauth.X```,
``:meth:`replace```, ``:data:`LIMIT```). mkdocstrings renders Markdown, where a role
would show up as literal text; this rewrites each one, once the package is loaded, into
an *optional* autorefs reference resolved in the scope of the docstring's object: a link
when the target is on a page of the site, plain code otherwise (a builtin such as
``OSError``, a private helper that has no page). ``~`` shows the last name only, as in
Sphinx.

Constants and enum members are documented the Sphinx way too, by ``#:`` comments above
them, which griffe does not read; they become the attribute's docstring.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

#: reST's literal-block marker: a paragraph ending in ``::`` (or a line of ``::`` alone)
#: before an indented block, which Markdown shows as code by its indentation alone.
_LITERAL_ALONE = re.compile(r"^[ \t]*::[ \t]*\n", re.M)
_LITERAL_END = re.compile(r"(\S)::[ \t]*$", re.M)
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|obj|exc|const):`([^`]+)`")


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``, or None."""
    head, _, rest = target.partition(".")
    if target.startswith("mailoauth."):
        return target
    try:
        path = obj.resolve(head)
    except Exception:  # NameResolutionError, or an alias that points nowhere
        return None
    return f"{path}.{rest}" if rest else path


def _comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above attribute ``obj``, or None."""
    lineno = obj.lineno
    if lineno is None:
        return None
    try:
        lines = obj.module.lines
    except Exception:  # no source (a compiled module)
        return None
    found: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return "\n".join(found) or None


def _rewrite(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        target = match.group(1).strip()
        short = target.startswith("~")
        target = target.lstrip("~!").strip()
        shown = target.rsplit(".", 1)[-1] if short else target
        code = f"<code>{html.escape(shown)}</code>"
        path = _resolve(obj, target)
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    text = _LITERAL_END.sub(r"\1:", _LITERAL_ALONE.sub("", text))
    return _ROLE.sub(link, text)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring of the package when it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is None and obj.is_attribute:
                comment = _comment_docstring(obj)
                if comment is not None:
                    obj.docstring = griffe.Docstring(comment, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)  # type: ignore[misc]

    # griffe 1.x calls the same hook by its older name.
    on_package_loaded = on_package
