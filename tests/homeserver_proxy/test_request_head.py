"""The app's own checks of a request head: what a more lenient HTTP server than llhttp (h11,
say) would hand over, the proxy still refuses, before looking up any tenant."""

from __future__ import annotations

import json
from typing import Any

import pytest

from homeserver_proxy.app import ProxyApp
from platform_core.settings import get_settings

PATH = b"/t/acme/_matrix/client/versions"


async def answer(app: ProxyApp, headers: list[tuple[bytes, bytes]], **scope: Any) -> dict:
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body must not be read: the request is refused before")

    async def send(message: dict) -> None:
        sent.append(message)

    await app(
        {
            "type": "http",
            "method": "POST",
            "http_version": "1.1",
            "scheme": "http",
            "path": PATH.decode(),
            "raw_path": PATH,
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            **scope,
        },
        receive,  # type: ignore[arg-type]
        send,  # type: ignore[arg-type]
    )
    start, body = sent
    return {
        "status": start["status"],
        "headers": dict(start["headers"]),
        "body": json.loads(body["body"]),
    }


@pytest.fixture
def app(platform_env: dict[str, str]) -> ProxyApp:
    # Not started: no route table, no upstream session. A request that got as far as routing
    # would find no tenant (404), one that got to forwarding would fail an assertion.
    return ProxyApp(get_settings(), metering=False)


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ([(b"host", b"a"), (b"host", b"b")], "1.1"),
        ([(b"host", b"a"), (b"host", b"a")], "1.1"),
        ([(b"host", b"")], "1.1"),
        ([(b"host", b"  ")], "1.1"),
        ([], "1.1"),
        ([(b"host", b"a"), (b"content-length", b"3"), (b"content-length", b"3")], "1.1"),
        ([(b"host", b"a"), (b"content-length", b"3"), (b"transfer-encoding", b"chunked")], "1.1"),
        ([(b"host", b"a"), (b"transfer-encoding", b"gzip, chunked")], "1.1"),
        (
            [
                (b"host", b"a"),
                (b"transfer-encoding", b"chunked"),
                (b"transfer-encoding", b"chunked"),
            ],
            "1.1",
        ),
        ([(b"host", b"a"), (b"transfer-encoding", b"chunked")], "1.0"),
        ([(b"host", b"a")], "2.0"),
        ([(b"host", b"a"), (b"content-length", b"+3")], "1.1"),
    ],
    ids=[
        "two-hosts",
        "same-host-twice",
        "empty-host",
        "blank-host",
        "no-host",
        "cl-twice",
        "cl-and-te",
        "te-gzip-chunked",
        "te-twice",
        "te-on-http-1.0",
        "http-2.0-on-http-1",
        "cl-signed",
    ],
)
async def test_ambiguous_heads_are_refused_and_the_connection_closed(
    app: ProxyApp, headers: list[tuple[bytes, bytes]], version: str
) -> None:
    response = await answer(app, headers, http_version=version)
    assert response["status"] == 400
    assert response["body"]["errcode"] == "M_UNRECOGNIZED"
    assert response["headers"].get(b"connection") == b"close"


async def test_http_1_0_without_host_may_use_the_path_prefix(app: ProxyApp) -> None:
    # Not refused for framing: it goes on to routing (no tenant in this unstarted app).
    response = await answer(app, [], http_version="1.0")
    assert response["status"] == 404 and response["body"]["errcode"] == "M_NOT_FOUND"
