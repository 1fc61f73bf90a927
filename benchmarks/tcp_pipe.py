"""The floor of any proxy written in Python: a pass-through TCP relay on uvloop, as the proxy
runs on, that copies bytes between each client connection and a connection of its own to one
upstream and does nothing else (no HTTP parsing, routing, guard, limit or meter). Per request
it costs what every Python proxy must pay at least: the event loop's two wake-ups into Python,
two ``data_received`` calls and two ``transport.write`` calls. ``proxy_bench.py`` runs it as
its ``floor`` column, next to nginx, so that what the proxy's own code costs per request can
be told apart from what Python and the loop cost on the same VM.

Usage: ``python benchmarks/tcp_pipe.py <listen port> <upstream host> <upstream port>``
(prints ``ready`` once it listens; stops on SIGINT or SIGTERM).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from typing import cast

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []  # what came before the upstream connection was made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                lambda: _Upstream(self), self.host, self.port
            )
        except OSError:
            self.transport.close()
            return
        assert upstream.transport is not None
        if self.transport.is_closing():  # the client left while we connected
            upstream.transport.close()
            return
        self.upstream = upstream
        for data in self.pending:
            upstream.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or upstream.transport is None:
            self.pending.append(data)
        else:
            upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(listen_port: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(host, port), "127.0.0.1", listen_port)
    stopped = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    gc.freeze()  # as the proxy does once started (homeserver_proxy.heap.settle_heap)
    print("ready", flush=True)
    await stopped.wait()
    server.close()


def main() -> int:
    listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    uvloop.run(serve(listen_port, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
