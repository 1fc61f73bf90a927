"""A parked long-poll (``/sync``) whose client hangs up lets go of its homeserver connection at
once, instead of holding it until the poll's timeout; anyone else cancelling the request (a
server shutting down) still cancels it. The forwarder runs in-process in front of a raw
stand-in homeserver that holds every request and notes when the proxy closes its connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from homeserver_proxy.asgi import Message
from homeserver_proxy.forwarding import ClientGone, Forwarder
from tests.helpers.platform import poll_async
from tests.helpers.stand_in import serving

SYNC = "/_matrix/client/v3/sync"


@dataclass
class HoldingHomeserver:
    """Reads each request head and never answers; records when the proxy hangs up."""

    url: str = ""
    held: int = 0
    closed: list[float] = field(default_factory=list)  # monotonic time of each hang-up

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.held += 1
        await reader.read()  # b"" once the proxy closes its end
        self.closed.append(time.monotonic())
        writer.close()


@pytest.fixture
async def homeserver() -> AsyncIterator[HoldingHomeserver]:
    holding = HoldingHomeserver()
    server = await asyncio.start_server(holding.connection, "127.0.0.1", 0)
    holding.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield holding
    server.close()


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    instance = Forwarder()
    await instance.start()
    yield instance
    await instance.stop()


def sync_scope() -> dict:
    return {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": SYNC,
        "raw_path": SYNC.encode(),
        "query_string": b"timeout=30000&since=s1",
        "headers": [(b"host", b"acme.c3.test")],
    }


async def until(check: Callable[[], object], what: str) -> None:
    async def checked() -> object:
        return check()

    await poll_async(checked, timeout=5, what=what)


async def park(
    forwarder: Forwarder, homeserver: HoldingHomeserver, hang_up: asyncio.Event
) -> asyncio.Task:
    """A /sync through the forwarder whose client sends ``http.disconnect`` on ``hang_up``."""
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent: the homeserver never answered")

    return asyncio.create_task(
        forwarder.forward(
            sync_scope(),
            receive,
            send,
            upstream=homeserver.url,
            path=SYNC,
            max_body=1024,
            client_address="127.0.0.1",
        )
    )


async def test_a_client_that_hangs_up_frees_its_homeserver_connection_at_once(
    forwarder: Forwarder, homeserver: HoldingHomeserver
) -> None:
    hang_up = asyncio.Event()
    poll = await park(forwarder, homeserver, hang_up)
    await until(lambda: homeserver.held == 1, "the poll to reach the homeserver")

    hung_up_at = time.monotonic()
    hang_up.set()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(poll, timeout=5)
    await until(lambda: homeserver.closed, "the proxy to close the homeserver connection")
    assert homeserver.closed[0] - hung_up_at < 1.0  # not at the poll's 30 s timeout


async def test_a_poll_cancelled_by_the_server_is_cancelled_not_a_client_hang_up(
    forwarder: Forwarder, homeserver: HoldingHomeserver
) -> None:
    hang_up = asyncio.Event()  # never set: the client stays
    poll = await park(forwarder, homeserver, hang_up)
    await until(lambda: homeserver.held == 1, "the poll to reach the homeserver")

    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    await until(lambda: homeserver.closed, "the proxy to close the homeserver connection")


async def test_a_poll_answered_in_full_returns_its_result_though_the_server_then_reports_a_disconnect(
    forwarder: Forwarder,
) -> None:
    # uvicorn answers ``receive`` with http.disconnect as soon as a response is complete: that
    # is not the client leaving, and the exchange's result (what metering counts) must come back.
    answer = b'{"next_batch": "s2"}'

    async def sync(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    complete = asyncio.Event()
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete.set()
            await asyncio.sleep(0)  # let the watcher see the disconnect before we return

    async with serving(sync) as url:
        result = await forwarder.forward(
            sync_scope(),
            receive,
            send,
            upstream=url,
            path=SYNC,
            max_body=1024,
            client_address="127.0.0.1",
        )
    assert result.status == 200
    assert result.bytes_out == len(answer)
    assert sent[-1]["body"] == answer
