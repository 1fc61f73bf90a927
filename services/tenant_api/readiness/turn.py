"""Is a TURN server answering? A STUN Binding request (RFC 8489) to each configured URI —
over UDP, TCP or TLS as the URI says (RFC 7065) — answered by a Binding success response.

A TURN server answers Binding requests without credentials (coturn does), so this needs no
secret and allocates nothing: it shows the server is up and reachable from where the API runs,
not that the shared secret matches.

The URIs are the tenant's to set, so the probe is outbound traffic a tenant chooses: like the
homeservers' own outbound connections (``platform_core.outbound``), it never goes to an
internal address (loopback, private, link-local, ...) unless ``C3_OUTBOUND_ALLOWED_NETWORKS``
allows it — else the readiness check would be a port scanner of the platform's network. The
name is resolved once and the checked address is the one connected to (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs

from platform_core.outbound import IPNetwork, OutboundRefused, check_addresses

_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_MAGIC_COOKIE = 0x2112A442
_HEADER = struct.Struct("!HHI12s")
_DEFAULT_PORTS = {"turn": 3478, "turns": 5349}


@dataclass(frozen=True)
class TurnTarget:
    uri: str
    host: str
    port: int
    transport: str  # "udp", "tcp" or "tls"


def parse_turn_uri(uri: str) -> TurnTarget:
    """``turn:host[:port][?transport=udp|tcp]`` / ``turns:host[:port]`` (RFC 7065). Without a
    transport, ``turn:`` is UDP (what clients try first) and ``turns:`` is TLS over TCP."""
    scheme, _, rest = uri.partition(":")
    if scheme not in _DEFAULT_PORTS or not rest:
        raise ValueError(f"{uri!r} is not a turn: or turns: URI")
    address, _, query = rest.partition("?")
    if address.startswith("["):  # [IPv6]:port
        host, _, tail = address[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = address.partition(":")
    port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    transport = (parse_qs(query).get("transport") or ["udp"])[0].lower()
    if scheme == "turns":
        transport = "tls"
    if not host or transport not in ("udp", "tcp", "tls") or not 0 < port < 65536:
        raise ValueError(f"{uri!r} names no host, port and transport")
    return TurnTarget(uri, host, port, transport)


def _binding_request() -> tuple[bytes, bytes]:
    transaction = os.urandom(12)
    return _HEADER.pack(_BINDING_REQUEST, 0, _MAGIC_COOKIE, transaction), transaction


def is_binding_success(answer: bytes, transaction: bytes) -> bool:
    if len(answer) < _HEADER.size:
        return False
    kind, _, cookie, echoed = _HEADER.unpack_from(answer)
    return kind == _BINDING_SUCCESS and cookie == _MAGIC_COOKIE and echoed == transaction


class _OneAnswer(asyncio.DatagramProtocol):
    def __init__(self, transaction: bytes) -> None:
        self.transaction = transaction
        self.answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if is_binding_success(data, self.transaction) and not self.answered.done():
            self.answered.set_result(True)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        if not self.answered.done():
            self.answered.set_exception(exc)


async def _allowed_address(target: TurnTarget, allowed: Sequence[IPNetwork]) -> str:
    """The address to probe: ``target.host`` resolved once, refused if any of its addresses is
    internal and not allowed (``OutboundRefused``)."""
    kind = socket.SOCK_DGRAM if target.transport == "udp" else socket.SOCK_STREAM
    infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=kind)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    check_addresses(target.host, addresses, allowed)
    return str(addresses[0])


async def _probe_udp(target: TurnTarget, address: str) -> None:
    request, transaction = _binding_request()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _OneAnswer(transaction), remote_addr=(address, target.port)
    )
    try:
        # UDP may lose the request: send it again every half second until answered.
        while True:
            transport.sendto(request)
            done, _ = await asyncio.wait({protocol.answered}, timeout=0.5)
            if done:
                protocol.answered.result()
                return
    finally:
        transport.close()


async def _probe_stream(target: TurnTarget, address: str) -> None:
    context = ssl.create_default_context() if target.transport == "tls" else None
    reader, writer = await asyncio.open_connection(
        address, target.port, ssl=context, server_hostname=target.host if context else None
    )
    try:
        request, transaction = _binding_request()
        writer.write(request)
        await writer.drain()
        header = await reader.readexactly(_HEADER.size)
        if not is_binding_success(header, transaction):
            raise ConnectionError("answered, but not with a STUN Binding success")
    finally:
        writer.close()


async def probe(
    target: TurnTarget,
    timeout: float,  # noqa: ASYNC109 — a bound, not a cancel
    allowed: Sequence[IPNetwork] = (),
) -> str | None:
    """None if ``target`` answered a Binding request within ``timeout`` seconds, else why not.
    An internal address not in ``allowed`` is not probed at all."""
    try:
        async with asyncio.timeout(timeout):
            address = await _allowed_address(target, allowed)
            if target.transport == "udp":
                await _probe_udp(target, address)
            else:
                await _probe_stream(target, address)
    except OutboundRefused as exc:
        return f"not probed: {exc}"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except socket.gaierror:
        return f"{target.host} does not resolve"
    except ssl.SSLError as exc:
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    except (OSError, asyncio.IncompleteReadError) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        return str(exc) or type(exc).__name__
    return None
