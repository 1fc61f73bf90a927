"""The proxy's spool budget: chunked request bodies past 1 MiB are spooled to disk, and all
spools of one proxy together stay within C3_PROXY_SPOOL_BUDGET_BYTES — a request that would
pass it is refused with 503 before its bytes are written, and a request's share comes back
when it ends however it ends. The proxy runs in-process (real Redis route table) in front of
a stand-in homeserver that records the bodies it receives."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from aiohttp import web

from homeserver_proxy.app import ProxyApp
from homeserver_proxy.asgi import Message
from platform_core.redis import keys_for
from platform_core.routes import Route, publish_route
from platform_core.settings import get_settings
from tests.helpers.platform import poll_async
from tests.helpers.stand_in import serving

MIB = 1024 * 1024
BUDGET = 3 * MIB
UPLOAD = "/t/spool/_matrix/media/v3/upload?filename=a.bin"


@dataclass
class StandIn:
    url: str = ""
    received: list[str] = field(default_factory=list)  # SHA-256 of every body


@dataclass
class Proxy:
    app: ProxyApp
    client: httpx.AsyncClient
    spool_dir: Path

    @property
    def held(self) -> int:
        return self.app.forwarder.spool_budget.held

    def spooled_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.spool_dir.iterdir())


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    stand_in = StandIn()

    async def answer(request: web.Request) -> web.Response:
        body = b""  # read as a stream: request.read() stops at aiohttp's 1 MiB default
        while chunk := await request.content.read(MIB):
            body += chunk
        stand_in.received.append(hashlib.sha256(body).hexdigest())
        return web.json_response({"content_uri": "mxc://spool.c3.test/x", "size": len(body)})

    async with serving(answer) as url:
        stand_in.url = url
        yield stand_in


@pytest.fixture
async def proxy(
    platform_env: dict[str, str], upstream: StandIn, tmp_path: Path
) -> AsyncIterator[Proxy]:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    settings = get_settings().model_copy(
        update={
            "redis_namespace": f"{get_settings().redis_namespace}-spool-{uuid.uuid4().hex[:6]}",
            "proxy_spool_dir": spool_dir,
            "proxy_spool_budget_bytes": BUDGET,
        }
    )
    keys = keys_for(settings)
    sync_redis = redis.Redis.from_url(settings.require_redis_url())
    route = Route(
        tenant_id=str(uuid.uuid4()),
        slug="spool",
        server_name="spool.c3.test",
        upstream=upstream.url,
        status="active",
        max_upload_bytes=50 * MIB,
        max_concurrent=10,
    )
    publish_route(sync_redis, keys, route)
    app = ProxyApp(settings, metering=False)
    await app.forwarder.start()
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield Proxy(app, client, spool_dir)
    finally:
        await app.forwarder.stop()
        await app.redis.aclose()
        sync_redis.delete(keys.routes)
        sync_redis.close()


async def chunked(data: bytes, *, pause: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """``data`` as a chunked body (no Content-Length) in 256 KiB chunks; with ``pause``, the
    last chunk waits until it is set (an upload still on its way)."""
    chunks = [data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024)]
    for chunk in chunks[:-1]:
        yield chunk
    if pause is not None:
        await pause.wait()
    yield chunks[-1]


async def test_a_chunked_upload_is_spooled_in_the_spool_dir_and_forwarded_whole(
    proxy: Proxy, upstream: StandIn
) -> None:
    data = os.urandom(2 * MIB + 5)
    answer = await proxy.client.post(UPLOAD, content=chunked(data))
    assert answer.status_code == 200, answer.text
    assert answer.json()["size"] == len(data)
    assert upstream.received == [hashlib.sha256(data).hexdigest()]
    assert proxy.held == 0 and proxy.spooled_bytes() == 0  # the file and its share are gone


async def test_an_upload_that_would_pass_the_budget_is_refused_before_it_is_written(
    proxy: Proxy, upstream: StandIn
) -> None:
    first_data = os.urandom(2 * MIB)
    pause = asyncio.Event()
    first = asyncio.create_task(proxy.client.post(UPLOAD, content=chunked(first_data, pause=pause)))

    async def first_is_spooling() -> bool:
        return proxy.held > MIB

    await poll_async(first_is_spooling, timeout=10, what="the first upload's spool")
    held_by_first = proxy.held

    # The second would need more than what is left of the 3 MiB budget.
    refused = await proxy.client.post(UPLOAD, content=chunked(os.urandom(2 * MIB)))
    assert refused.status_code == 503
    assert refused.json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert refused.json()["retry_after_ms"] == 5000
    assert refused.headers["retry-after"] == "5"
    assert proxy.held == held_by_first <= BUDGET  # the refused one holds nothing
    assert proxy.spooled_bytes() <= BUDGET  # never written past the budget

    # A body with a Content-Length streams and needs no spool: it goes through meanwhile.
    streamed = os.urandom(2 * MIB)
    assert (await proxy.client.post(UPLOAD, content=streamed)).status_code == 200

    pause.set()
    answer = await first
    assert answer.status_code == 200 and answer.json()["size"] == len(first_data)
    assert proxy.held == 0
    # Its share came back: the same upload now fits.
    again = await proxy.client.post(UPLOAD, content=chunked(os.urandom(2 * MIB)))
    assert again.status_code == 200
    assert len(upstream.received) == 3 and proxy.held == 0


async def test_a_client_that_leaves_mid_upload_gives_its_share_back(proxy: Proxy) -> None:
    """Driven at the ASGI level: the client disconnects after 2 MiB of a chunked body."""
    chunks: list[Message] = [
        {"type": "http.request", "body": os.urandom(256 * 1024), "more_body": True}
        for _ in range(8)
    ]
    messages = [*chunks, {"type": "http.disconnect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    path = "/t/spool/_matrix/media/v3/upload"
    await proxy.app(
        {
            "type": "http",
            "method": "POST",
            "http_version": "1.1",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"proxy"), (b"transfer-encoding", b"chunked")],
            "client": ("127.0.0.1", 5000),
        },
        receive,  # type: ignore[arg-type]
        send,  # type: ignore[arg-type]
    )
    assert messages == []  # the whole body up to the disconnect was read
    assert proxy.held == 0 and proxy.spooled_bytes() == 0


async def test_a_spooled_upload_whose_homeserver_is_down_gives_its_share_back(
    proxy: Proxy, upstream: StandIn
) -> None:
    sync_redis = redis.Redis.from_url(proxy.app.settings.require_redis_url())
    try:
        route = Route(
            tenant_id=str(uuid.uuid4()),
            slug="down",
            server_name="down.c3.test",
            upstream="http://127.0.0.1:1",  # nothing listens there
            status="active",
            max_upload_bytes=50 * MIB,
        )
        publish_route(sync_redis, proxy.app.keys, route)
    finally:
        sync_redis.close()
    answer = await proxy.client.post(
        "/t/down/_matrix/media/v3/upload", content=chunked(os.urandom(2 * MIB))
    )
    # Refused: the proxy asks for the homeserver's restart and says it is starting.
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert proxy.held == 0 and proxy.spooled_bytes() == 0
