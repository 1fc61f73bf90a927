"""Reconcile as operators and tenant admins see it, on real Synapse: a killed homeserver comes
back, the platform metrics count it, and the tenant's admins (only they, and operators) find
it in the audit log. And a worker reconciles as soon as it starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from platform_core.metrics import ReconcileStats
from platform_core.migrate import upgrade
from platform_core.redis import RedisKeys
from tests.helpers.environment import clear_namespace, fresh_database
from tests.helpers.matrix import synapse_processes
from tests.helpers.platform import RunningPlatform, poll

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "recon-admin-pw-1"
RESTARTED = ("c3_reconcile_actions_total", "action=homeserver.restarted")
RUNS = ("c3_reconcile_runs_total", "")


def scrape(platform: RunningPlatform) -> dict[tuple[str, str], float]:
    with platform.api() as api:
        response = api.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def tenant_admin(platform: RunningPlatform, tenant_id: str) -> dict[str, str]:
    """Headers of a new tenant admin account of ``tenant_id``."""
    email = f"recon{uuid.uuid4().hex[:8]}@example.com"
    with platform.api() as api:
        created = api.post(
            "/v1/accounts",
            json={
                "email": email,
                "password": ADMIN_PASSWORD,
                "role": "tenant_admin",
                "tenant_id": tenant_id,
            },
        )
        assert created.status_code == 201, created.text
        tokens = api.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": ADMIN_PASSWORD},
            headers={"Authorization": ""},
        )
        assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


def reconcile_events(
    platform: RunningPlatform, headers: dict[str, str], tenant_id: str
) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{platform.api_url}/v1/audit-events",
        params={"tenant_id": tenant_id, "limit": 500},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return [e for e in response.json()["items"] if e["actor"] == "system:reconcile"]


def test_a_restarted_homeserver_is_counted_and_shown_to_its_tenants_admins(
    platform: RunningPlatform,
) -> None:
    tenant = platform.create_tenant("recon-crash")
    with platform.api() as api:
        other = api.post("/v1/tenants", json={"slug": "recon-other", "display_name": "Other"})
        assert other.status_code == 202, other.text
    admin, other_admin = (
        tenant_admin(platform, tenant["id"]),
        tenant_admin(platform, other.json()["id"]),
    )
    before = scrape(platform)

    versions = f"{platform.proxy_url}/t/{tenant['slug']}/_matrix/client/versions"
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    (victim,) = synapse_processes(config)
    victim.send_signal(signal.SIGKILL)
    # Exited, zombie or not: it is re-parented to init, and waiting for init to reap it (as a
    # wait() does) leaves time for the worker's own reconcile (every 30 s) to restart it first,
    # the likeliest reading of the one CI run where /health answered here.
    poll(
        lambda: victim.pid not in {p.pid for p in synapse_processes(config)},
        timeout=30,
        what="the killed homeserver to exit",
    )
    # Dead (asked directly: a request through the proxy would have the proxy heal it first).
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{platform.homeserver_port(tenant['id'])}/health")
    subprocess.run(  # now, rather than at the next beat (30 s)
        [sys.executable, "-m", "c3", "reconcile"],
        env={**os.environ, **platform.env, "C3_OPERATOR_TOKEN": platform.token},
        check=True,
        capture_output=True,
    )
    poll(
        lambda: scrape(platform)[RESTARTED] >= before[RESTARTED] + 1,
        timeout=90,
        what="the metrics to count a restarted homeserver",
    )
    assert httpx.get(versions).status_code == 200
    after = scrape(platform)
    assert after[RUNS] > before[RUNS]
    assert after[("c3_reconcile_last_run_timestamp_seconds", "")] > 0
    assert after[("c3_tenants", "status=active")] >= 1

    (event,) = [
        e
        for e in reconcile_events(platform, admin, tenant["id"])
        if e["action"] == "homeserver.restarted"
    ]
    assert event["tenant_id"] == tenant["id"]
    assert event["target_type"] == "tenant" and event["target_id"] == tenant["id"]
    assert event["details"] == {
        "tenant_status": "active",
        "observed": "not running",
        "desired": "running",
    }
    assert event["request_id"].startswith("reconcile-")  # groups the events of one pass
    # Operators see it too; another tenant's admin sees nothing of this tenant.
    operator_view = reconcile_events(platform, platform.headers, tenant["id"])
    assert event["id"] in {e["id"] for e in operator_view}
    assert reconcile_events(platform, other_admin, tenant["id"]) == []
    everything = httpx.get(
        f"{platform.api_url}/v1/audit-events", params={"limit": 500}, headers=other_admin
    ).json()["items"]
    assert all(e["tenant_id"] != tenant["id"] for e in everything)


def test_a_worker_reconciles_as_soon_as_it_starts(
    platform_env: dict[str, str], tmp_path: Path
) -> None:
    """No beat runs here: the only reconcile is the one the worker sends itself on start."""
    namespace = f"c3w{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    keys = RedisKeys(namespace)
    with fresh_database(tmp_path) as database_url:
        upgrade(database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("C3_")}
        env.update(
            {
                **platform_env,
                "C3_DATABASE_URL": database_url,
                "C3_REDIS_NAMESPACE": namespace,
                "C3_DATA_DIR": str(tmp_path / "data"),
            }
        )
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "c3", "worker", "--concurrency", "1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:

            def reconciled() -> ReconcileStats | None:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                stats = ReconcileStats.from_redis(client.hgetall(keys.reconcile_metrics))
                return stats if stats.runs else None

            stats = poll(reconciled, timeout=60, what="the worker's start-up reconcile")
            assert stats.runs == 1 and stats.last_run_at is not None
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
            client.close()
            clear_namespace(platform_env["C3_REDIS_URL"], namespace)
