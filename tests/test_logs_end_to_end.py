"""JSON logs with the request id, on a running platform (``C3_LOG_FORMAT=json``): every line
each service writes is one JSON object, and the lines one request causes — in the API, in the
worker running the operation it enqueued, in the proxy — carry that request's id."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.environment import platform_fixture
from tests.helpers.platform import RunningPlatform, poll

pytestmark = pytest.mark.e2e

SERVICES = ("api", "worker", "beat", "proxy")


json_platform = platform_fixture(
    "c3-json-logs",
    "The platform writing JSON logs, the proxy's access log included.",
    C3_LOG_FORMAT="json",
    C3_PROXY_ACCESS_LOG="true",
)


def log_lines(platform: RunningPlatform, service: str) -> list[dict[str, Any]]:
    """Every line of a service's log, each parsed (a line that is not JSON fails the test)."""
    path: Path = platform.data_dir / "logs" / f"{service}.log"
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"{service}.log:{number} is not JSON: {text[:300]!r}") from None
        assert isinstance(line, dict), text
        lines.append(line)
    return lines


def with_request_id(platform: RunningPlatform, service: str, request_id: str) -> list[dict]:
    return [line for line in log_lines(platform, service) if line["request_id"] == request_id]


def test_a_tenant_creation_is_traced_from_the_api_to_the_worker(
    json_platform: RunningPlatform,
) -> None:
    request_id = f"abc{uuid.uuid4().hex[:20]}"
    with json_platform.api() as api:
        created = api.post(
            "/v1/tenants",
            json={"slug": f"logs{uuid.uuid4().hex[:6]}", "display_name": "Logs"},
            headers={"X-Request-ID": request_id},
        )
        assert created.status_code == 202, created.text
        assert created.headers["x-request-id"] == request_id
        tenant_id = created.json()["id"]

        def active() -> bool:
            return bool(api.get(f"/v1/tenants/{tenant_id}").json()["status"] == "active")

        poll(active, timeout=90, what="the tenant to become active")

    api_lines = with_request_id(json_platform, "api", request_id)
    assert any("POST /v1/tenants" in line["message"] for line in api_lines), api_lines

    # The provision operation ran in the worker, and its lines say which request asked for it.
    def worker_lines() -> list[dict[str, Any]]:
        return with_request_id(json_platform, "worker", request_id)

    lines = poll(worker_lines, timeout=30, what="worker lines with the request id")
    assert any("succeeded" in line["message"] and tenant_id in line["message"] for line in lines)
    assert all(line.get("tenant_id") == tenant_id for line in lines), lines
    assert all(line["logger"] != "tenant_api.middleware" for line in lines)

    for service in SERVICES:  # every line of every service is JSON, with its fields
        for line in log_lines(json_platform, service):
            assert {"ts", "level", "logger", "message", "request_id"} <= set(line), line
            assert line["ts"].endswith("+00:00"), line  # UTC


def test_a_proxy_request_carries_its_id_there_and_back(json_platform: RunningPlatform) -> None:
    tenant = json_platform.create_tenant(f"logp{uuid.uuid4().hex[:6]}")
    versions = f"{json_platform.proxy_url}/t/{tenant['slug']}/_matrix/client/versions"
    request_id = f"prx{uuid.uuid4().hex[:20]}"

    answer = httpx.get(versions, headers={"X-Request-ID": request_id})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == request_id

    lines = poll(
        lambda: with_request_id(json_platform, "proxy", request_id),
        timeout=10,
        what="the proxy's line for the request",
    )
    assert lines[0]["tenant_id"] == tenant["id"]
    assert "GET /t/" in lines[0]["message"] and " 200 " in lines[0]["message"]
    # Forwarded upstream: the tenant's Synapse names the request by the same id.
    synapse_log = json_platform.homeserver_dir(tenant["id"]) / "homeserver.log"
    poll(
        lambda: f"GET-{request_id}" in synapse_log.read_text(),
        timeout=10,
        what="Synapse's log line for the request",
    )

    # An id that could break a log line or a header is replaced by one of the proxy's own.
    unsafe = httpx.get(versions, headers={"X-Request-ID": 'x" injected\\u000a'})
    replaced = unsafe.headers["x-request-id"]
    assert replaced != 'x" injected\\u000a' and len(replaced) == 32
    poll(
        lambda: with_request_id(json_platform, "proxy", replaced),
        timeout=10,
        what="the proxy's line under the id it made",
    )
