"""The client's address: the socket peer, or, when the peer is a trusted load balancer, the
right-most ``X-Forwarded-For`` hop that is not one of ours.

Each proxy in a chain appends the address of its own peer, so the list is only as trustworthy
as its writers: walking it from the right, every entry written by a trusted hop is believed, and
the first address outside the trusted networks is the client (everything to its left came from
the client and may be made up). A malformed entry ends the walk: the hop that wrote it cannot be
believed, so the client is the last hop we could identify. The result is what the homeserver
gets as its single ``X-Forwarded-For`` value and what the per-client limits count by.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from homeserver_proxy.asgi import Scope

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

UNKNOWN = "unknown"  # no socket peer (a Unix socket); what the forwarder always sent then


def parse_hop(raw: str) -> Address | None:
    """An ``X-Forwarded-For`` entry as an address (``1.2.3.4``, ``1.2.3.4:5678``, ``::1``,
    ``[::1]:443``; IPv4-mapped IPv6 as IPv4), or None if it is not one."""
    text = raw.strip()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end != -1 else ""
        if end == -1 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port (a bare IPv6 has more colons)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    if "%" in text:  # a zone index means nothing to anybody else
        return None
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_address(scope: Scope, trusted: Sequence[Network]) -> str:
    """The client's address for ``scope`` (see the module docstring)."""
    client = scope.get("client")
    if not client:
        return UNKNOWN
    peer = parse_hop(str(client[0]))
    if peer is None:
        return str(client[0])
    if not trusted or not _trusted(peer, trusted):
        return str(peer)
    # Repeated header lines are one comma-separated list, in order (RFC 9110, 5.3).
    values = [value for name, value in scope["headers"] if name == b"x-forwarded-for"]
    entries = b",".join(values).decode("latin-1").split(",") if values else []
    nearest = peer
    for entry in reversed(entries):
        hop = parse_hop(entry)
        if hop is None:
            break
        if not _trusted(hop, trusted):
            return str(hop)
        nearest = hop
    return str(nearest)
