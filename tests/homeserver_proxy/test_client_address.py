"""The client address: X-Forwarded-For believed only from trusted proxies."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from homeserver_proxy.client_address import client_address, parse_hop

LB = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


def scope(peer: str | None, *forwarded: str) -> dict:
    return {
        "client": (peer, 40000) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert client_address(scope("198.51.100.7", "203.0.113.9"), []) == "198.51.100.7"
    assert client_address(scope(None), []) == "unknown"


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    assert client_address(scope("198.51.100.7", "203.0.113.9, 10.0.0.2"), LB) == "198.51.100.7"


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (["203.0.113.9"], "203.0.113.9"),
        # The right-most hop we did not write: what the client added itself is ignored.
        (["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        (["6.6.6.6, 203.0.113.9, 10.1.2.3"], "203.0.113.9"),  # through two of our hops
        (["6.6.6.6", "203.0.113.9", "10.1.2.3"], "203.0.113.9"),  # repeated header lines
        (["203.0.113.9:51234"], "203.0.113.9"),  # with a port
        (["[2001:db8::7]:443"], "2001:db8::7"),
        (["2001:db8::7, fd00::1"], "2001:db8::7"),
        (["::ffff:203.0.113.9"], "203.0.113.9"),
        ([], "10.0.0.1"),  # no header: the peer
        (["10.1.2.3"], "10.1.2.3"),  # only our own hops: the farthest
        # A malformed entry ends the walk (whoever wrote it is not believed): nothing to its
        # left is used, the client is the nearest hop that is known, and it never goes on.
        (["6.6.6.6, not-an-ip"], "10.0.0.1"),
        (["6.6.6.6, unknown, 10.1.2.3"], "10.1.2.3"),
        (["6.6.6.6, , 10.1.2.3"], "10.1.2.3"),
        (["6.6.6.6, 1.2.3.4.5"], "10.0.0.1"),
        (["6.6.6.6, fe80::1%eth0"], "10.0.0.1"),
        (["6.6.6.6, [::1"], "10.0.0.1"),
        (["6.6.6.6, 1.2.3.4:x"], "10.0.0.1"),
        (["6.6.6.6, 203.0.113.9\x00"], "10.0.0.1"),
    ],
)
def test_a_trusted_peer_names_the_right_most_untrusted_hop(
    forwarded: list[str], client: str
) -> None:
    assert client_address(scope("10.0.0.1", *forwarded), LB) == client


def test_hops_parse_strictly() -> None:
    assert str(parse_hop(" 203.0.113.9 ")) == "203.0.113.9"
    for bad in ["", "x", "203.0.113", "203.0.113.9:", "[2001:db8::1]x", "2001:db8::1:80:"]:
        assert parse_hop(bad) is None, bad
