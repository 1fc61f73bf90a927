"""The proxy's HTTP protocol (uvicorn + httptools + our guards) on a real socket, in front of a
small echo app: what reaches an app, and what never does."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvicorn

from c3.local_run import free_port
from homeserver_proxy.asgi import Receive, Scope, Send
from platform_core.http_wall import MATRIX_ANSWERS, guarded_protocol
from tests.helpers.stand_in import uvicorn_serving

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5


class EchoApp:
    """Answers with the request it saw: method, path, headers and body."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = {
            "path": scope["raw_path"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "body": body.decode(),
        }
        payload = json.dumps(seen).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@dataclass
class Server:
    port: int
    app: EchoApp

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, request: bytes) -> tuple[int, dict]:
        reader, writer = await self.connect()
        try:
            writer.write(request)
            return await read_response(reader)
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")
    )
    body = await asyncio.wait_for(reader.readexactly(length), timeout=5)
    return int(lines[0].split(" ")[1]), json.loads(body)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``seconds``)."""
    return await asyncio.wait_for(reader.read(), timeout=seconds)


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[Server]:
    app = EchoApp()
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=guarded_protocol(
            answers=MATRIX_ANSWERS,
            header_timeout=HEADER_TIMEOUT_S,
            body_timeout=BODY_TIMEOUT_S,
            max_head_bytes=16 * 1024,
        ),
        lifespan="off",
        log_config=None,
        timeout_keep_alive=30,
    )
    async with uvicorn_serving(config):
        yield Server(port, app)


async def test_a_well_formed_request_reaches_the_app(server: Server) -> None:
    status, seen = await server.exchange(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    assert status == 200 and seen["body"] == "abc"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        b"GET /x HTTP/1.1\nHost: a\n\n",  # bare LF line ends
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n continued\r\n\r\n",  # obs-fold
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        b"GET /x\x00y HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=["cl-cl", "cl-cl-differ", "cl-te", "bare-lf", "obs-fold", "chunk-hex", "chunk-neg", "nul"],
)
async def test_malformed_framing_is_a_matrix_400_and_the_connection_closes(
    server: Server, request_bytes: bytes
) -> None:
    reader, writer = await server.connect()
    writer.write(request_bytes)
    answer = await closed_within(reader, 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["errcode"] == "M_UNRECOGNIZED"


async def test_a_slow_request_head_is_cut_off_at_the_header_timeout(server: Server) -> None:
    reader, writer = await server.connect()
    started = time.monotonic()
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n")

    async def trickle() -> None:  # a slowloris client: one header line every 100 ms
        for n in range(100):
            writer.write(b"X-Slow-%d: 1\r\n" % n)
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    answer = await closed_within(reader, HEADER_TIMEOUT_S + 5)
    elapsed = time.monotonic() - started
    trickling.cancel()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < HEADER_TIMEOUT_S + 2


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(
    server: Server,
) -> None:
    reader, writer = await server.connect()
    answer = await closed_within(reader, HEADER_TIMEOUT_S + 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_kept_alive_connection_may_idle_between_requests(server: Server) -> None:
    """The header timeout runs while a head is being received, not while a client idles."""
    reader, writer = await server.connect()
    request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    writer.write(request)
    assert (await read_response(reader))[0] == 200
    # Idle past the header timeout (keep-alive allows 30 s); the server must not hang up.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), timeout=HEADER_TIMEOUT_S * 3)
    writer.write(request)
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_stalled_request_body_is_cut_off(server: Server) -> None:
    reader, writer = await server.connect()
    before = server.app.requests
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    answer = await closed_within(reader, BODY_TIMEOUT_S + 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert server.app.requests == before + 1  # the app saw the request, and its disconnect


async def test_a_slow_but_moving_body_is_not_cut_off(server: Server) -> None:
    """The body timeout is between reads: a slow upload that keeps moving completes."""
    reader, writer = await server.connect()
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
    started = time.monotonic()
    for byte in b"12345678":  # a byte every 150 ms: 1.2 s in all, more than the timeout
        await asyncio.sleep(0.15)
        writer.write(bytes([byte]))
    status, seen = await read_response(reader)
    writer.close()
    assert time.monotonic() - started > BODY_TIMEOUT_S * 2
    assert status == 200 and seen["body"] == "12345678"


async def test_an_oversized_request_head_is_refused(server: Server) -> None:
    reader, writer = await server.connect()
    before = server.app.requests
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n")
    for _ in range(8):
        writer.write(b"X-Big: " + b"a" * 4000 + b"\r\n")
    answer = await closed_within(reader, 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert server.app.requests == before


async def test_chunked_trailers_do_not_become_request_headers(server: Server) -> None:
    status, seen = await server.exchange(
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Forwarded-For: 203.0.113.9\r\nHost: b\r\n\r\n"
    )
    assert status == 200 and seen["body"] == "abc"
    names = [name for name, _ in seen["headers"]]
    assert "x-forwarded-for" not in names and names.count("host") == 1


async def test_an_absolute_form_target_must_name_the_host_of_the_host_header(
    server: Server,
) -> None:
    status, error = await server.exchange(
        b"GET http://other.c3.test/x HTTP/1.1\r\nHost: acme.c3.test\r\nConnection: close\r\n\r\n"
    )
    assert status == 400 and error["errcode"] == "M_UNRECOGNIZED"
    status, seen = await server.exchange(
        b"GET http://ACME.c3.test:80/x HTTP/1.1\r\nHost: acme.c3.test\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and seen["path"] == "/x"
