"""Matrix clients and homeserver facts for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import nio
import psutil

from tests.helpers.platform import RunningPlatform


def synapse_processes(config: Path) -> list[psutil.Process]:
    """The live homeserver processes of the tenant whose config is ``config``: started on their
    own (the command line names it) or forked by the zygote (its command line, the tenant's
    directory as working directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(config) in cmdline:
            found.append(proc)
        elif "provisioner.backends.zygote_server" in cmdline:
            with contextlib.suppress(psutil.Error):
                if proc.cwd() == os.path.realpath(config.parent):
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
