"""Which requests are billable: the patterns follow Synapse's routes on the raw path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver_proxy.billable import (
    Kind,
    async_upload_uri,
    event_id,
    joins_call,
    json_object,
    kind_of,
    string_field,
)
from homeserver_proxy.identity import access_token

ROOM = "/_matrix/client/v3/rooms/!r:acme"


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("PUT", f"{ROOM}/send/m.room.message/t1", Kind.SEND),
        ("PUT", "/_matrix/client/r0/rooms/!r:acme/send/m.room.encrypted/t1", Kind.SEND),
        ("PUT", f"{ROOM}/send/m.call.invite/t2", Kind.SEND_CALL_INVITE),
        ("PUT", f"{ROOM}/state/org.matrix.msc3401.call.member/_@a:acme_DEV", Kind.RTC_MEMBER),
        ("PUT", f"{ROOM}/state/m.call.member/@a:acme", Kind.RTC_MEMBER),
        ("PUT", f"{ROOM}/state/m.room.name/", Kind.OTHER),
        ("POST", "/_matrix/media/v3/upload", Kind.UPLOAD),
        ("PUT", "/_matrix/media/v3/upload/acme/AbC", Kind.UPLOAD_ASYNC),
        ("GET", "/_matrix/client/v1/media/download/acme/AbC", Kind.MEDIA_EGRESS),
        ("GET", "/_matrix/media/v3/thumbnail/acme/AbC", Kind.MEDIA_EGRESS),
        ("POST", "/_matrix/client/v3/login", Kind.LOGIN),
        ("POST", "/_matrix/client/v3/register", Kind.LOGIN),
        ("GET", "/_matrix/client/v3/account/whoami", Kind.WHOAMI),
        ("GET", f"{ROOM}/send/m.room.message/t1", Kind.OTHER),  # not a send
        ("PUT", f"{ROOM}/send/m.room.message", Kind.OTHER),  # Synapse would 404 it
        ("GET", "/_matrix/client/v3/sync", Kind.OTHER),
    ],
)
def test_requests_are_classified_like_synapse_routes_them(
    method: str, path: str, kind: Kind
) -> None:
    assert kind_of(method, path) is kind


def test_an_async_upload_is_billed_under_its_mxc_uri() -> None:
    assert async_upload_uri("/_matrix/media/v3/upload/acme.example/AbC") == (
        "mxc://acme.example/AbC"
    )


@pytest.mark.parametrize(
    ("body", "joins"),
    [
        (b'{"application": "m.call", "call_id": "", "device_id": "D"}', True),
        (b'{"memberships": [{"call_id": "", "device_id": "D"}]}', True),
        (b"{}", False),  # leaving (MSC4143)
        (b'{"memberships": []}', False),  # leaving (legacy MSC3401)
        (b"not json", False),
        (None, False),
    ],
)
def test_only_joining_a_call_counts_as_a_call(body: bytes | None, joins: bool) -> None:
    assert joins_call(body) is joins


@pytest.mark.parametrize(
    ("headers", "query", "token"),
    [
        ([(b"authorization", b"Bearer syt_abc")], b"", "syt_abc"),
        ([(b"authorization", b"bearer  syt_abc ")], b"", "syt_abc"),
        ([(b"authorization", b"Basic Zm9v")], b"", None),
        ([], b"access_token=syt_q&x=1", "syt_q"),
        ([], b"", None),
    ],
)
def test_the_access_token_comes_from_the_header_or_the_query(
    headers: list[tuple[bytes, bytes]], query: bytes, token: str | None
) -> None:
    assert access_token({"headers": headers, "query_string": query}) == token


def test_a_send_is_billed_under_the_event_id_its_answer_names() -> None:
    assert event_id(b'{"event_id":"$Ukn7mNkCq:acme"}') == "$Ukn7mNkCq:acme"
    assert event_id(b'{"event_id": "$spaced"}') == "$spaced"
    assert event_id(b'{"event_id":"$a\\u0041"}') == "$aA"
    for no_event in (None, b"", b'{"event_id":""}', b'{"errcode":"M_FORBIDDEN"}', b"[1]"):
        assert event_id(no_event) is None


# A send's answer: its compact shape's start and end, or other ones, around pieces of what JSON
# escapes or refuses inside a string, bytes that are not UTF-8 (or encode a lone surrogate).
_STARTS = st.sampled_from([b'{"event_id":"', b'{"event_id": "', b"{", b""])
_ENDS = st.sampled_from([b'"}', b'"', b"}", b'", "x":1}', b""])
_PIECES = st.sampled_from(
    [b"$Ukn7mNkCq", b":acme", b'"', b"\\", b"\\u0041", b"\\n", b"\x00", b"\x0f", b"\x1f",
     b"\x20", b"\x7f", b"\xc3\xa9", b"\xc3", b"\xff", b"\xed\xa0\x80", b'"}', b'{"',
     b"event_id"]
)  # fmt: skip
_ANSWERS = st.tuples(_STARTS, st.lists(_PIECES, max_size=4).map(b"".join), _ENDS).map(b"".join)


@settings(max_examples=2000, deadline=None)
@given(_ANSWERS)
def test_the_short_way_to_an_event_id_agrees_with_the_json_parser(answer: bytes) -> None:
    assert event_id(answer) == string_field(json_object(answer), "event_id")
