"""Is a TURN server answering? A STUN Binding request (RFC 8489) to each configured URI —
over UDP, TCP or TLS as the URI says (RFC 7065) — answered by a Binding success response.

A TURN server answers Binding requests without credentials (coturn does), so this needs no
secret and allocates nothing: it shows the server is up and reachable from where the API runs,
not that the shared secret matches.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from dataclasses import dataclass
from urllib.parse import parse_qs

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


async def _probe_udp(target: TurnTarget) -> None:
    request, transaction = _binding_request()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _OneAnswer(transaction), remote_addr=(target.host, target.port)
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


async def _probe_stream(target: TurnTarget) -> None:
    context = ssl.create_default_context() if target.transport == "tls" else None
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=context, server_hostname=target.host if context else None
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


async def probe(target: TurnTarget, timeout: float) -> str | None:  # noqa: ASYNC109 — a bound, not a cancel
    """None if ``target`` answered a Binding request within ``timeout`` seconds, else why not."""
    try:
        async with asyncio.timeout(timeout):
            if target.transport == "udp":
                await _probe_udp(target)
            else:
                await _probe_stream(target)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except ssl.SSLError as exc:
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    except (OSError, asyncio.IncompleteReadError) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        return str(exc) or type(exc).__name__
    return None
