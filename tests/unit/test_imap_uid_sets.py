"""UID sets: compressed into ranges, split under MAX_COMMAND_LINE, nothing lost."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailoauth.errors import ConfigurationError
from mailoauth.imap.client import _MAX_UID, _TAG_ROOM, MAX_COMMAND_LINE, _uid_ranges, _uid_sets


def expand(uid_set: str) -> list[int]:
    out: list[int] = []
    for piece in uid_set.split(","):
        first, _, last = piece.partition(":")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def line_length(uid_set: str, *command: str) -> int:
    tag = "X" * _TAG_ROOM
    return len(" ".join((tag, *command, uid_set)).encode()) + 2


def test_max_command_line_is_rfc_7162s_recommendation() -> None:
    assert MAX_COMMAND_LINE == 8192


def test_runs_become_ranges_in_order() -> None:
    assert _uid_ranges([9, 1, 2, 3, 7, 12, 10, 11, 5, 4, 3]) == ["1:5", "7", "9:12"]
    assert _uid_sets(range(1, 20_001), "UID", "FETCH", "(UID FLAGS)") == ["1:20000"]


def test_twenty_thousand_scattered_uids_are_split_under_the_line_limit() -> None:
    uids = list(range(1, 40_001, 2))  # no two consecutive: no range helps
    sets = _uid_sets(uids, "UID", "FETCH", "(UID FLAGS)")
    assert len(sets) > 1
    assert all(line_length(s, "UID", "FETCH", "(UID FLAGS)") <= MAX_COMMAND_LINE for s in sets)
    assert [u for s in sets for u in expand(s)] == uids
    # Packed: each set but the last would overflow with one more piece.
    for s, nxt in itertools.pairwise(sets):
        longer = s + "," + nxt.split(",", 1)[0]
        assert line_length(longer, "UID", "FETCH", "(UID FLAGS)") > MAX_COMMAND_LINE


@pytest.mark.parametrize("bad", [[], [0], [-3, 4], [_MAX_UID + 1]])
def test_no_uid_or_an_invalid_one_is_refused(bad: list[int]) -> None:
    with pytest.raises(ConfigurationError, match="UID"):
        _uid_sets(bad, "UID", "FETCH", "(FLAGS)")


def test_arguments_leaving_no_room_for_a_set_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="MAX_COMMAND_LINE"):
        _uid_sets([1], "UID", "COPY", '"' + "x" * MAX_COMMAND_LINE + '"')


@given(
    uids=st.lists(st.integers(min_value=1, max_value=_MAX_UID), min_size=1, max_size=3000)
    | st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=3000),
    extra=st.text(alphabet="ABCDEFGHIJ() []\\", max_size=3000),
)
def test_sets_cover_exactly_the_uids_in_order_within_the_limit(uids: list[int], extra: str) -> None:
    command = ("UID", "STORE", "+FLAGS.SILENT", "(" + extra + ")")
    sets = _uid_sets(uids, *command)
    assert [u for s in sets for u in expand(s)] == sorted(set(uids))
    assert all(line_length(s, *command) <= MAX_COMMAND_LINE for s in sets)
    for s in sets:
        pieces = s.split(",")
        bounds = [expand(p) for p in pieces]
        # Maximal ranges: no piece continues the one before it.
        assert all(b[0] > a[-1] + 1 for a, b in itertools.pairwise(bounds))
        assert all(":" not in p or p.split(":")[0] != p.split(":")[1] for p in pieces)
