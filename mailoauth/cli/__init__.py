"""The ``mailoauth`` command: ``demo``, ``login``, ``token``, ``check``.

``main(argv)`` parses the arguments, runs one subcommand and turns any error into one
paragraph on stderr (exit status 1); ``--debug`` shows the traceback and the library's
DEBUG log instead. Usage errors exit with status 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import traceback
from collections.abc import Sequence

from mailoauth._util.text import escape_controls, hide_tokens
from mailoauth.errors import MailOAuthError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the whole command tree."""
    from mailoauth import __version__
    from mailoauth.cli import check, demo, login, poll, token

    parser = argparse.ArgumentParser(
        prog="mailoauth",
        description=(
            "SMTP, IMAP and POP3 with OAuth 2.0. Start with 'mailoauth demo': it runs "
            "everything against an in-process sandbox, no account needed."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mailoauth {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    demo.add_parser(subparsers)
    login.add_parser(subparsers)
    token.add_parser(subparsers)
    check.add_parser(subparsers)
    poll.add_parser(subparsers)
    return parser


DEBUG_HELP = "on error show the traceback; log the library's DEBUG lines to stderr"
#: The line after every failure when --debug was not given.
DEBUG_HINT = "(run with --debug for the traceback and the library's DEBUG log)"


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every subcommand too, so that it works wherever it is placed.

    A subcommand's ``--debug`` defaults to SUPPRESS: only given, it sets ``debug``
    (never resetting the one given before the subcommand).
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--debug" in a.option_strings for a in sub._actions):
                    sub.add_argument(
                        "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
                    )
                _add_debug_everywhere(sub)


def render_error(exc: BaseException) -> str:
    """One paragraph for ``exc``, wrapped for a terminal."""
    from mailoauth.cli.diagnose import for_the_command

    text = for_the_command(str(exc).strip()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, MailOAuthError):
        text = f"{exc.strerror or text}" + (f": {exc.filename}" if exc.filename else "")
    # The message may quote server text: show its control characters, never obey them;
    # and a token given in the wrong slot is never printed.
    text = hide_tokens(escape_controls(text))
    return textwrap.fill(f"mailoauth: error: {text}", width=100, break_on_hyphens=False)


class _EscapingFormatter(logging.Formatter):
    """--debug log lines quote server text too; tracebacks keep their line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    parser = build_parser()
    _add_debug_everywhere(parser)
    args = parser.parse_args(argv)
    debug: bool = args.debug
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_EscapingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.basicConfig(level=logging.DEBUG, handlers=[handler])
        logging.getLogger("mailoauth").setLevel(logging.DEBUG)
    try:
        status: int = args.handler(args)
    except (MailOAuthError, OSError) as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(render_error(exc), file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:
        print("mailoauth: interrupted", file=sys.stderr)
        return 130
    if status != 0 and not debug:
        # A failure reported by the subcommand itself (check's ✗ step, a refused
        # refresh) gets the hint too.
        print(DEBUG_HINT, file=sys.stderr, flush=True)
    return status
