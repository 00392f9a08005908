"""The pure parts of the test servers: server-side SASL parsing (checked against the
client mechanisms in :mod:`mailoauth.sasl`), IMAP syntax, POP3 dot-stuffing and the
mail store's change notifications."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailoauth._util.text import CONTROL_CHARACTERS
from mailoauth.sasl import OAuthBearer, XOAuth2
from mailoauth.testing._imap_syntax import (
    ImapSyntaxError,
    Literal,
    Token,
    compile_search,
    format_uid_set,
    parse_fetch_items,
    parse_sequence_set,
    render_fetch_item,
    tokenize,
)
from mailoauth.testing.bearer_auth import (
    BearerCredentials,
    SaslParseError,
    decode_sasl_response,
    parse_oauthbearer,
    parse_response,
    parse_xoauth2,
)
from mailoauth.testing.mailstore import MailStore, StoredMessage
from mailoauth.testing.pop3_server import dot_stuff

names = st.text(
    alphabet=st.characters(exclude_characters=CONTROL_CHARACTERS, exclude_categories=["Cs"]),
    min_size=1,
    max_size=40,
)
tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~+/", min_size=1, max_size=80)


@given(names, tokens)
def test_server_parses_what_the_client_mechanisms_send(user: str, token: str) -> None:
    x = XOAuth2(user, token).initial_response()
    assert parse_xoauth2(x) == BearerCredentials(user, token)
    o = OAuthBearer(user, token, host="h", port=1).initial_response()
    assert parse_oauthbearer(o) == BearerCredentials(user, token)


def test_oauthbearer_unescapes_saslname() -> None:
    data = b"n,a=a=2Cb=3Dc,\x01auth=Bearer T\x01\x01"
    assert parse_response("OAUTHBEARER", data) == BearerCredentials("a,b=c", "T")


@pytest.mark.parametrize(
    "data",
    [
        b"n,,\x01auth=Bearer T\x01\x01",  # no a= (Dovecot refuses it too)
        b"n,a=u,\x01auth=Basic T\x01\x01",
        b"n,a=u=2X,\x01auth=Bearer T\x01\x01",
        b"n,a=u,\x01auth=Bearer T",
        b"p=x,a=u,\x01auth=Bearer T\x01\x01",
    ],
)
def test_malformed_oauthbearer_is_refused(data: bytes) -> None:
    with pytest.raises(SaslParseError):
        parse_oauthbearer(data)


@pytest.mark.parametrize(
    "data", [b"user=u\x01auth=Bearer T\x01", b"auth=Bearer T\x01\x01", b"\xff\x01\x01"]
)
def test_malformed_xoauth2_is_refused(data: bytes) -> None:
    with pytest.raises(SaslParseError):
        parse_xoauth2(data)


def test_sasl_response_decoding() -> None:
    assert decode_sasl_response(b"=") == b""
    assert decode_sasl_response(b"AQ==\r\n") == b"\x01"
    with pytest.raises(SaslParseError):
        decode_sasl_response(b"not base64!")


def test_credentials_repr_hides_the_token() -> None:
    assert "secret" not in repr(BearerCredentials("u", "secret"))


# -- IMAP syntax -------------------------------------------------------------------------


def test_tokenize_atoms_strings_lists_literals_and_sections() -> None:
    segments = [b'"Archive" (\\Seen $Junk) "1-Feb-2024 10:00:00 +0000" ', Literal(b"a\r\nb"), b""]
    assert tokenize(segments) == [
        b"Archive",
        ["\\Seen", "$Junk"],
        b"1-Feb-2024 10:00:00 +0000",
        b"a\r\nb",
    ]
    fetch = tokenize([b"1:* (UID BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]<0.100>)"])
    assert fetch == ["1:*", ["UID", "BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]<0.100>"]]
    assert tokenize([b'"a \\"quoted\\" \\\\ one"']) == [b'a "quoted" \\ one']
    for bad in (b"(a", b"a)", b'"open'):
        with pytest.raises(ImapSyntaxError):
            tokenize([bad])


def test_sequence_sets() -> None:
    assert parse_sequence_set("1:3,5,7:*", 9) == [(1, 3), (5, 5), (7, 9)]
    assert parse_sequence_set("*:4", 2) == [(2, 4)]
    assert parse_sequence_set("1:*", 0) == [(0, 1)]
    for bad in ("0", "1:0", "a", "1,,2", ""):
        with pytest.raises(ImapSyntaxError):
            parse_sequence_set(bad, 5)
    assert format_uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"


def test_search_keys() -> None:
    msgs = [
        StoredMessage(1, b"From: Bob <bob@x>\r\nSubject: Hi\r\n\r\nhello", frozenset({"\\Seen"})),
        StoredMessage(2, b"From: carol@x\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nbye"),
    ]

    def run(*keys: Token) -> list[int]:
        pred = compile_search(list(keys), max_seq=2, max_uid=2)
        return [m.uid for i, m in enumerate(msgs) if pred(i + 1, m, False)]

    assert run("ALL") == [1, 2]
    assert run("UNSEEN") == [2]
    assert run("SUBJECT", "grüße") == [2]
    assert run("OR", "FROM", "bob", "BODY", "bye") == [1, 2]
    assert run("NOT", "SEEN", "UID", "1:*") == [2]
    assert run(["SEEN", "2"]) == []
    assert run("CHARSET", "UTF-8", "LARGER", "30") == [1, 2]
    for bad in (["BOGUS"], ["FROM"], ["SINCE", "yesterday"], []):
        with pytest.raises(ImapSyntaxError):
            compile_search(list(bad), max_seq=2, max_uid=2)


def test_fetch_rendering() -> None:
    msg = StoredMessage(7, b"From: a\r\nSubject: s\r\nX-A: 1\r\n\r\nbody\r\n")
    items = parse_fetch_items(["UID", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "BODY[TEXT]<1.2>"])
    assert not items[1].sets_seen and items[2].sets_seen
    rendered = [render_fetch_item(i, msg, set()) for i in items]
    assert rendered == [
        b"UID 7",
        b"BODY[HEADER.FIELDS (SUBJECT)] {14}\r\nSubject: s\r\n\r\n",
        b"BODY[TEXT]<1> {2}\r\nod",
    ]
    with pytest.raises(ImapSyntaxError):
        parse_fetch_items("ENVELOPE")


# -- POP3 and the store -------------------------------------------------------------------


def test_dot_stuffing() -> None:
    assert dot_stuff(b"a\n.b\r\n..c") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


@pytest.mark.asyncio
async def test_store_notifies_subscribers_across_threads() -> None:
    store = MailStore()
    store.add_user("u")
    woken = asyncio.Event()
    calls: list[tuple[str, str]] = []

    def on_change(user: str, mailbox: str) -> None:
        calls.append((user, mailbox))
        woken.set()

    sub = store.subscribe("u", on_change)
    thread = threading.Thread(target=store.deliver, args=("u", b"x"))
    thread.start()
    await asyncio.wait_for(woken.wait(), 2)
    thread.join()
    assert calls == [("u", "INBOX")]
    store.unsubscribe(sub)
    store.deliver("u", b"y")
    await asyncio.sleep(0.01)
    assert len(calls) == 1
    assert [m.uid for m in store.messages("u")] == [1, 2]
