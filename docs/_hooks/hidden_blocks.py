"""An MkDocs hook: the pages' hidden test blocks stay out of the built site.

``<!-- docs-test ... -->`` comments hold the setup and the checks with which
tests/integration/test_docs_examples.py runs a page's code; a reader sees none of them,
and now neither does the HTML source nor the search index.
"""

from __future__ import annotations

import re
from typing import Any

HIDDEN = re.compile(r"^<!-- docs-test(?: raises: \S+ -->|\n.*?^-->)[ \t]*\n?", re.M | re.S)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return HIDDEN.sub("", markdown)
