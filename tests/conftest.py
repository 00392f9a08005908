"""The whole suite runs with DEBUG logging and is scanned for leaked secrets.

For every test, the ``mailoauth``, ``aioimaplib``, ``aiosmtplib``, ``httpx`` and
``httpcore`` loggers are set to DEBUG; afterwards every captured record (message and
traceback text) is scanned for any secret a :class:`FakeOAuthServer` issued or was
given (access and refresh tokens, client secrets, passwords), also inside base64 words
(a SASL initial response carries the token base64-encoded). So is the message and repr
of an exception that fails a test. A find fails the test, naming the logger and the
kind of secret, never the secret. The terminal summary reports the count of lines
scanned.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Generator, Iterable
from typing import Any

import pytest

from mailoauth.testing.oauth_server import issued_secrets

SCANNED_LOGGERS = ("mailoauth", "aioimaplib", "aiosmtplib", "httpx", "httpcore")
_WORD = re.compile(r"[A-Za-z0-9_\-.~+/=]{8,}")
_B64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_stats = {"records": 0, "lines": 0, "exceptions": 0}


def _words(text: str) -> set[str]:
    words = set(_WORD.findall(text))
    for b64 in _B64.findall(text):
        try:
            decoded = base64.b64decode(b64 + "=" * (-len(b64) % 4)).decode("latin-1")
        except (binascii.Error, ValueError):
            continue
        words.update(_WORD.findall(decoded))
    return words


def find_secret(text: str, secrets: frozenset[str]) -> str | None:
    """The kind of secret in ``text`` ("access token", ...), or None."""
    if not secrets or not text:
        return None
    found = _words(text) & secrets
    if not found:
        # Client secrets and passwords need not be word-shaped: check them whole.
        odd = [s for s in secrets if not s.startswith(("at-", "rt-"))]
        decoded = " ".join(_words(text))
        found = {s for s in odd if s in text or s in decoded}
    if not found:
        return None
    secret = next(iter(found))
    return {"at-": "an access token", "rt-": "a refresh token"}.get(
        secret[:3], "a client secret or password"
    )


def _record_text(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # a broken log call is not ours to judge here
        text = str(record.msg)
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += "\n" + record.exc_text
    return text


def scan_records(records: Iterable[logging.LogRecord]) -> list[str]:
    secrets = issued_secrets()
    leaks = []
    for record in records:
        text = _record_text(record)
        _stats["records"] += 1
        _stats["lines"] += text.count("\n") + 1
        kind = find_secret(text, secrets)
        if kind is not None:
            leaks.append(f"{kind} in a {record.levelname} record of logger {record.name!r}")
    return leaks


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Generator[None, None, None]:
    for name in SCANNED_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    yield
    leaks = scan_records([*caplog.get_records("setup"), *caplog.get_records("call")])
    if leaks:
        pytest.fail("secret leaked into the logs: " + "; ".join(sorted(set(leaks))))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome: Any = yield
    report = outcome.get_result()
    if call.excinfo is None:
        return
    _stats["exceptions"] += 1
    exc: BaseException | None = call.excinfo.value
    texts = []
    while exc is not None:  # the whole chain: causes carry messages too
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    kind = find_secret("\n".join(texts), issued_secrets())
    if kind is not None:
        report.outcome = "failed"
        report.longrepr = f"{kind} appears in the message or repr of the exception raised"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"secrets scan: {_stats['lines']} log lines in {_stats['records']} records and "
        f"{_stats['exceptions']} exceptions scanned against {len(issued_secrets())} "
        f"secrets; leaks fail their test"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: long-running load test; sized by MAILOAUTH_SOAK_* (small by default)"
    )
