"""Which addresses a tenant may make its homeserver connect to: never the platform's own
networks (loopback, link-local such as cloud metadata, private, unique-local, ...), unless the
operator allows a network explicitly (``C3_OUTBOUND_ALLOWED_NETWORKS``). Used by the API when a
tenant sets an outbound URL (its OIDC issuer) and by the provisioner before it renders one."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Synapse's own default ``ip_range_blacklist`` (synapse/config/server.py) plus what it leaves
# out: "this network", reserved space and the IPv6 unspecified/discard prefixes. Synapse adds
# the IPv4-mapped IPv6 form of every IPv4 range itself. Rendered into every tenant's
# homeserver.yaml (federation, push, URL previews, module HTTP calls).
OUTBOUND_BLOCKED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
)

RESOLVE_TIMEOUT_S = 5.0


class OutboundRefused(ValueError):
    """The host is, or resolves to, an address a tenant must not reach."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one, in any spelling a resolver accepts: dotted
    quads, bracketed IPv6, and the legacy IPv4 forms (``2130706433``, ``0177.0.0.1``,
    ``0x7f.1``) that getaddrinfo turns into 127.0.0.1 without asking DNS."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    if bare and all(c in "0123456789abcdefxABCDEFX." for c in bare) and bare[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """What kind of internal address ``address`` is (None: a tenant may reach it)."""
    if any(address in network for network in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal(embedded, allowed)
    for kind, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-public", not address.is_global or any(address in n for n in _BLOCKED)),
    ):
        if flag:
            return kind
    return None


def check_addresses(
    host: str, addresses: Iterable[IPAddress], allowed: Sequence[IPNetwork]
) -> None:
    for address in addresses:
        kind = refusal(address, allowed)
        if kind is None:
            continue
        article = "an" if kind[0] in "aeiou" else "a"
        what = (
            f"{host} is {article} {kind} address"
            if str(address) == host.strip("[]")
            else f"{host} resolves to {address}, {article} {kind} address"
        )
        raise OutboundRefused(
            f"{what}; homeservers are not allowed to connect to internal networks"
        )


_BLOCKED = parse_networks(OUTBOUND_BLOCKED_NETWORKS)


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[IPAddress]:
    result = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        result.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return result


def check_host(host: str, allowed: Sequence[IPNetwork]) -> None:
    """Refuse ``host`` if it is or resolves (now) to an internal address. A name that does not
    resolve passes: nothing can be reached through it yet, and it is checked again whenever
    the homeserver's config is rendered."""
    literal = literal_address(host)
    if literal is not None:
        check_addresses(host, [literal], allowed)
        return
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return
    check_addresses(host, _addresses(infos), allowed)


async def check_host_async(host: str, allowed: Sequence[IPNetwork]) -> None:
    """:func:`check_host` without blocking the event loop (resolution bounded in time)."""
    literal = literal_address(host)
    if literal is not None:
        check_addresses(host, [literal], allowed)
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, proto=socket.IPPROTO_TCP), RESOLVE_TIMEOUT_S
        )
    except (OSError, UnicodeError, TimeoutError):
        return
    check_addresses(host, _addresses(infos), allowed)
