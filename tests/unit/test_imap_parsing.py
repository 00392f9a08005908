"""IMAP response parsers, fed the line lists aioimaplib produces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailoauth.imap import parsing


def test_fetch_with_literal_and_items_after_it() -> None:
    body = b"Subject: x\r\n\r\nhello\r\n"
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 RFC822.SIZE 24 BODY[] {24}",
        bytearray(body),
        b" FLAGS (\\Seen \\Flagged))",
        b"2 FETCH (UID 9 FLAGS () BODY[] {5}",
        bytearray(b"abcde"),
        b")",
        b"Fetch completed.",
    ]
    records = parsing.parse_fetch(lines)
    assert [r.uid for r in records] == [7, 9]
    assert records[0].sections["BODY[]"] == body
    assert records[0].flags == frozenset({"\\Seen", "\\Flagged"})
    assert records[0].size == 24
    assert records[1].flags == frozenset()
    assert records[1].sections["BODY[]"] == b"abcde"


def test_fetch_header_section_and_unsolicited_records() -> None:
    lines: list[bytes | bytearray] = [
        b"3 FETCH (FLAGS (\\Seen))",  # unsolicited: no UID
        b"4 FETCH (UID 12 BODY[HEADER] {3}",
        bytearray(b"a\r\n"),
        b")",
        b"done",
    ]
    records = parsing.parse_fetch(lines)
    assert [r.uid for r in records] == [None, 12]
    assert records[1].sections == {"BODY[HEADER]": b"a\r\n"}


def test_search_with_and_without_keyword() -> None:
    assert parsing.parse_search([b"SEARCH 1 2 3", b"Search completed."]) == [1, 2, 3]
    assert parsing.parse_search([b"4 5", b"Search completed (0.001 secs)."]) == [4, 5]
    assert parsing.parse_search([b"SEARCH", b"Search completed."]) == []


def test_list_quoted_literal_and_utf7_names() -> None:
    lines: list[bytes | bytearray] = [
        b'(\\HasNoChildren) "." INBOX',
        b'LIST (\\HasChildren \\Noselect) "/" "Sent Items"',
        b'(\\HasNoChildren) "." "&AMk-t&AOk-"',
        b"(\\HasNoChildren) NIL {5}",
        bytearray(b"Plain"),
        b"List completed.",
    ]
    folders = parsing.parse_list(lines)
    assert [f.name for f in folders] == ["INBOX", "Sent Items", "Été", "Plain"]
    assert folders[1].delimiter == "/" and "\\Noselect" in folders[1].flags
    assert folders[3].delimiter is None


def test_select_and_status_and_appenduid() -> None:
    lines: list[bytes | bytearray] = [
        b"FLAGS (\\Answered \\Seen)",
        b"OK [PERMANENTFLAGS (\\Seen \\*)] Flags permitted.",
        b"3 EXISTS",
        b"0 RECENT",
        b"OK [UIDVALIDITY 1700000000] UIDs valid",
        b"OK [UIDNEXT 4] Predicted next UID",
        b"[READ-WRITE] Select completed.",
    ]
    info = parsing.parse_select("INBOX", lines, readonly=False)
    assert (info.exists, info.uidvalidity, info.uidnext) == (3, 1700000000, 4)
    assert info.flags == frozenset({"\\Answered", "\\Seen"})
    assert parsing.parse_status([b'"INBOX" (MESSAGES 2 UIDNEXT 3)', b"ok"]) == {
        "MESSAGES": 2,
        "UIDNEXT": 3,
    }
    assert parsing.parse_appenduid([b"[APPENDUID 38505 3955] APPEND completed"]) == 3955
    assert parsing.parse_appenduid([b"APPEND completed"]) is None
    # Found by the fuzzer: a value that is not a number raised ValueError.
    assert parsing.parse_status([b'"INBOX" (MESSAGES x UIDNEXT 3 UNSEEN \xc2\xb2)']) == {
        "UIDNEXT": 3
    }


def test_quote_escapes() -> None:
    assert parsing.quote('a"b\\c') == '"a\\"b\\\\c"'


@given(st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=30))
def test_modified_utf7_round_trips(name: str) -> None:
    encoded = parsing.encode_mailbox(name)
    assert encoded.isascii()
    inner = encoded[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    assert parsing.decode_mailbox(inner) == name


@given(st.lists(st.one_of(st.binary(max_size=40), st.binary(max_size=40).map(bytearray))))
def test_parsers_never_raise_on_junk(lines: list[bytes | bytearray]) -> None:
    parsing.parse_fetch(lines)
    parsing.parse_search(lines)
    parsing.parse_list(lines)
    parsing.parse_status(lines)
    parsing.parse_select("x", lines, readonly=True)
