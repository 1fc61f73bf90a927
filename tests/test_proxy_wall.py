"""The proxy as a wall, end to end: raw bytes over sockets to the real proxy in front of real
Synapse homeservers (and, where the exact bytes the proxy sends upstream matter, a recording
stand-in homeserver).

Requests an attacker sends come from their own loopback addresses (127.0.0.2, ...): the
proxy passes the real peer address to Synapse in X-Forwarded-For, and Synapse logs it, so the
homeserver's access log tells exactly which of its requests came through the proxy from the
attacker, apart from the platform's own direct calls (from 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import re
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from c3.local_run import free_port
from platform_core.routes import Route, publish_route, slug_field, withdraw_route
from tests.helpers.platform import RunningPlatform, poll, redis_of, start_proxy

pytestmark = pytest.mark.e2e

ATTACKER = "127.0.0.2"  # the admin API attempts
HOST_PROBER = "127.0.0.3"  # Host header games
SPOOFER = "127.0.0.4"  # forged client addresses
REMOTE = "127.0.0.5"  # a "remote homeserver": server-server paths of a federating tenant
SPOOFED = "203.0.113.9"
ADMIN = "/_synapse/admin/v1/server_version"  # answers 200 to anyone who reaches it


# Helpers -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    proxy_url: str,
    request: bytes,
    *,
    source: str = "127.0.0.1",
    timeout: float = 10,
    has_body: bool = True,
) -> Answer:
    """Send bytes as-is from ``source`` and read one response (for what HTTP clients refuse
    to send); ``has_body=False`` for the answer to a HEAD request."""
    host, port = proxy_url.removeprefix("http://").split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((host, int(port)))
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed without an answer to {request[:80]!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0")) if has_body else 0
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    # One response: a pipelined second answer may have arrived in the same read.
    return Answer(int(lines[0].split(" ")[1]), headers, body[:length])


def access_log(platform: RunningPlatform, tenant_id: str) -> list[str]:
    """The homeserver's access-log lines (one per request it processed)."""
    text = (platform.homeserver_dir(tenant_id) / "homeserver.log").read_text()
    return [line for line in text.splitlines() if " - synapse.access." in line]


_CLIENT = re.compile(r" - INFO - \S+ - (?P<client>[^ ]+) - \d+ - \{")


def lines_from(platform: RunningPlatform, tenant_id: str, client: str) -> list[str]:
    """Access-log lines of requests Synapse believes ``client`` made."""
    found = []
    for line in access_log(platform, tenant_id):
        match = _CLIENT.search(line)
        if match and match["client"] == client:
            found.append(line)
    return found


def wait_for_control(platform: RunningPlatform, tenant: dict, source: str) -> str:
    """Send one well-formed request from ``source`` and wait for its access-log line: every
    request sent before it that reached the homeserver is logged by then."""
    marker = uuid.uuid4().hex
    answer = raw_request(
        platform.proxy_url,
        f"GET /t/{tenant['slug']}/_matrix/client/versions?control={marker} HTTP/1.1\r\n"
        "Host: x\r\nConnection: close\r\n\r\n".encode(),
        source=source,
    )
    assert answer.status == 200
    return poll(
        lambda: next((x for x in lines_from(platform, tenant["id"], source) if marker in x), None),
        timeout=10,
        what="the control request in the homeserver's access log",
    )


def upstream_connections(port: int) -> set[int]:
    """Local ports of the established TCP connections to a homeserver port (the proxy's)."""
    return {
        c.laddr.port
        for c in psutil.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
    }


@pytest.fixture
def extra_route(platform: RunningPlatform) -> Iterator[Any]:
    """Publish a copy of a tenant's route under another slug and host, with other limits or
    another upstream (test routes only: the provisioner never sees them); withdrawn after."""
    client, keys = redis_of(platform)
    published: list[Route] = []

    def publish(tenant: dict, slug: str, **changes: Any) -> Route:
        original = Route.from_json(client.hget(keys.routes, slug_field(tenant["slug"])))
        route = replace(original, slug=slug, server_name=f"{slug}.c3.test", **changes)
        publish_route(client, keys, route)
        published.append(route)
        # The proxy answers well-known itself: the route is live without touching upstream.
        poll(
            lambda: (
                httpx.get(f"{platform.proxy_url}/t/{slug}/.well-known/matrix/client").status_code
                == 200
            ),
            timeout=15,
            what=f"the proxy to route /t/{slug}",
        )
        return route

    yield publish
    for route in published:
        withdraw_route(client, keys, server_name=route.server_name, slug=route.slug)
    client.close()


@dataclass
class Received:
    head: bytes
    body: bytes


@dataclass
class RecordingHomeserver:
    """A stand-in homeserver (fault injection): records every connection and request the
    proxy makes, answers ``200 {}``; with ``hold`` cleared it keeps requests waiting."""

    server: socket.socket
    connections: int = 0
    requests: list[Received] = field(default_factory=list)
    bytes_received: int = 0
    answer: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _recv(self, conn: socket.socket) -> bytes:
        data = conn.recv(65536)
        with self.lock:
            self.bytes_received += len(data)
        return data

    def _connection(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = self._recv(conn)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                }
                if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while not buffer.endswith(b"0\r\n\r\n"):
                        data = self._recv(conn)
                        if not data:
                            return
                        buffer += data
                    body, buffer = buffer, b""
                else:
                    length = int(fields.get(b"content-length", b"0"))
                    while len(buffer) < length:
                        data = self._recv(conn)
                        if not data:
                            return
                        buffer += data
                    body, buffer = buffer[:length], buffer[length:]
                with self.lock:
                    self.requests.append(Received(head, body))
                if not self.answer.wait(timeout=60):
                    return
                try:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 2\r\n\r\n{}"
                    )
                except OSError:
                    return

    def paths(self) -> list[str]:
        with self.lock:
            return [r.head.split(b" ")[1].decode() for r in self.requests]


@pytest.fixture
def recorder() -> Iterator[RecordingHomeserver]:
    server = socket.create_server(("127.0.0.1", 0))
    recording = RecordingHomeserver(server)
    recording.answer.set()
    threading.Thread(target=recording.serve, daemon=True).start()
    yield recording
    recording.answer.set()
    server.close()


@pytest.fixture(scope="module")
def wall(platform: RunningPlatform) -> dict:
    return platform.create_tenant("wall")


def proxy_port(platform: RunningPlatform) -> str:
    return platform.proxy_url.rsplit(":", 1)[1]


# 1. The admin API ----------------------------------------------------------------------

# Each a distinct way to spell (or reach) the admin API; sent under both tenant routings.
ADMIN_TRICKS = [
    ADMIN,
    "/_synapse/admin",
    "/_synapse/admin/",
    ADMIN + "/",
    ADMIN + "?x=1",
    ADMIN + "?/../../_matrix/client/versions",
    ADMIN + "#fragment",
    ADMIN + ".",
    "/_synapse/admin./v1/server_version",
    "/_synapse/%61dmin/v1/server_version",
    "/_synapse/%61%64%6d%69%6e/v1/server_version",
    "/%5F%73%79%6E%61%70%73%65/%61%64%6D%69%6E/v1/server_version",
    "/%5fsynapse/admin/v1/server_version",
    "/%5Fsynapse/admin/v1/server_version",
    "/_synapse%2Fadmin/v1/server_version",
    "/_synapse%2fadmin%2fv1%2fserver_version",
    "/%2F_synapse/admin/v1/server_version",
    "/_synapse/%2561dmin/v1/server_version",  # double encoding
    "/_synapse/%252561dmin/v1/server_version",  # triple encoding
    "/%255fsynapse/admin/v1/server_version",
    "/_synapse/%u0061dmin/v1/server_version",  # IIS-style %u
    "/_matrix/client/../../_synapse/admin/v1/server_version",
    "/_matrix/client/r0/../../../_synapse/admin/v1/server_version",
    "/_matrix/client/%2e%2e/%2e%2e/_synapse/admin/v1/server_version",
    "/_matrix/client/%2E%2E/%2E%2E/_synapse/admin/v1/server_version",
    "/_matrix/client/.%2e/%2e./_synapse/admin/v1/server_version",
    "/_matrix/client/%252e%252e/%252e%252e/_synapse/admin/v1/server_version",
    "/_matrix/client/..%2f..%2f_synapse/admin/v1/server_version",
    "/_matrix/client/versions/..%252f..%252f..%252f_synapse/admin/v1/server_version",
    "/_matrix/client/..;/..;/_synapse/admin/v1/server_version",
    "/_matrix/client/./../../_synapse/admin/v1/server_version",
    "/_matrix/client/%c0%ae%c0%ae/%c0%ae%c0%ae/_synapse/admin/v1/server_version",
    "/_matrix/media/../../_synapse/admin/v1/server_version",
    "/_synapse/client/../admin/v1/server_version",
    "/_synapse/client/%2e%2e/admin/v1/server_version",
    "/_synapse/client%2f..%2fadmin/v1/server_version",
    "/_synapse/admin/../admin/v1/server_version",
    "/.well-known/../_synapse/admin/v1/server_version",
    "//_synapse/admin/v1/server_version",
    "/_synapse//admin/v1/server_version",
    "///_synapse///admin///v1/server_version",
    "/_synapse/admin;x=1/v1/server_version",
    "/_synapse;/admin/v1/server_version",
    "/_SYNAPSE/ADMIN/v1/server_version",
    "/_Synapse/Admin/v1/server_version",
    "/_synapse/ADMIN/v1/server_version",
    "/_synapse\\admin/v1/server_version",
    "/_synapse%5cadmin/v1/server_version",
    "/_matrix/client/..\\..\\_synapse/admin/v1/server_version",
    "/_synapse/admin%00/v1/server_version",
    "/_matrix/client/versions%00/../../../_synapse/admin/v1/server_version",
    "/_synapse/admin\x00/v1/server_version",  # a raw NUL byte
    "/_synapse/admin%09/v1/server_version",
    "/_synapse/admin%20/v1/server_version",
    "/_synapse/admin/v1/server_version%3Fx=1",
    "/_synapse/admin/v1/server_version%23",
]
METHOD_TRICKS = [
    ("POST", "/_synapse/admin/v1/register"),
    ("PUT", "/_synapse/admin/v2/users/@mallory:wall.c3.test"),
    ("DELETE", "/_synapse/admin/v1/rooms/!r:wall.c3.test"),
    ("OPTIONS", ADMIN),
    ("HEAD", ADMIN),
]


def _refused(answer: Answer, what: object) -> None:
    assert answer.status in (400, 404), (what, answer)
    if answer.body:  # (HEAD has none)
        assert answer.json()["errcode"].startswith("M_"), (what, answer)


def test_the_admin_api_is_unreachable_whatever_the_encoding(
    platform: RunningPlatform, wall: dict
) -> None:
    host = f"wall.c3.test:{proxy_port(platform)}"
    routings = [
        ("/t/wall", "x"),  # path prefix (the local and single-domain way)
        ("", host),  # Host routing (the production way)
        ("", f"WALL.C3.Test.:{proxy_port(platform)}"),  # the same host, spelt differently
    ]
    tricks = 0
    for path in ADMIN_TRICKS:
        for prefix, host_header in routings:
            answer = raw_request(
                platform.proxy_url,
                f"GET {prefix}{path} HTTP/1.1\r\nHost: {host_header}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1"),
                source=ATTACKER,
            )
            _refused(answer, (prefix, host_header, path))
        tricks += 1
    for method, path in METHOD_TRICKS:
        for prefix, host_header in routings:
            answer = raw_request(
                platform.proxy_url,
                f"{method} {prefix}{path} HTTP/1.1\r\nHost: {host_header}\r\n"
                "Content-Type: application/json\r\nContent-Length: 2\r\n"
                "Connection: close\r\n\r\n{{}}".encode(),
                source=ATTACKER,
                has_body=method != "HEAD",
            )
            _refused(answer, (method, prefix, path))
        tricks += 1
    # Absolute-form request targets: the host in the target, the path after it.
    for target, host_header in [
        (f"http://{host}{ADMIN}", host),
        (f"http://{host}/_synapse/%61dmin/v1/server_version", host),
        (f"http://WALL.c3.test{ADMIN}", host),
        (f"https://{host}{ADMIN}?x=1", host),
        (f"{platform.proxy_url}/t/wall{ADMIN}", platform.proxy_url.removeprefix("http://")),
        (f"http://{host}/_matrix/client/../../_synapse/admin/v1/server_version", host),
        (f"http://other.c3.test{ADMIN}", host),  # target and Host disagree
        (f"http://{host}/t/wall{ADMIN}", "elsewhere.c3.test"),
    ]:
        answer = raw_request(
            platform.proxy_url,
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode(),
            source=ATTACKER,
        )
        _refused(answer, target)
        tricks += 1
    # A request smuggled behind an empty body on a kept-alive connection is a request too.
    answer = raw_request(
        platform.proxy_url,
        f"GET /t/wall{ADMIN}?first HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        f"GET /t/wall{ADMIN}?second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        source=ATTACKER,
    )
    _refused(answer, "pipelined")
    tricks += 1
    assert tricks >= 40

    control = wait_for_control(platform, wall, ATTACKER)
    # Nothing the attacker sent reached the homeserver, but the control request.
    assert lines_from(platform, wall["id"], ATTACKER) == [control]
    assert not any("admin" in line for line in lines_from(platform, wall["id"], ATTACKER))
    # And Synapse would have answered: the admin API is there, for the platform itself.
    direct = httpx.get(f"http://127.0.0.1:{platform.homeserver_port(wall['id'])}{ADMIN}")
    assert direct.status_code == 200


# Server-server prefixes open only for a federating tenant, and only by Host.
FEDERATION_TRICKS = [
    "/_matrix/federation/../../_synapse/admin/v1/server_version",
    "/_matrix/federation/v1/../../../_synapse/admin/v1/server_version",
    "/_matrix/federation/%2e%2e/%2e%2e/_synapse/admin/v1/server_version",
    "/_matrix/federation/..%2f..%2f_synapse/admin/v1/server_version",
    "/_matrix/federation/%252e%252e/%252e%252e/_synapse/admin/v1/server_version",
    "/_matrix/federation/..;/..;/_synapse/admin/v1/server_version",
    "/_matrix/federation/v1/..\\..\\..\\_synapse/admin/v1/server_version",
    "/_matrix/federation%2f..%2f..%2f_synapse/admin/v1/server_version",
    "/_matrix/key/../../_synapse/admin/v1/server_version",
    "/_matrix/key/%2e%2e/%2e%2e/_synapse/admin/v1/server_version",
    "/_matrix/key/v2/%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/_synapse/admin/v1/server_version",
    "/_matrix/%66ederation/v1/version",
]


def test_a_federating_tenants_server_paths_never_reach_the_admin_api(
    platform: RunningPlatform, wall: dict, extra_route: Any
) -> None:
    extra_route(wall, "wall-fed", federation="open")  # the wall's Synapse, federation on
    host = f"wall-fed.c3.test:{proxy_port(platform)}"
    for path in FEDERATION_TRICKS:
        answer = raw_request(
            platform.proxy_url,
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
            source=REMOTE,
        )
        _refused(answer, path)
    # Under the /t/<slug> prefix server-server paths are not served at all.
    by_slug = raw_request(
        platform.proxy_url,
        b"GET /t/wall-fed/_matrix/federation/v1/version HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        source=REMOTE,
    )
    assert by_slug.status == 404
    # A plain server-server request is the only one of them the homeserver ever saw.
    marker = uuid.uuid4().hex
    raw_request(
        platform.proxy_url,
        f"GET /_matrix/key/v2/server?probe={marker} HTTP/1.1\r\nHost: {host}\r\n"
        "Connection: close\r\n\r\n".encode(),
        source=REMOTE,
    )
    [line] = poll(
        lambda: [x for x in lines_from(platform, wall["id"], REMOTE) if marker in x],
        timeout=10,
        what="the server-server request in the homeserver's access log",
    )
    assert lines_from(platform, wall["id"], REMOTE) == [line]


# 2. Host and client address ------------------------------------------------------------


def test_requests_without_exactly_one_known_host_never_reach_the_homeserver(
    platform: RunningPlatform, wall: dict
) -> None:
    host = f"wall.c3.test:{proxy_port(platform)}"
    upstream_port = platform.homeserver_port(wall["id"])
    before = upstream_connections(upstream_port)
    path = "/_matrix/client/versions"
    cases = [
        (f"GET {path} HTTP/1.1\r\nHost: nobody.c3.test\r\n", 421),
        (f"GET {path} HTTP/1.1\r\nHost: wall.c3.test.evil.test\r\n", 421),
        (f"GET {path} HTTP/1.1\r\nHost: evil.test.wall.c3.test\r\n", 421),
        (f"GET {path} HTTP/1.1\r\nHost: wall\r\n", 421),
        (f"GET {path} HTTP/1.1\r\nHost: {host}@evil.test\r\n", 400),
        (f"GET {path} HTTP/1.1\r\nHost: {host}.evil.test\r\n", 400),
        (f"GET {path} HTTP/1.1\r\nHost: evil.test/wall.c3.test\r\n", 400),
        (f"GET {path} HTTP/1.1\r\nHost:\r\n", 400),
        (f"GET {path} HTTP/1.1\r\nHost:   \r\n", 400),
        (f"GET {path} HTTP/1.1\r\n", 400),  # no Host at all
        (f"GET {path} HTTP/1.0\r\n", 400),
        (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n", 400),
        (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nHost: nobody.c3.test\r\n", 400),
        (f"GET {path} HTTP/1.1\r\nHost: nobody.c3.test\r\nHost: {host}\r\n", 400),
        (f"GET /t/wall{path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400),
        (f"GET /t/wall{path} HTTP/1.1\r\nHost:\r\n", 400),
        (f"GET /t/wall{path} HTTP/1.1\r\n", 400),
    ]
    for head, status in cases:
        answer = raw_request(
            platform.proxy_url,
            (head + "Connection: close\r\n\r\n").encode(),
            source=HOST_PROBER,
        )
        assert answer.status == status, (head, answer)
        assert answer.json()["errcode"] == "M_UNRECOGNIZED", (head, answer)

    assert upstream_connections(upstream_port) - before == set(), "the proxy opened a connection"
    control = wait_for_control(platform, wall, HOST_PROBER)
    assert lines_from(platform, wall["id"], HOST_PROBER) == [control]


def access_line_of(
    platform: RunningPlatform, proxy_url: str, wall: dict, *, source: str, headers: str
) -> str:
    """Send a request to the wall tenant through ``proxy_url`` from ``source`` with extra
    ``headers`` (CRLF-terminated lines); the homeserver's access-log line for it."""
    marker = uuid.uuid4().hex
    answer = raw_request(
        proxy_url,
        f"GET /t/wall/_matrix/client/versions?marker={marker} HTTP/1.1\r\nHost: x\r\n"
        f"{headers}Connection: close\r\n\r\n".encode(),
        source=source,
    )
    assert answer.status == 200
    [line] = poll(
        lambda: [x for x in access_log(platform, wall["id"]) if marker in x],
        timeout=10,
        what="the request in the homeserver's access log",
    )
    return line


def test_the_homeserver_sees_the_real_client_address_not_a_spoofed_one(
    platform: RunningPlatform, wall: dict, recorder: RecordingHomeserver, extra_route: Any
) -> None:
    spoofing = (
        f"X-Forwarded-For: {SPOOFED}\r\nX-Forwarded-For: {SPOOFED}, 10.0.0.1\r\n"
        f"X_Forwarded_For: {SPOOFED}\r\nX-Real-IP: {SPOOFED}\r\n"
        f"Forwarded: for={SPOOFED}\r\nX-Forwarded-Host: evil.test\r\n"
    )
    line = access_line_of(platform, platform.proxy_url, wall, source=SPOOFER, headers=spoofing)
    assert _CLIENT.search(line)["client"] == SPOOFER  # type: ignore[index]
    assert SPOOFED not in line

    # What exactly goes upstream: one X-Forwarded-For, the real peer; none of the others
    # (X-Forwarded-Host is the client's own Host, never the forged one).
    extra_route(wall, "wall-recorded", upstream=recorder.url)
    answer = raw_request(
        platform.proxy_url,
        f"GET /t/wall-recorded/_matrix/client/versions HTTP/1.1\r\nHost: x\r\n"
        f"{spoofing}Connection: close\r\n\r\n".encode(),
        source=SPOOFER,
    )
    assert answer.status == 200
    [received] = recorder.requests
    names = [line.split(b":")[0].lower() for line in received.head.split(b"\r\n")[1:]]
    assert names.count(b"x-forwarded-for") == 1
    assert f"X-Forwarded-For: {SPOOFER}".encode() in received.head.split(b"\r\n")
    for forged in (b"x_forwarded_for", b"x-real-ip", b"forwarded"):
        assert forged not in names
    assert names.count(b"x-forwarded-host") == 1 and names.count(b"host") == 1
    upstream_head = set(received.head.split(b"\r\n"))
    assert {b"Host: x", b"X-Forwarded-Host: x", b"X-Forwarded-Proto: http"} <= upstream_head
    assert SPOOFED.encode() not in received.head and b"evil.test" not in received.head


# 3. Framing and bodies -----------------------------------------------------------------

MALFORMED_FRAMING = {
    "content-length twice": b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "content-length twice, differing": b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    "content-length list": b"Content-Length: 2, 2\r\n\r\n{}",
    "content-length signed": b"Content-Length: +2\r\n\r\n{}",
    "content-length and chunked": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    "chunked and content-length": b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    "chunked twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    "gzip, chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunked, gzip": b"Transfer-Encoding: chunked, gzip\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "identity": b"Transfer-Encoding: identity\r\n\r\n{}",
    "xchunked": b"Transfer-Encoding: xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "space before colon": b"Transfer-Encoding : chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunk size not hex": b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunk size negative": b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
    "chunk size 0x": b"Transfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
    "chunk size overflow": b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n{}\r\n"
    b"0\r\n\r\n",
    "chunk shorter than its size": b"Transfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n",
    "chunk with bare LF": b"Transfer-Encoding: chunked\r\n\r\n2\n{}\n0\n\n",
    "obs-fold": b"X-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
    "obs-fold with tab": b"X-Folded: a\r\n\tb\r\nContent-Length: 2\r\n\r\n{}",
    "bare LF in headers": b"X-Bare: 1\nContent-Length: 2\r\n\r\n{}",
    "bare CR in headers": b"X-Bare: 1\rContent-Length: 2\r\n\r\n{}",
    "NUL in a header": b"X-Nul: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "header without colon": b"Broken\r\nContent-Length: 2\r\n\r\n{}",
}


def test_malformed_framing_is_refused_and_nothing_is_forwarded(
    platform: RunningPlatform, wall: dict, recorder: RecordingHomeserver, extra_route: Any
) -> None:
    extra_route(wall, "wall-framing", upstream=recorder.url)
    start = b"POST /t/wall-framing/_matrix/client/v3/user/x/filter HTTP/1.1\r\nHost: x\r\n"
    for what, rest in MALFORMED_FRAMING.items():
        answer = raw_request(platform.proxy_url, start + rest)
        assert answer.status == 400, (what, answer)
        assert answer.json()["errcode"] == "M_UNRECOGNIZED", what
        assert answer.headers.get("connection") == "close", what
    for what, request in {
        "bare LF everywhere": b"GET /t/wall-framing/_matrix/client/versions HTTP/1.1\nHost: x\n\n",
        "transfer coding on HTTP/1.0": b"POST /t/wall-framing/_matrix/client/versions HTTP/1.0\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "HTTP/2.0 on an HTTP/1 connection": b"GET /t/wall-framing/_matrix/client/versions "
        b"HTTP/2.0\r\nHost: x\r\n\r\n",
    }.items():
        answer = raw_request(platform.proxy_url, request)
        assert answer.status == 400, (what, answer)
        assert answer.json()["errcode"] == "M_UNRECOGNIZED", what
    assert (recorder.connections, recorder.bytes_received) == (0, 0)

    # The same request, well framed, goes through (so the check above could fail).
    answer = raw_request(platform.proxy_url, start + b"Content-Length: 2\r\n\r\n{}")
    assert answer.status == 200
    assert [r.body for r in recorder.requests] == [b"{}"]


def chunked(body: bytes, size: int = 16 * 1024) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_oversized_bodies_are_refused_before_any_byte_goes_upstream(
    platform: RunningPlatform, wall: dict, recorder: RecordingHomeserver, extra_route: Any
) -> None:
    limit = 64 * 1024
    extra_route(wall, "wall-small", upstream=recorder.url, max_upload_bytes=limit)
    upload = b"POST /t/wall-small/_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\n"

    declared = raw_request(platform.proxy_url, upload + b"Content-Length: %d\r\n\r\n" % (limit + 1))
    assert declared.status == 413 and declared.json()["errcode"] == "M_TOO_LARGE"

    # Chunked: no length to check up front. Sent in pieces, so that the proxy has read (and
    # would already have streamed on) most of it before the last piece crosses the limit.
    host, port = platform.proxy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(upload + b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(limit // 8192 + 1):
            sock.sendall(b"2000\r\n" + b"x" * 8192 + b"\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # until the proxy closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b"M_TOO_LARGE" in answer
    assert (recorder.connections, recorder.bytes_received) == (0, 0)

    # Under the limit, a chunked body arrives whole, and with a length: the homeserver never
    # has to agree with us on where a chunked body ends.
    body = bytes(range(256)) * 200
    answer = raw_request(
        platform.proxy_url, upload + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)
    )
    assert answer.status == 200
    [received] = recorder.requests
    assert received.body == body
    assert b"content-length: %d" % len(body) in received.head.lower()
    assert b"transfer-encoding" not in received.head.lower()


def test_a_chunked_upload_reaches_the_homeserver_whole(
    platform: RunningPlatform, wall: dict
) -> None:
    platform.create_user(wall["id"], "walt", "walt-secret-12")
    base = f"{platform.proxy_url}/t/wall"
    login = httpx.post(
        f"{base}/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "walt"},
            "password": "walt-secret-12",
        },
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    payload = b"chunk of a report\n" * 150_000  # ~2.7 MB: past the in-memory part, to a file

    def pieces() -> Iterator[bytes]:  # a generator body: httpx sends it chunked
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        upload = http.post(
            f"{base}/_matrix/media/v3/upload?filename=report.txt",
            content=pieces(),
            headers={"Content-Type": "text/plain"},
        )
        assert upload.status_code == 200, upload.text
        media = upload.json()["content_uri"].removeprefix("mxc://")
        download = http.get(f"{base}/_matrix/client/v1/media/download/{media}")
    assert download.status_code == 200
    assert download.content == payload


# 4. Slow clients -----------------------------------------------------------------------


def latencies(url: str, count: int) -> list[float]:
    """Seconds per request, each on a new connection (as a client that just arrived)."""
    taken = []
    for _ in range(count):
        started = time.monotonic()
        answer = raw_request(
            url,
            b"GET /t/wall/_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        taken.append(time.monotonic() - started)
        assert answer.status == 200
    return taken


def test_slow_request_heads_are_cut_off_while_other_clients_stay_fast(
    platform: RunningPlatform, wall: dict
) -> None:
    header_timeout = 3.0
    proxy = start_proxy(platform, free_port(), C3_PROXY_HEADER_TIMEOUT_S=str(header_timeout))
    try:
        baseline = latencies(proxy.url, 20)
        host, port = proxy.url.removeprefix("http://").split(":")
        slow: list[socket.socket] = []
        opened = time.monotonic()
        for n in range(200):
            sock = socket.create_connection((host, int(port)), timeout=10)
            if n % 10:  # and one in ten sends nothing at all
                sock.sendall(b"GET /t/wall/_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
            sock.setblocking(False)
            slow.append(sock)
        stop = threading.Event()

        def trickle() -> None:
            # The slowloris pace: a header line per connection every 250 ms, each one resets
            # any idle timer a server might have.
            while not stop.wait(0.25):
                for n, sock in enumerate(slow):
                    if n % 10:
                        try:
                            sock.send(b"X-Slow: 1\r\n")
                        except OSError:
                            pass

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        during = latencies(proxy.url, 20)
        assert time.monotonic() - opened < header_timeout, "measured after the timeout: too slow"

        # Every slow connection is answered 408 and closed, at the header timeout.
        selector = selectors.DefaultSelector()
        for sock in slow:
            selector.register(sock, selectors.EVENT_READ, data=bytearray())
        closed_at: dict[int, float] = {}
        answers: dict[int, bytes] = {}
        deadline = opened + header_timeout + 10
        while len(closed_at) < len(slow) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                if data:
                    key.data.extend(data)
                    continue
                closed_at[sock.fileno()] = time.monotonic() - opened
                answers[sock.fileno()] = bytes(key.data)
                selector.unregister(sock)
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()
        assert len(closed_at) == len(slow), f"{len(slow) - len(closed_at)} connections stayed"
        assert min(closed_at.values()) >= header_timeout * 0.9
        assert max(closed_at.values()) < header_timeout + 5
        assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers.values()) == len(slow)
    finally:
        proxy.terminate()
    # Other clients did not notice: a generous bound, not a benchmark.
    assert statistics.median(during) < statistics.median(baseline) * 3 + 0.05, (baseline, during)
    assert max(during) < 1.0, during


# 5. Per-tenant limits -------------------------------------------------------------------


def test_a_tenant_over_its_request_rate_gets_429_and_nothing_more_is_forwarded(
    platform: RunningPlatform, wall: dict, recorder: RecordingHomeserver, extra_route: Any
) -> None:
    extra_route(wall, "wall-rated", upstream=recorder.url, rate_per_second=2.0, rate_burst=5)
    request = b"GET /t/wall-rated/_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\n\r\n"
    # Fifteen clients (a client's own share of the rate is tested below): the tenant's limit.
    answers = [
        raw_request(platform.proxy_url, request, source=f"127.0.1.{n + 1}") for n in range(15)
    ]
    statuses = [a.status for a in answers]
    # The burst passes, then the rate (2/s) holds: a few tokens refill while we send.
    assert statuses[:5] == [200] * 5, statuses
    limited = [a for a in answers if a.status == 429]
    assert len(limited) >= 5, statuses
    for answer in limited:
        error = answer.json()
        assert error["errcode"] == "M_LIMIT_EXCEEDED"
        assert 0 < error["retry_after_ms"] <= 500  # one token at 2/s
        assert answer.headers["retry-after"] == "1"
    assert len(recorder.requests) == statuses.count(200)  # the refused never went upstream

    # Backing off as advised, the tenant is served again.
    poll(
        lambda: raw_request(platform.proxy_url, request).status == 200,
        timeout=5,
        interval=limited[-1].json()["retry_after_ms"] / 1000,
        what="the rate-limited tenant to be served again",
    )


def test_a_tenant_over_its_concurrency_share_gets_a_fast_503_but_long_polls_are_not_counted(
    platform: RunningPlatform, wall: dict, recorder: RecordingHomeserver, extra_route: Any
) -> None:
    extra_route(wall, "wall-busy", upstream=recorder.url, max_concurrent=3, rate_burst=100)
    recorder.answer.clear()  # the homeserver is slow: requests stay in flight
    base = f"{platform.proxy_url}/t/wall-busy"

    def client(source: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        return httpx.AsyncClient(
            timeout=30, limits=httpx.Limits(max_connections=None), transport=transport
        )

    async def scenario() -> tuple[list[int], int, float, dict, dict[str, str], list[int]]:
        # Slow requests of several clients (one client alone may hold only a share of the
        # tenant's slots: tested below).
        slow_clients = [client(f"127.0.2.{n + 1}") for n in range(3)]
        async with client("127.0.2.9") as c:
            # Five parked long-polls and three slow requests: the tenant's whole share.
            syncs = [
                asyncio.create_task(c.get(f"{base}/_matrix/client/v3/sync?timeout=30000&n={n}"))
                for n in range(5)
            ]
            slow = [
                asyncio.create_task(
                    slow_clients[n].get(f"{base}/_matrix/client/v3/profile/@a:x?n={n}")
                )
                for n in range(3)
            ]
            await asyncio.to_thread(
                poll, lambda: len(recorder.requests) == 8, timeout=10, what="8 requests upstream"
            )
            started = time.monotonic()
            refused = await c.get(f"{base}/_matrix/client/v3/profile/@a:x?n=over")
            took = time.monotonic() - started
            # Another long-poll is still admitted (it does not count against the share).
            extra_sync = asyncio.create_task(c.get(f"{base}/_matrix/client/v3/sync?since=s1"))
            await asyncio.to_thread(
                poll, lambda: len(recorder.requests) == 9, timeout=10, what="the ninth request"
            )
            recorder.answer.set()
            done = await asyncio.gather(*syncs, *slow, extra_sync)
            after = await c.get(f"{base}/_matrix/client/v3/profile/@a:x?n=after")
            for slow_client in slow_clients:
                await slow_client.aclose()
            return (
                [r.status_code for r in done],
                refused.status_code,
                took,
                refused.json(),
                dict(refused.headers),
                [after.status_code],
            )

    statuses, status, took, error, headers, after = asyncio.run(scenario())
    assert status == 503
    assert took < 1.0  # refused at once, not queued behind the slow requests
    assert error["errcode"] == "M_LIMIT_EXCEEDED" and error["retry_after_ms"] > 0
    assert headers["retry-after"] == "1"
    assert statuses == [200] * 9
    assert after == [200]  # the share is free again once the slow requests are answered
    assert "n=over" not in " ".join(recorder.paths())


HAMMER = """
import asyncio, collections, json, sys, time
import aiohttp

url, workers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
statuses = collections.Counter()

async def worker(session, end):
    while time.monotonic() < end:
        async with session.get(url) as response:
            await response.read()
            statuses[response.status] += 1

async def main():
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as response:
            await response.read()
        print("started", flush=True)
        end = time.monotonic() + seconds
        await asyncio.gather(*(worker(session, end) for _ in range(workers)))
    print(json.dumps(statuses), flush=True)

asyncio.run(main())
"""


def test_a_noisy_tenant_does_not_slow_the_others(
    platform: RunningPlatform, wall: dict, extra_route: Any, tmp_path: Path
) -> None:
    noisy = platform.create_tenant("noisy")
    extra_route(noisy, "noisy-capped", rate_per_second=50.0, rate_burst=50, max_concurrent=4)
    quiet = f"{platform.proxy_url}/t/wall/_matrix/client/versions"

    def timed(http: httpx.Client, count: int) -> tuple[list[float], list[int]]:
        taken, statuses = [], []
        for _ in range(count):
            started = time.monotonic()
            statuses.append(http.get(quiet).status_code)
            taken.append(time.monotonic() - started)
        return taken, statuses

    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    with httpx.Client(timeout=10) as http:
        baseline, _ = timed(http, 30)
        hammer = subprocess.Popen(
            [
                sys.executable,
                str(script),
                f"{platform.proxy_url}/t/noisy-capped/_matrix/client/versions",
                "64",
                "6",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert hammer.stdout is not None
            assert hammer.stdout.readline().strip() == "started"
            during, statuses = timed(http, 30)
            output = hammer.communicate(timeout=60)[0]
        finally:
            hammer.kill()
    noisy_statuses = {int(k): v for k, v in json.loads(output.strip().splitlines()[-1]).items()}

    assert noisy_statuses.get(429, 0) > 0 and noisy_statuses.get(503, 0) > 0, noisy_statuses
    assert set(noisy_statuses) <= {200, 429, 503}, noisy_statuses
    assert statuses == [200] * 30
    # Generous bounds: shared CPUs make this no benchmark, but a starved tenant would show.
    assert statistics.median(during) < statistics.median(baseline) * 5 + 0.05, (
        baseline,
        during,
    )
    assert max(during) < 2.0, during


# 6. One client among many ----------------------------------------------------------------

SLOW_BODY = "127.0.0.8"  # the reviewer's slow-body sockets
NEIGHBOUR = "127.0.0.9"  # another client of the same tenant


def test_one_client_with_many_slow_bodies_does_not_take_its_tenant_offline(
    platform: RunningPlatform, wall: dict
) -> None:
    platform.create_user(wall["id"], "sloane", "sloane-secret-12")
    base = f"{platform.proxy_url}/t/wall"
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "sloane"},
        "password": "sloane-secret-12",
    }
    signed_in = httpx.post(f"{base}/_matrix/client/v3/login", json=login)
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["access_token"]

    # As the reviewer did: 270 sockets from one address (more than the tenant's 256 slots),
    # each a login head and one byte of a 1000-byte body.
    host, port = platform.proxy_url.removeprefix("http://").split(":")
    parked: list[socket.socket] = []
    answers: dict[int, bytes] = {}
    try:
        for _ in range(270):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((SLOW_BODY, 0))
            sock.connect((host, int(port)))
            sock.sendall(
                b"POST /t/wall/_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            sock.setblocking(False)
            parked.append(sock)
        share = 256 // 4  # C3_PROXY_CLIENT_CONCURRENCY_SHARE's default, 0.25

        def refused() -> bool:
            for sock in parked:
                try:
                    answers[sock.fileno()] = answers.get(sock.fileno(), b"") + sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    pass
            return sum(a.startswith(b"HTTP/1.1 503 ") for a in answers.values()) >= 270 - share

        # The client's share is parked, the rest of its requests are refused at once …
        poll(refused, timeout=20, what="the requests over the client's share to be refused")
        assert all(b"M_LIMIT_EXCEEDED" in a for a in answers.values() if a)
        assert sum(1 for a in answers.values() if a) == 270 - share

        # … and the tenant's users are served as ever: the signed-in one, and a new sign-in.
        with httpx.Client(
            timeout=10, transport=httpx.HTTPTransport(local_address=NEIGHBOUR)
        ) as http:
            whoami = http.get(
                f"{base}/_matrix/client/v3/account/whoami",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert whoami.status_code == 200, whoami.text
            again = http.post(f"{base}/_matrix/client/v3/login", json=login)
            assert again.status_code == 200, again.text
            for _ in range(20):
                assert http.get(f"{base}/_matrix/client/versions").status_code == 200
    finally:
        for sock in parked:
            sock.close()


def test_one_client_cannot_use_up_its_tenants_request_rate(
    platform: RunningPlatform, wall: dict, recorder: RecordingHomeserver, extra_route: Any
) -> None:
    # 4/s, burst 10: one client's own bucket is half of that (C3_PROXY_CLIENT_RATE_SHARE).
    extra_route(wall, "wall-shared", upstream=recorder.url, rate_per_second=4.0, rate_burst=10)
    request = b"GET /t/wall-shared/_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\n\r\n"
    flood = [raw_request(platform.proxy_url, request, source=SLOW_BODY) for _ in range(20)]
    statuses = [a.status for a in flood]
    assert statuses[:5] == [200] * 5, statuses
    limited = [a for a in flood if a.status == 429]
    assert len(limited) >= 12, statuses
    for answer in limited:
        assert answer.json()["errcode"] == "M_LIMIT_EXCEEDED"
        assert 0 < answer.json()["retry_after_ms"] <= 500  # one token of its own 2/s
    # The tenant's other clients still have the rest of its bucket.
    others = [raw_request(platform.proxy_url, request, source=NEIGHBOUR) for _ in range(4)]
    assert [a.status for a in others] == [200] * 4
    assert len(recorder.requests) == statuses.count(200) + 4


# 7. Behind a load balancer, and what the homeserver tells about itself -------------------

BALANCER = "127.0.0.6"  # a trusted load balancer in front of the proxy


def test_behind_a_trusted_balancer_the_homeserver_and_the_limits_see_the_real_client(
    platform: RunningPlatform, wall: dict, recorder: RecordingHomeserver, extra_route: Any
) -> None:
    proxy = start_proxy(platform, free_port(), C3_PROXY_TRUSTED_PROXIES=f"10.0.0.0/8,{BALANCER}")
    try:

        def seen_by_synapse(source: str, forwarded: str) -> str:
            headers = f"X-Forwarded-For: {forwarded}\r\n"
            line = access_line_of(platform, proxy.url, wall, source=source, headers=headers)
            return _CLIENT.search(line)["client"]  # type: ignore[index]

        # The balancer appended the client's address; what the client wrote is not believed.
        assert seen_by_synapse(BALANCER, f"{SPOOFED}, 198.51.100.7") == "198.51.100.7"
        # Through two of our hops: the right-most one that is not ours.
        assert seen_by_synapse(BALANCER, f"{SPOOFED}, 198.51.100.7, 10.1.2.3") == "198.51.100.7"
        # Anybody else forging the header is seen as itself.
        assert seen_by_synapse(SPOOFER, f"{SPOOFED}, 198.51.100.7") == SPOOFER
        # A malformed entry is skipped, and nothing to its left is believed: the nearest
        # known hop is the client.
        assert seen_by_synapse(BALANCER, f"{SPOOFED}, not-an-address") == BALANCER
        assert seen_by_synapse(BALANCER, f"{SPOOFED}, <script>, 10.1.2.3") == "10.1.2.3"

        # Exactly one X-Forwarded-For goes upstream, with the client alone.
        extra_route(wall, "wall-balanced", upstream=recorder.url, rate_per_second=0.5, rate_burst=4)
        request = (
            "GET /t/wall-balanced/_matrix/client/versions HTTP/1.1\r\nHost: x\r\n"
            "X-Forwarded-For: {}\r\nConnection: close\r\n\r\n"
        )
        answer = raw_request(
            proxy.url, request.format(f"{SPOOFED}, 198.51.100.7").encode(), source=BALANCER
        )
        assert answer.status == 200
        [received] = recorder.requests
        forwarded = [
            line
            for line in received.head.split(b"\r\n")
            if line.lower().startswith(b"x-forwarded-for")
        ]
        assert forwarded == [b"X-Forwarded-For: 198.51.100.7"]

        # The per-client limits count by that address too: one client behind the balancer
        # runs out of its own share (2 of the burst of 4), the next one is served.
        statuses = [
            raw_request(proxy.url, request.format("198.51.100.7").encode(), source=BALANCER).status
            for _ in range(2)
        ]
        assert statuses == [200, 429]
        other = raw_request(proxy.url, request.format("198.51.100.8").encode(), source=BALANCER)
        assert other.status == 200
    finally:
        proxy.terminate()


def test_answers_do_not_tell_which_homeserver_version_runs_behind(
    platform: RunningPlatform, wall: dict
) -> None:
    path = "/_matrix/client/versions"
    direct = httpx.get(f"http://127.0.0.1:{platform.homeserver_port(wall['id'])}{path}")
    server = direct.headers["server"]  # "Synapse/1.x.y (b=…)": what the proxy must not pass on
    version = server.split()[0].split("/")[1]
    for answer in (
        httpx.get(f"{platform.proxy_url}/t/wall{path}"),
        httpx.get(f"{platform.proxy_url}/t/wall/_matrix/client/v3/account/whoami"),  # 401
        httpx.get(f"{platform.proxy_url}/t/wall/_matrix/media/v3/download/x/y"),  # 404
    ):
        assert "server" not in answer.headers, answer.headers
        for value in answer.headers.values():
            assert version not in value and "synapse/" not in value.lower(), answer.headers
