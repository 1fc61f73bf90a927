"""The API's first gate on real sockets (`c3 api` as a child process): oversized bodies are
refused 413 before they are read, oversized or slow request heads are cut off, and the
process does not grow holding what it refused; ordinary requests still work."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.environment import auth
from tests.helpers.platform import running_api

MAX_BODY = 64 * 1024  # the API's C3_API_MAX_BODY_BYTES here
HEADER_TIMEOUT_S = 1.0
HUGE = 200 * 1024 * 1024


@dataclass
class ApiServer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture(scope="module")
def api_server(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    log = tmp_path_factory.mktemp("api-limits") / "api.log"
    env = {
        **os.environ,
        **platform_env,
        "C3_API_MAX_BODY_BYTES": str(MAX_BODY),
        "C3_API_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    }
    with running_api(env, log) as (port, process):
        yield ApiServer(port, process, log)


async def response_then_close(
    reader: asyncio.StreamReader, seconds: float, answered: asyncio.Event | None = None
) -> tuple[int, dict]:
    """The one response the server sends before closing the connection (a reset after it,
    for the bytes still in flight to a closed socket, is part of closing)."""
    answer = b""

    async def until_closed() -> None:
        nonlocal answer
        try:
            while data := await reader.read(65536):
                answer += data
                if answered is not None:
                    answered.set()
        except ConnectionError:
            assert answer, "the connection broke before any answer"

    await asyncio.wait_for(until_closed(), timeout=seconds)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert headers["content-type"] == "application/problem+json", head
    return int(lines[0].split(" ")[1]), json.loads(body)


CHUNKED_HEAD = (
    b"POST /v1/tenants HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHUNK = b"%x\r\n%s\r\n" % (16 * 1024, b"a" * 16 * 1024)


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    api_server: ApiServer,
) -> None:
    """No credentials, 200 MiB announced, a few bytes sent: the 413 comes at once (it does not
    wait for the body) and the connection is closed."""
    reader, writer = await api_server.connect()
    started = time.monotonic()
    writer.write(
        b"POST /v1/tenants HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b'Content-Length: %d\r\n\r\n{"slug": "' % HUGE
    )
    status, problem = await response_then_close(reader, 5)
    writer.close()
    assert status == 413
    assert problem["status"] == 413 and str(MAX_BODY) in problem["detail"]
    assert time.monotonic() - started < 2


async def test_a_chunked_body_past_the_limit_is_answered_413(api_server: ApiServer) -> None:
    """No credentials, a chunked body that would be 200 MiB, sent by a client that reads
    while it sends (and stops when answered): it gets the 413, and the connection closes."""
    reader, writer = await api_server.connect()
    writer.write(CHUNKED_HEAD)
    answered = asyncio.Event()
    sent = 0

    async def send_until_answered() -> None:
        nonlocal sent
        while sent < HUGE and not answered.is_set():
            writer.write(CHUNK)
            await writer.drain()
            sent += 16 * 1024
            await asyncio.sleep(0)  # drain() need not yield: let the reader see the answer

    sending = asyncio.create_task(send_until_answered())
    try:
        status, problem = await response_then_close(reader, 10, answered)
    finally:
        sending.cancel()
        writer.close()
    assert status == 413 and str(MAX_BODY) in problem["detail"]
    assert sent < HUGE


async def test_a_client_that_keeps_sending_past_the_limit_is_cut_off(
    api_server: ApiServer,
) -> None:
    """A client that ignores the answer cannot go on sending its 200 MiB: the server drops a
    bounded remainder, then hangs up."""
    _, writer = await api_server.connect()
    writer.write(CHUNKED_HEAD)
    sent = 0

    async def send_200_mib() -> None:
        nonlocal sent
        while sent < HUGE:
            writer.write(CHUNK)
            await writer.drain()
            sent += 16 * 1024

    try:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(send_200_mib(), timeout=20)
    finally:
        writer.close()
    assert sent < HUGE / 4


@pytest.mark.parametrize("idempotent", [False, True], ids=["route", "idempotency-key"])
def test_a_chunked_oversized_body_is_refused_for_a_signed_in_client_too(
    api_server: ApiServer, idempotent: bool
) -> None:
    """Through a route reading the body itself, and through the Idempotency-Key middleware
    (which reads the body first): the same 413, nothing recorded or created."""
    slug = f"big{time.time_ns()}"
    body = json.dumps({"slug": slug, "display_name": "x" * (2 * MAX_BODY)}).encode()
    headers = {**auth(), "Content-Type": "application/json"}
    if idempotent:
        headers["Idempotency-Key"] = f"big-{time.time_ns()}"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    with httpx.Client(base_url=api_server.url, timeout=10) as client:
        try:
            response = client.post("/v1/tenants", content=chunks(), headers=headers)
        except httpx.TransportError as exc:  # the server may hang up before httpx reads
            pytest.fail(f"no 413 answer: {exc!r}")
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert str(MAX_BODY) in response.json()["detail"]
        listed = client.get("/v1/tenants", params={"limit": 100}, headers=auth()).json()
        assert all(tenant["slug"] != slug for tenant in listed["items"])


async def test_an_oversized_request_head_is_refused(api_server: ApiServer) -> None:
    reader, writer = await api_server.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")
    for _ in range(20):  # 80 KiB of header fields
        writer.write(b"X-Big: " + b"a" * 4000 + b"\r\n")
    status, problem = await response_then_close(reader, 5)
    writer.close()
    assert status == 431 and problem["detail"] == "Request head too large"


async def test_a_slow_request_head_is_cut_off_at_the_header_timeout(
    api_server: ApiServer,
) -> None:
    reader, writer = await api_server.connect()
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")

    async def trickle() -> None:  # a slowloris client: one header line every 100 ms
        for n in range(200):
            writer.write(b"X-Slow-%d: 1\r\n" % n)
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    status, problem = await response_then_close(reader, HEADER_TIMEOUT_S + 5)
    elapsed = time.monotonic() - started
    trickling.cancel()
    writer.close()
    assert status == 408 and "head" in problem["detail"]
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < HEADER_TIMEOUT_S + 3


def test_requests_within_the_limits_still_work(api_server: ApiServer) -> None:
    with httpx.Client(base_url=api_server.url, headers=auth(), timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        # A body just under the limit is read and parsed: the route validates it (422).
        near_limit = {"slug": "ok", "display_name": "x" * (MAX_BODY - 100)}
        response = client.post("/v1/tenants", json=near_limit)
        assert response.status_code == 422 and "display_name" in response.text
        # Chunked, under the limit, with the headers a browser sends: parsed as well.
        response = client.post(
            "/v1/tenants",
            content=iter([b'{"slug": "ok", ', b'"display_name": ""}']),
            headers={"Content-Type": "application/json", "User-Agent": "x" * 4000},
        )
        assert response.status_code == 422 and "display_name" in response.text


async def test_refused_bodies_do_not_grow_the_api(api_server: ApiServer) -> None:
    before = api_server.rss_bytes()
    for _ in range(5):
        await test_a_declared_oversized_body_is_refused_before_it_is_sent(api_server)
        await test_a_chunked_body_past_the_limit_is_answered_413(api_server)
        await test_a_client_that_keeps_sending_past_the_limit_is_cut_off(api_server)
    assert api_server.rss_bytes() - before < 32 * 1024 * 1024
