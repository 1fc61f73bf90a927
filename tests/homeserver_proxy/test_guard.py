"""The path guard: what may reach a tenant's homeserver, whatever the encoding."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver_proxy.guard import Verdict, _canonical_path, canonical_path, classify

FORWARDED = [
    "/_matrix/client/versions",
    "/_matrix/client/v3/sync",
    "/_matrix/client/v3/rooms/%21abc%3Aacme.c3.test/send/m.room.message/txn1",
    "/_matrix/media/v3/upload",
    "/_matrix/client/v1/media/download/acme.c3.test/abcdef",
    "/_synapse/client/password_reset/email/submit_token",
]

ADMIN_TRICKS = [
    "/_synapse/admin/v1/server_version",
    "/_synapse/%61dmin/v1/server_version",
    "/_synapse/%2561dmin/v1/server_version",  # double encoding
    "/_SYNAPSE/ADMIN/v1/server_version",
    "/_Synapse/Admin/v1/server_version",
    "//_synapse/admin/v1/server_version",
    "/_synapse//admin/v1/server_version",
    "/_synapse/admin;x=1/v1/server_version",
    "/_synapse%2fadmin/v1/server_version",
    "/%5fsynapse/admin/v1/server_version",
    "/_synapse/%252561dmin/v1/server_version",  # triple encoding
    "/_synapse/admin./v1/server_version",
    "/_synapse/admin",
    "/%2F_synapse/admin/v1/server_version",
    "/_synapse;/admin/v1/server_version",
]

MALFORMED = [
    "/_matrix/../_synapse/admin/v1/server_version",
    "/_matrix/client/../../_synapse/admin",
    "/_matrix/client/%2e%2e/%2e%2e/_synapse/admin",
    "/_matrix/client/%252e%252e/x",
    "/_matrix/client/./versions",
    "/_matrix/client/..;/_synapse/admin",
    "/_matrix/client/v3/%00",
    "/_matrix/client/v3/a%5cb",
    "/_matrix/client/%252525252561",  # more encoding layers than anyone needs
    "_matrix/client/versions",
    "/_matrix/client/%2E%2E/%2E%2E/_synapse/admin",
    "/_matrix/client/.%2e/_synapse/admin",
    "/_synapse/client/../admin/v1/server_version",
    "/_matrix/client/%c0%ae%c0%ae/_synapse/admin",  # overlong UTF-8 dots
    "/_synapse\\admin/v1/server_version",
    "/_matrix/client/versions%00/../../_synapse/admin",
]


@pytest.mark.parametrize("path", FORWARDED)
def test_client_and_media_paths_are_forwarded(path: str) -> None:
    assert classify(path) is Verdict.FORWARD


@pytest.mark.parametrize("path", ADMIN_TRICKS)
def test_admin_api_is_never_forwarded(path: str) -> None:
    assert classify(path) is not Verdict.FORWARD


@pytest.mark.parametrize("path", MALFORMED)
def test_dot_segments_and_control_bytes_are_refused(path: str) -> None:
    assert classify(path) is Verdict.MALFORMED


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/index.html",
        "/metrics",
        "/_matrix/federation",  # the bare prefix is no server-server path
        "/_matrix/%66ederation/v1/version",  # not literally the prefix that would be forwarded
        "/_MATRIX/KEY/v2/server",
    ],
)
def test_everything_outside_the_client_surface_is_not_served(path: str) -> None:
    assert classify(path) is Verdict.NOT_SERVED


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/federation/v1/send/1",
        "/_matrix/federation/v2/invite/!r/$e",
        "/_matrix/key/v2/server",
    ],
)
def test_server_server_paths_are_told_apart_for_the_app_to_decide(path: str) -> None:
    assert classify(path) is Verdict.FEDERATION


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/federation/../../_synapse/admin/v1/server_version",
        "/_matrix/federation/%2e%2e/%2e%2e/_synapse/admin",
        "/_matrix/key/..;/..;/_synapse/admin",
        "/_matrix/federation%2f..%2f..%2f_synapse/admin",
    ],
)
def test_server_server_paths_cannot_climb_to_the_admin_api(path: str) -> None:
    assert classify(path) in (Verdict.MALFORMED, Verdict.NOT_SERVED)


def test_prefix_must_be_literal_in_the_forwarded_path() -> None:
    # Canonically a client path, but what would be forwarded is the encoded form.
    assert classify("/_matrix/%63lient/versions") is Verdict.NOT_SERVED


def test_well_known_is_answered_by_the_proxy() -> None:
    assert classify("/.well-known/matrix/client") is Verdict.WELL_KNOWN_CLIENT
    assert classify("/.well-known/matrix/server") is Verdict.WELL_KNOWN_SERVER


# Pieces that each step of the long way reacts to, and their encodings (once and twice).
_PIECES = st.sampled_from(
    ["/", "//", ".", "..", "%", ";", "\\", "\x00", "\x1f", "\x7f", " ", "a", "Z", "_synapse",
     "admin", "%2e", "%2E", "%2f", "%2F", "%252e", "%25", "%3b", "%5c", "%00", "%7f", "%21",
     "%3A", "%40", "%c3%a9", "%c3", "%a9", "%ff", "%zz", "é", "\u2028", "%e2%80%a8"]
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_the_short_way_to_the_canonical_path_agrees_with_the_long_way(path: str) -> None:
    """``canonical_path`` takes a short way for plain and once-encoded paths: whatever the
    path, it gives what the long way gives (the same form, None, or the same decoding error)."""

    def outcome(way: Callable[[str], str | None]) -> object:
        try:
            return way(path)
        except UnicodeDecodeError:
            return UnicodeDecodeError

    assert outcome(canonical_path) == outcome(_canonical_path)
