"""Lifecycle robustness on the real platform (`c3 up`): workers killed with kill -9 while
tenants are provisioned (stand-in homeservers for 20 tenants, real Synapse for 2), the broker
restarted (with and without its data) while tenants are provisioned and created, and poison
tenants whose start always fails or kills its worker.

After each, what a customer and an operator would see holds: every accepted tenant is active
and served, with exactly one homeserver process, one port and one admin registration, nothing
left behind for tenants that do not exist, and failures end in ``failed`` with the attempts,
growing delays and errors in the operation's history.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections import defaultdict
from contextlib import AbstractContextManager, closing
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from c3.local_run import EmbeddedRedis
from provisioner import tenant_databases
from provisioner.backends.zygote_server import MARKER
from tests.helpers.environment import isolated_platform
from tests.helpers.platform import RunningPlatform, kill_worker, poll

pytestmark = pytest.mark.e2e

# Recovery in seconds instead of minutes: a dead worker's tenant lease expires after 3 s, a
# lost task is enqueued again after 3 s untouched, reconcile runs every second.
FAST_RECOVERY = {
    "C3_OPERATION_LEASE_TTL_S": "3",
    "C3_OPERATION_STUCK_AFTER_S": "3",
    "C3_RECONCILE_INTERVAL_S": "1",
    "C3_OPERATION_RETRY_BASE_S": "0.5",
    "C3_OPERATION_RETRY_CAP_S": "8",
}
FAKE = {"C3_BACKEND": "fake", "C3_FAKE_HOMESERVER_BOOT_S": "0.4"}


def own_platform(
    tmp_path: Path, platform_env: dict[str, str], **settings: str
) -> AbstractContextManager[RunningPlatform]:
    """A platform of its own (database, Redis namespace, data dir), recovering fast, with
    ``settings``."""
    return isolated_platform(platform_env, tmp_path / "c3", **{**FAST_RECOVERY, **settings})


def create_tenants(api: httpx.Client, slugs: list[str]) -> dict[str, dict[str, Any]]:
    """POST each tenant; returns the accepted tenants (with their operation) by slug."""
    accepted = {}
    for slug in slugs:
        response = api.post("/v1/tenants", json={"slug": slug, "display_name": slug.title()})
        assert response.status_code == 202, response.text
        accepted[slug] = response.json()
    return accepted


def statuses(api: httpx.Client) -> dict[str, str]:
    page = api.get("/v1/tenants", params={"limit": 200})
    assert page.status_code == 200, page.text
    return {t["id"]: t["status"] for t in page.json()["items"]}


def wait_all_active(api: httpx.Client, ids: list[str], timeout: float) -> None:
    def all_active() -> bool:
        now = statuses(api)
        assert not [i for i in ids if now.get(i) == "failed"], now
        return all(now.get(i) == "active" for i in ids)

    poll(all_active, timeout=timeout, what=f"{len(ids)} tenants to become active", interval=0.3)


def operation(api: httpx.Client, tenant: dict[str, Any]) -> dict[str, Any]:
    answer = api.get(tenant["operation"]["url"])
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


# Worker processes ---------------------------------------------------------------------


def kill_during_attempts(
    running: RunningPlatform, api: httpx.Client, tenants: list[dict[str, Any]], parts: list[str]
) -> None:
    """kill -9 each of ``parts`` ("main" or "child") in turn, each while a provisioning
    attempt that the live worker started is in flight (or once no tenant is left to go)."""
    since = 0.0
    for part in parts:
        in_flight = functools.partial(attempt_in_flight, api, tenants, since)
        poll(in_flight, timeout=120, what="a provisioning attempt in flight", interval=0.05)
        since = time.time()
        kill_worker(running, part=part)


def attempt_in_flight(api: httpx.Client, tenants: list[dict[str, Any]], since: float) -> bool:
    """True while some tenant's provisioning attempt, started or advanced after ``since``
    (so by a worker alive now), has not ended — or when every tenant is active already."""
    now = statuses(api)
    left = [t for t in tenants if now[t["id"]] != "active"]
    if not left:
        return True
    for tenant in left:
        op = operation(api, tenant)
        last = op["history"][-1] if op["history"] else None
        if (
            op["state"] == "running"
            and last is not None
            and last["event"] in ("attempt", "step")
            and _at(last) > since
        ):
            return True
    return False


# Homeserver processes -----------------------------------------------------------------


def homeserver_processes(data_dir: Path) -> dict[str, list[psutil.Process]]:
    """Live processes whose command line names a file under a homeserver data directory,
    by that directory's name (the tenant id)."""
    root = str(data_dir / "homeservers") + os.sep
    found: dict[str, list[psutil.Process]] = defaultdict(list)
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == "zombie":
            continue
        cmdline = proc.info["cmdline"] or []
        if MARKER in cmdline:  # the Synapse zygote or a homeserver it forked: by working dir
            with contextlib.suppress(psutil.Error):
                cwd = proc.cwd() + os.sep
                if cwd.startswith(root) and not cwd.startswith(root + "."):
                    found[cwd.removeprefix(root).split(os.sep)[0]].append(proc)
            continue
        for arg in cmdline:
            name = arg.removeprefix(root).split(os.sep)[0]
            if arg.startswith(root) and not name.startswith("."):  # .zygote: no tenant's
                found[name].append(proc)
                break
    return found


def listening_ports(proc: psutil.Process) -> set[int]:
    return {c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == "LISTEN"}


def configured_port(running: RunningPlatform, tenant_id: str) -> int:
    fake_config = running.homeserver_dir(tenant_id) / "fake-homeserver.json"
    if fake_config.exists():
        return int(json.loads(fake_config.read_text())["port"])
    return running.homeserver_port(tenant_id)


def assert_one_homeserver_each(running: RunningPlatform, tenant_ids: set[str]) -> None:
    """Exactly one live homeserver process per tenant — the one its pid file names — each
    listening on its own port; no data directory and no process for anything else (the Synapse
    zygote's ``.zygote`` directory belongs to no tenant)."""
    homeservers = running.data_dir / "homeservers"
    directories = {p.name for p in homeservers.iterdir() if not p.name.startswith(".")}
    assert directories == tenant_ids
    processes = homeserver_processes(running.data_dir)
    assert set(processes) == tenant_ids, {t: [p.pid for p in ps] for t, ps in processes.items()}
    ports: dict[int, str] = {}
    for tenant_id, procs in processes.items():
        assert len(procs) == 1, f"tenant {tenant_id} has {len(procs)} homeserver processes"
        pid_file = running.homeserver_dir(tenant_id) / "c3-homeserver.pid"
        assert int(pid_file.read_text()) == procs[0].pid
        port = configured_port(running, tenant_id)
        assert port in listening_ports(procs[0])
        assert port not in ports, f"tenants {ports.get(port)} and {tenant_id} share port {port}"
        ports[port] = tenant_id


def assert_served(running: RunningPlatform, slugs: list[str]) -> None:
    for slug in slugs:
        versions = httpx.get(f"{running.proxy_url}/t/{slug}/_matrix/client/versions", timeout=10)
        assert versions.status_code == 200, (slug, versions.text)


def all_served(running: RunningPlatform, slugs: list[str]) -> bool:
    return all(
        httpx.get(f"{running.proxy_url}/t/{slug}/_matrix/client/versions", timeout=10).status_code
        == 200
        for slug in slugs
    )


def registrations(running: RunningPlatform, tenant_id: str) -> list[dict[str, Any]]:
    path = running.homeserver_dir(tenant_id) / "registrations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# Tests --------------------------------------------------------------------------------


def test_kill_9_workers_while_20_tenants_provision(
    tmp_path: Path, platform_env: dict[str, str]
) -> None:
    with own_platform(tmp_path, platform_env, **FAKE) as running, running.api() as api:
        slugs = [f"crash-{n:02d}" for n in range(20)]
        tenants = create_tenants(api, slugs)
        kill_during_attempts(running, api, list(tenants.values()), ["main", "child"] * 3)

        ids = [t["id"] for t in tenants.values()]
        wait_all_active(api, ids, timeout=120)
        histories = [operation(api, t)["history"] for t in tenants.values()]
        events = [e["event"] for history in histories for e in history]
        assert "interrupted" in events  # killed attempts show in the operations' history
        for tenant in tenants.values():
            op = operation(api, tenant)
            assert op["state"] == "succeeded" and op["history"][-1]["event"] == "succeeded"
            admins = registrations(running, tenant["id"])
            assert [r["user_id"] for r in admins] == [f"@c3-admin:{tenant['server_name']}"]
        assert_one_homeserver_each(running, set(ids))
        assert_served(running, slugs)


def test_poison_tenants_fail_after_their_attempts_and_others_go_active(
    tmp_path: Path, platform_env: dict[str, str]
) -> None:
    """One tenant's start always fails, another's kills the worker running it every time:
    both end ``failed`` after C3_OPERATION_MAX_ATTEMPTS with the reasons in their history,
    while the tenants created with them become active."""
    poison = {
        **FAKE,
        "C3_OPERATION_MAX_ATTEMPTS": "3",
        "C3_FAKE_BACKEND_FAIL": "poison",
        "C3_FAKE_BACKEND_CRASH": "crasher",
    }
    with own_platform(tmp_path, platform_env, **poison) as running, running.api() as api:
        tenants = create_tenants(api, ["poison", "crasher", "fine-1", "fine-2", "fine-3"])

        def failed(slug: str) -> dict[str, Any] | None:
            op = operation(api, tenants[slug])
            return op if op["state"] == "failed" else None

        fine = [tenants[s]["id"] for s in ("fine-1", "fine-2", "fine-3")]
        wait_all_active(api, fine, timeout=60)
        failing = poll(lambda: failed("poison"), timeout=60, what="the poison tenant to fail")
        crashing = poll(lambda: failed("crasher"), timeout=90, what="the crasher to fail")

        assert failing["attempts"] == 3
        assert failing["last_error"].startswith("gave up after 3 attempts")
        assert "C3_FAKE_BACKEND_FAIL" in failing["last_error"]
        retries = [e for e in failing["history"] if e["event"] == "retry"]
        starts = [e for e in failing["history"] if e["event"] == "attempt"]
        assert [e["attempt"] for e in starts] == [1, 2, 3]
        delays = [e["delay_s"] for e in retries]
        assert len(delays) == 2 and 0 < delays[0] < delays[1], delays
        for retry, next_start in zip(retries, starts[1:], strict=True):
            waited = _at(next_start) - _at(retry)
            assert waited >= retry["delay_s"] - 0.05, (waited, retry)  # the backoff was kept
        assert failing["history"][-1]["event"] == "failed"

        assert crashing["attempts"] == 3
        interrupted = [e for e in crashing["history"] if e["event"] == "interrupted"]
        assert [e["attempt"] for e in interrupted] == [1, 2, 3]
        assert "interrupted" in crashing["last_error"]
        assert crashing["last_error"].startswith("gave up after 3 attempts")

        now = statuses(api)
        assert now[tenants["poison"]["id"]] == now[tenants["crasher"]["id"]] == "failed"
        assert all(now[i] == "active" for i in fine)
        assert_served(running, ["fine-1", "fine-2", "fine-3"])


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["at"]).timestamp()


PG_ADMIN_URL = os.environ.get("C3_TEST_DATABASE_URL", "")


def admin_count(running: RunningPlatform, tenant: dict[str, Any], storage: str) -> int:
    """Platform admin accounts in the tenant's homeserver database."""
    query = "SELECT count(*) FROM users WHERE name = %s"
    admin = f"@c3-admin:{tenant['server_name']}"
    if storage == "sqlite":
        database = running.homeserver_dir(tenant["id"]) / "homeserver.db"
        with closing(sqlite3.connect(database)) as conn:
            return int(conn.execute(query.replace("%s", "?"), (admin,)).fetchone()[0])
    name = tenant_databases.database_name_for(uuid.UUID(tenant["id"]))
    with psycopg.connect(make_conninfo(PG_ADMIN_URL, dbname=name)) as conn:
        row = conn.execute(query, (admin,)).fetchone()
    assert row is not None
    return int(row[0])


def tenant_databases_on_server(ids: list[str]) -> list[str]:
    """The databases and roles of these tenants that exist on the PostgreSQL server."""
    names = [tenant_databases.database_name_for(uuid.UUID(i)) for i in ids]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        databases = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,)
        ).fetchall()
        roles = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))
        return sorted([f"db:{d}" for (d,) in databases] + [f"role:{r}" for (r,) in roles])


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_kill_9_workers_while_2_synapse_tenants_provision(
    tmp_path: Path, platform_env: dict[str, str], storage: str
) -> None:
    """With each tenant on its own PostgreSQL database too: a killed attempt's half-made
    database and role are finished by the next attempt, never made twice."""
    settings = {}
    if storage == "postgres":
        if not PG_ADMIN_URL:
            pytest.skip("needs PostgreSQL (C3_TEST_DATABASE_URL)")
        settings["C3_TENANT_DATABASE_URL"] = PG_ADMIN_URL
    ids: list[str] = []
    try:
        with own_platform(tmp_path, platform_env, **settings) as running, running.api() as api:
            tenants = create_tenants(
                api, [f"synapse-crash-a-{storage}", f"synapse-crash-b-{storage}"]
            )
            ids = [t["id"] for t in tenants.values()]
            kill_during_attempts(running, api, list(tenants.values()), ["main", "child"])

            wait_all_active(api, ids, timeout=180)
            assert_one_homeserver_each(running, set(ids))
            if storage == "postgres":
                names = [tenant_databases.database_name_for(uuid.UUID(i)) for i in ids]
                assert tenant_databases_on_server(ids) == sorted(
                    [f"db:{n}" for n in names] + [f"role:{n}" for n in names]
                )
            for tenant in tenants.values():
                assert operation(api, tenant)["state"] == "succeeded"
                assert admin_count(running, tenant, storage) == 1
                # The platform kept a working admin token: it manages the tenant's users.
                users = api.get(f"/v1/tenants/{tenant['id']}/users")
                assert users.status_code == 200, users.text
            assert "interrupted" in {
                e["event"] for t in tenants.values() for e in operation(api, t)["history"]
            }
            assert_served(running, list(tenants))
    finally:
        if storage == "postgres":
            for tenant_id in ids:
                name = tenant_databases.database_name_for(uuid.UUID(tenant_id))
                tenant_databases.drop_database(PG_ADMIN_URL, name)


def create_during_outage(api: httpx.Client, slugs: list[str]) -> dict[str, dict[str, Any]]:
    """POST tenants while the broker is down: each is accepted (202, to be provisioned when
    the broker is back) or refused with a clear 503 problem — never a 500."""
    accepted = {}
    for slug in slugs:
        response = api.post("/v1/tenants", json={"slug": slug, "display_name": slug.title()})
        if response.status_code == 202:
            accepted[slug] = response.json()
            continue
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"], response.text
    return accepted


def test_broker_restarts_while_tenants_provision_and_are_created(
    tmp_path: Path, platform_env: dict[str, str]
) -> None:
    """The broker (Redis) goes down twice while tenants provision: stopped cleanly (its
    AOF brings the data back), then killed with its data lost (queued tasks, leases and
    published routes gone). Tenants created meanwhile are accepted or clearly refused; in
    the end every tenant the API lists is active and served, with one homeserver each."""
    broker = EmbeddedRedis(tmp_path / "redis")
    broker.start()
    try:
        with (
            own_platform(tmp_path, platform_env, C3_REDIS_URL=broker.url, **FAKE) as running,
            running.api() as api,
        ):
            accepted = create_tenants(api, [f"kept-{n}" for n in range(6)])
            poll(
                functools.partial(attempt_in_flight, api, list(accepted.values()), 0.0),
                timeout=60,
                what="a provisioning attempt in flight",
                interval=0.05,
            )
            broker.stop()
            accepted |= create_during_outage(api, ["outage-a", "outage-b"])
            broker.start()  # same port, same directory: the AOF restores the data

            lost = create_tenants(api, [f"lost-{n}" for n in range(6)])
            accepted |= lost
            poll(
                functools.partial(attempt_in_flight, api, list(lost.values()), 0.0),
                timeout=60,
                what="a provisioning attempt in flight",
                interval=0.05,
            )
            assert broker.process is not None
            broker.process.kill()
            broker.process.wait()
            for path in broker.directory.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.name != "redis.log":
                    path.unlink()
            accepted |= create_during_outage(api, ["outage-c", "outage-d"])
            broker.start()  # empty

            ids = [t["id"] for t in accepted.values()]
            wait_all_active(api, ids, timeout=120)
            listed = statuses(api)
            assert set(ids) <= set(listed)  # nothing accepted was lost
            assert set(listed.values()) == {"active"}  # and nothing refused half-exists
            for tenant in accepted.values():
                admins = registrations(running, tenant["id"])
                assert [r["user_id"] for r in admins] == [f"@c3-admin:{tenant['server_name']}"]
            assert_one_homeserver_each(running, set(listed))
            # Routes lost with the broker's data are published again by reconcile.
            poll(
                functools.partial(all_served, running, [t["slug"] for t in accepted.values()]),
                timeout=30,
                what="every tenant to be served again",
            )
    finally:
        broker.stop()
