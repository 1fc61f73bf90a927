"""A stand-in TURN server for the readiness tests: it answers STUN Binding requests (what the
check sends) over UDP or TCP on a loopback port. TURN servers are outside the platform and
no coturn runs here, so this is the outside world, wired in at the network."""

from __future__ import annotations

import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_HEADER = struct.Struct("!HHI12s")


def _success_for(request: bytes) -> bytes | None:
    if len(request) < _HEADER.size:
        return None
    kind, _, cookie, transaction = _HEADER.unpack_from(request)
    if kind != 0x0001:
        return None
    return _HEADER.pack(0x0101, 0, cookie, transaction)


@dataclass
class StunServer:
    port: int
    requests: int = 0  # Binding requests it received


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        self.server.stun.requests += 1  # type: ignore[attr-defined]
        answer = _success_for(data)
        if answer:
            sock.sendto(answer, self.client_address)


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        answer = _success_for(self.request.recv(_HEADER.size))
        self.server.stun.requests += 1  # type: ignore[attr-defined]
        if answer:
            self.request.sendall(answer)


@contextmanager
def stun_server(transport: str) -> Iterator[StunServer]:
    """A STUN responder on 127.0.0.1 (``udp`` or ``tcp``) until the block ends."""
    server_class = socketserver.UDPServer if transport == "udp" else socketserver.TCPServer
    handler = _Udp if transport == "udp" else _Tcp
    server = server_class(("127.0.0.1", 0), handler)
    server.stun = StunServer(int(server.server_address[1]))  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.stun  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
