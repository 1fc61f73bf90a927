"""Paths of the Synapse admin client: an id or token is always exactly one path segment."""

from __future__ import annotations

import httpx
import pytest

from platform_core.synapse_admin import path_segment


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        (
            "@x/../../../v1/deactivate/bob:acme.c3.test",
            "%40x%2F..%2F..%2F..%2Fv1%2Fdeactivate%2Fbob%3Aacme.c3.test",
        ),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("tok?en#1&x=%2F", "tok%3Fen%231%26x%3D%252F"),
        ("@alice:acme.c3.test", "%40alice%3Aacme.c3.test"),
    ],
)
def test_a_value_stays_one_path_segment(value: str, segment: str) -> None:
    assert path_segment(value) == segment
    # What actually goes on the wire: no client normalisation climbs out of the segment.
    request = httpx.Request("GET", f"http://hs/_synapse/admin/v2/users/{path_segment(value)}")
    assert request.url.raw_path == f"/_synapse/admin/v2/users/{segment}".encode()
