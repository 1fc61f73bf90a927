"""The platform database away (down, restarting, out of connections): clients get a clear 503
they can retry, never a 500, and nothing half-done."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from platform_core.db import async_engine, async_sessionmaker_
from platform_core.settings import get_settings
from tenant_api.main import create_app
from tests.helpers.environment import auth


def _reset() -> None:
    get_settings.cache_clear()
    async_engine.cache_clear()
    async_sessionmaker_.cache_clear()


@pytest.fixture
async def api_without_database(
    platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    # Port 1 on loopback: connection refused at once, like a database that is restarting.
    monkeypatch.setenv("C3_DATABASE_URL", "postgresql://c3@127.0.0.1:1/c3")
    _reset()
    try:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=auth()
        ) as client:
            yield client
    finally:
        monkeypatch.undo()
        _reset()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == "5"
    assert "database is unavailable" in response.json()["detail"]


async def test_reads_and_writes_get_a_retryable_503(
    api_without_database: httpx.AsyncClient,
) -> None:
    assert_unavailable(await api_without_database.get("/v1/tenants"))
    body = {"slug": f"t-{uuid.uuid4().hex[:8]}", "display_name": "Down"}
    assert_unavailable(await api_without_database.post("/v1/tenants", json=body))


async def test_a_post_with_an_idempotency_key_gets_the_same_503(
    api_without_database: httpx.AsyncClient,
) -> None:
    body = {"slug": f"t-{uuid.uuid4().hex[:8]}", "display_name": "Down"}
    answer = await api_without_database.post(
        "/v1/tenants", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert_unavailable(answer)
