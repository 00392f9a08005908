"""The one JSON-file reader (_util/jsonfile.py) and the five files read through it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import mailoauth
from mailoauth._util.jsonfile import json_object_member, read_json_file
from mailoauth.cli.profiles import load_profiles, profiles_path
from mailoauth.errors import ConfigurationError
from mailoauth.poll import FilePollStateStore
from mailoauth.tokens import FileTokenStore, GoogleTokenProvider


def test_a_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert read_json_file(tmp_path / "absent.json", "token store") is None


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe{", b"not json", b""])
def test_a_file_that_is_not_json_names_itself_and_the_fix(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError) as info:
        read_json_file(path, "poll state file")
    assert str(info.value) == f"poll state file {str(path)!r} is not valid JSON; fix or delete it"
    assert isinstance(info.value.__cause__, ValueError)


def test_other_read_failures_stay_os_errors(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        read_json_file(tmp_path, "token store")


def test_any_json_value_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps([1, {"a": None}]))
    assert read_json_file(path, "x") == [1, {"a": None}]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"credentials": {"k": 1}}, {"k": 1}),
        ({"credentials": []}, None),
        ({"other": {}}, None),
        ([{"credentials": {}}], None),
        (None, None),
        ("credentials", None),
    ],
)
def test_json_object_member(doc: object, expected: object) -> None:
    assert json_object_member(doc, "credentials") == expected


def _broken(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("{oops")
    return path


def test_every_library_json_file_reports_bad_json_the_same_way(tmp_path: Path) -> None:
    store = _broken(tmp_path, "tokens.json")
    with pytest.raises(ConfigurationError, match=r"^token store .* not valid JSON; fix or"):
        asyncio.run(FileTokenStore(store).load("k"))
    state = _broken(tmp_path, "state.json")
    with pytest.raises(ConfigurationError, match=r"^poll state file .* not valid JSON; fix or"):
        asyncio.run(FilePollStateStore(state).load("k"))
    profiles = profiles_path(tmp_path / "p" / "tokens.json")
    profiles.parent.mkdir()
    profiles.write_text("[")
    with pytest.raises(ConfigurationError, match=r"^profiles file .* not valid JSON; fix or"):
        load_profiles(tmp_path / "p" / "tokens.json")
    key = _broken(tmp_path, "sa.json")
    with pytest.raises(ConfigurationError, match=r"service account file .* not valid JSON"):
        GoogleTokenProvider.from_service_account(key, subject="u@example.com")


def test_a_missing_service_account_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigurationError, match=r"cannot read the service account file .*no such"):
        GoogleTokenProvider.from_service_account(path, subject="u@example.com")


def test_json_files_are_read_in_one_place() -> None:
    """``json.loads(`` over a file's content appears in the reader only; a new copy would
    drift from its errors."""
    package = Path(mailoauth.__file__).parent
    copies = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if "testing" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "json.loads(" in line and ("read_text(" in line or "read_bytes(" in line)
    ]
    assert copies == [], f"use mailoauth._util.jsonfile.read_json_file instead of: {copies}"
