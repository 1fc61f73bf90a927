"""Matrix clients and homeserver facts for end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import nio
import psutil

from tests.helpers.platform import RunningPlatform


def synapse_processes(config: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(config) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


async def login(base_url: str, user_id: str, password: str) -> nio.AsyncClient:
    client = nio.AsyncClient(base_url, user_id)
    response = await client.login(password)
    assert isinstance(response, nio.LoginResponse), response
    return client


def usage_of(platform: RunningPlatform, tenant_id: str) -> dict[str, int]:
    with platform.api() as api:
        response = api.get(f"/v1/tenants/{tenant_id}/usage")
        assert response.status_code == 200, response.text
        return response.json()["totals"]
