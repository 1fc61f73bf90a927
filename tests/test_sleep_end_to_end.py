"""Sleeping homeservers on real Synapse (issue 16): an idle tenant's homeserver stops and the
first request wakes it (once, however many arrive together), a pending delayed event keeps it
up, lifecycle operations and reconcile work on a sleeper, a killed homeserver heals through
the proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.environment import platform_fixture
from tests.helpers.matrix import synapse_processes, usage_of
from tests.helpers.platform import (
    RunningPlatform,
    poll,
    poll_async,
    redis_of,
    wait_operation,
    worker_main,
)

pytestmark = pytest.mark.e2e

IDLE_S = 3
MAINTENANCE_STAY_S = 10
PASSWORD = "sleepy-password-1"

sleepy_platform = platform_fixture(
    "c3-sleep",
    "A platform whose sleep pass runs every second.",
    C3_SLEEP_CHECK_INTERVAL_S="1",
    C3_WAKE_TIMEOUT_S="60",
    C3_SLEEP_MAINTENANCE_STAY_S=str(MAINTENANCE_STAY_S),
)


def metrics(platform: RunningPlatform) -> dict[tuple[str, str], float]:
    with platform.api() as api:
        response = api.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def wakes(platform: RunningPlatform) -> float:
    return metrics(platform)[("c3_homeserver_wakes_total", "outcome=wake_tasks")]


def sleepy_tenant(platform: RunningPlatform, idle_after_s: int = IDLE_S) -> dict[str, Any]:
    code = f"sleepy{uuid.uuid4().hex[:6]}"
    slug = f"zz{uuid.uuid4().hex[:8]}"
    with platform.api() as api:
        plan = api.post(
            "/v1/plans",
            json={
                "code": code,
                "name": "Sleeps when idle",
                "currency": "EUR",
                "limits": {"idle_after_seconds": idle_after_s},
            },
        )
        assert plan.status_code == 201, plan.text
        created = api.post("/v1/tenants", json={"slug": slug, "display_name": "Z", "plan": code})
        assert created.status_code == 202, created.text
    tenant = poll(
        lambda: (t := tenant_of(platform, created.json()["id"]))["status"] == "active" and t,
        timeout=90,
        what="the sleepy tenant to be active",
    )
    platform.create_user(tenant["id"], "alice", PASSWORD)
    return tenant


def tenant_of(platform: RunningPlatform, tenant_id: str) -> dict[str, Any]:
    with platform.api() as api:
        response = api.get(f"/v1/tenants/{tenant_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_asleep(platform: RunningPlatform, tenant: dict[str, Any]) -> dict[str, Any]:
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    asleep = poll(
        lambda: (t := tenant_of(platform, tenant["id"]))["homeserver"]["state"] == "asleep" and t,
        timeout=90,
        what="the homeserver to fall asleep",
    )
    poll(lambda: not synapse_processes(config), timeout=30, what="no Synapse process left")
    assert asleep["status"] == "active" and asleep["homeserver"]["asleep_since"]
    return asleep


def wake_breakdown(platform: RunningPlatform, tenant: dict[str, Any]) -> str:
    """Where the last wake's time went, from the logs: the proxy's ask, Synapse's first log
    line after its imports, Synapse listening, the worker's end of the wake."""

    def last(path: Path, needle: str) -> datetime | None:
        lines = [line for line in path.read_text(errors="replace").splitlines() if needle in line]
        return datetime.strptime(lines[-1][:23], "%Y-%m-%d %H:%M:%S,%f") if lines else None

    logs, home = platform.data_dir / "logs", platform.homeserver_dir(tenant["id"])
    marks = {
        "asked": last(logs / "proxy.log", f"asked for a wake of tenant {tenant['id']}"),
        "synapse configured": last(home / "homeserver.log", "Server hostname"),
        "synapse listening": last(home / "homeserver.log", "Synapse now listening"),
        "worker done": max(  # the wake lane, or the worker when the lane was busy
            (
                at
                for log in ("wake-lane.log", "worker.log")
                if (at := last(logs / log, f"tenant {tenant['id']}: homeserver ")) is not None
            ),
            default=None,
        ),
    }
    start = marks["asked"]
    return ", ".join(
        f"{name} +{(at - start).total_seconds():.2f}s"
        for name, at in marks.items()
        if at is not None and start is not None
    )


def base(platform: RunningPlatform, tenant: dict[str, Any]) -> str:
    return f"{platform.proxy_url}/t/{tenant['slug']}"


def login(platform: RunningPlatform, tenant: dict[str, Any]) -> str:
    answer = httpx.post(
        f"{base(platform, tenant)}/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": PASSWORD,
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def test_an_idle_homeserver_sleeps_and_the_first_requests_wake_it_once(
    sleepy_platform: RunningPlatform,
) -> None:
    platform = sleepy_platform
    tenant = sleepy_tenant(platform)
    token = login(platform, tenant)
    auth = {"Authorization": f"Bearer {token}"}
    room = httpx.post(
        f"{base(platform, tenant)}/_matrix/client/v3/createRoom", json={}, headers=auth, timeout=60
    )
    assert room.status_code == 200, room.text
    room_id = room.json()["room_id"]
    wait_asleep(platform, tenant)
    assert metrics(platform)[("c3_homeservers", "state=asleep")] >= 1

    # 50 clients at once: all held, one wake, all answered.
    before = wakes(platform)
    whoami = f"{base(platform, tenant)}/_matrix/client/v3/account/whoami"

    async def first_requests() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=90, headers=auth) as client:
            started = time.monotonic()
            answers = await asyncio.gather(*(client.get(whoami) for _ in range(50)))
            return list(answers), time.monotonic() - started

    answers, took = asyncio.run(first_requests())
    assert [a.status_code for a in answers] == [200] * 50, answers[0].text
    assert all(a.json()["user_id"].startswith("@alice:") for a in answers)
    poll(lambda: wakes(platform) >= before + 1, timeout=30, what="the wake to be counted")
    assert wakes(platform) == before + 1
    print(f"wake latency (50 concurrent first requests, all answered): {took:.2f}s")
    print(f"  {wake_breakdown(platform, tenant)}")
    assert tenant_of(platform, tenant["id"])["homeserver"]["state"] == "awake"

    # Asleep again: a client's /sync and send wake it; the message is stored and billed once.
    wait_asleep(platform, tenant)
    sync = httpx.get(
        f"{base(platform, tenant)}/_matrix/client/v3/sync",
        params={"timeout": "1000"},
        headers=auth,
        timeout=90,
    )
    assert sync.status_code == 200, sync.text
    wait_asleep(platform, tenant)
    sent = httpx.put(
        f"{base(platform, tenant)}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
        json={"msgtype": "m.text", "body": "hello, sleeper"},
        headers=auth,
        timeout=90,
    )
    assert sent.status_code == 200, sent.text
    print(f"wake by a send: {wake_breakdown(platform, tenant)}")
    messages = httpx.get(
        f"{base(platform, tenant)}/_matrix/client/v3/rooms/{room_id}/messages",
        params={"dir": "b", "limit": "50"},
        headers=auth,
        timeout=60,
    ).json()["chunk"]
    assert [e["content"].get("body") for e in messages if e["type"] == "m.room.message"] == [
        "hello, sleeper"
    ]
    poll(
        lambda: usage_of(platform, tenant["id"]).get("messages") == 1,
        timeout=60,
        what="the message to be billed",
    )
    assert usage_of(platform, tenant["id"])["messages"] == 1


def test_a_pending_delayed_event_keeps_the_homeserver_awake(
    sleepy_platform: RunningPlatform,
) -> None:
    platform = sleepy_platform
    tenant = sleepy_tenant(platform)
    auth = {"Authorization": f"Bearer {login(platform, tenant)}"}
    url = base(platform, tenant)
    room_id = httpx.post(
        f"{url}/_matrix/client/v3/createRoom", json={}, headers=auth, timeout=60
    ).json()["room_id"]
    delayed = httpx.put(
        f"{url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/d1",
        params={"org.matrix.msc4140.delay": "600000"},
        json={"msgtype": "m.text", "body": "later"},
        headers=auth,
        timeout=60,
    )
    assert delayed.status_code == 200, delayed.text
    delay_id = delayed.json()["delay_id"]
    kept = metrics(platform)[("c3_homeserver_sleeps_total", "outcome=kept_awake_due_work")]
    poll(
        lambda: (
            metrics(platform)[("c3_homeserver_sleeps_total", "outcome=kept_awake_due_work")]
            >= kept + 2
        ),
        timeout=60,
        what="sleep passes to keep the homeserver awake",
    )
    assert tenant_of(platform, tenant["id"])["homeserver"]["state"] == "awake"
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    assert synapse_processes(config)
    cancelled = httpx.post(
        f"{url}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}",
        json={"action": "cancel"},
        headers=auth,
        timeout=60,
    )
    assert cancelled.status_code == 200, cancelled.text
    wait_asleep(platform, tenant)


def test_the_maintenance_window_wakes_sleepers_for_a_while(
    sleepy_platform: RunningPlatform,
) -> None:
    platform = sleepy_platform
    tenant = sleepy_tenant(platform)
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    wait_asleep(platform, tenant)
    # A maintenance window opened now (beat's pass opens one daily at
    # C3_SLEEP_MAINTENANCE_HOUR_UTC; this one is named by the test instead of by its date).
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from platform_core.celery import TaskNames, send_task; "
            f"send_task(TaskNames.WAKE_FOR_MAINTENANCE, 'e2e-{uuid.uuid4().hex[:8]}')",
        ],
        env={**os.environ, **platform.env},
        check=True,
        capture_output=True,
    )
    poll(
        lambda: tenant_of(platform, tenant["id"])["homeserver"]["state"] == "awake",
        timeout=90,
        what="the maintenance window to wake the sleeper",
    )
    woke = time.time()
    assert synapse_processes(config)
    # Up for the window (longer than its idle time), then asleep by the normal rule.
    asleep = wait_asleep(platform, tenant)
    slept_at = datetime.fromisoformat(asleep["homeserver"]["asleep_since"]).timestamp()
    assert slept_at - woke >= MAINTENANCE_STAY_S - 2 > IDLE_S


def test_lifecycle_operations_and_reconcile_on_a_sleeping_tenant(
    sleepy_platform: RunningPlatform,
) -> None:
    platform = sleepy_platform
    tenant = sleepy_tenant(platform)
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    versions = f"{base(platform, tenant)}/_matrix/client/versions"
    wait_asleep(platform, tenant)

    # Reconcile neither wakes it nor counts it dead.
    restarted = ("c3_reconcile_actions_total", "action=homeserver.restarted")
    before = metrics(platform)
    subprocess.run(
        [sys.executable, "-m", "c3", "reconcile"],
        env={**os.environ, **platform.env, "C3_OPERATOR_TOKEN": platform.token},
        check=True,
        capture_output=True,
    )
    after = metrics(platform)
    assert after[("c3_reconcile_runs_total", "")] > before[("c3_reconcile_runs_total", "")]
    assert after[restarted] == before[restarted]
    assert not synapse_processes(config)
    assert tenant_of(platform, tenant["id"])["homeserver"]["state"] == "asleep"

    # Reconfigure renders the new config without waking it (the next wake starts with it).
    with platform.api() as api:
        patched = api.patch(f"/v1/tenants/{tenant['id']}", json={"max_upload_size_bytes": 2345678})
        assert patched.status_code == 200, patched.text
    operation = wait_operation(platform, patched.headers["location"])
    assert "config-rendered-asleep" in operation["steps_done"]
    assert not synapse_processes(config)
    assert "2345678" in config.read_text()

    # Export works on the stopped homeserver's files, without waking it.
    with platform.api() as api:
        exported = api.post(f"/v1/tenants/{tenant['id']}/export")
        assert exported.status_code == 202, exported.text
    wait_operation(platform, exported.json()["operation"]["url"], timeout=180)
    assert not synapse_processes(config)

    # Suspend: refused at the proxy, nothing runs; resume: awake and serving.
    with platform.api() as api:
        suspended = api.post(f"/v1/tenants/{tenant['id']}/suspend")
        assert suspended.status_code == 202, suspended.text
    wait_operation(platform, suspended.json()["operation"]["url"])
    assert tenant_of(platform, tenant["id"])["homeserver"]["state"] == "stopped"
    assert httpx.get(versions, timeout=30).status_code == 403
    assert not synapse_processes(config)
    with platform.api() as api:
        resumed = api.post(f"/v1/tenants/{tenant['id']}/resume")
        assert resumed.status_code == 202, resumed.text
    operation = wait_operation(platform, resumed.json()["operation"]["url"])
    homeserver = tenant_of(platform, tenant["id"])["homeserver"]
    # Awake, or already asleep again by the normal rule (3 s idle) after the resume started it.
    if homeserver["state"] != "awake":
        assert homeserver["state"] == "asleep", homeserver
        resumed_at = datetime.fromisoformat(operation["finished_at"])
        assert datetime.fromisoformat(homeserver["asleep_since"]) >= resumed_at, homeserver
    assert httpx.get(versions, timeout=30).status_code == 200

    # Delete a sleeping tenant.
    wait_asleep(platform, tenant)
    with platform.api() as api:
        deleted = api.delete(f"/v1/tenants/{tenant['id']}")
        assert deleted.status_code == 202, deleted.text
    wait_operation(platform, deleted.json()["operation"]["url"])
    assert tenant_of(platform, tenant["id"])["status"] == "deleted"
    assert not synapse_processes(config)
    assert httpx.get(versions, timeout=30).status_code == 404


def test_a_killed_homeserver_heals_through_the_proxy(sleepy_platform: RunningPlatform) -> None:
    platform = sleepy_platform
    tenant = sleepy_tenant(platform, idle_after_s=0)  # always on
    versions = f"{base(platform, tenant)}/_matrix/client/versions"
    assert httpx.get(versions, timeout=30).status_code == 200
    config = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
    (victim,) = synapse_processes(config)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed = time.monotonic()
    refusals: list[httpx.Response] = []

    async def serving() -> bool:
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.get(versions)
        if answer.status_code != 200:
            refusals.append(answer)
        return answer.status_code == 200

    asyncio.run(
        poll_async(serving, timeout=60, what="the proxy to heal the homeserver", interval=0.1)
    )
    took = time.monotonic() - killed
    print(f"killed -> serving again through the proxy: {took:.2f}s")
    print(f"  {wake_breakdown(platform, tenant)}")
    assert all(a.status_code in (502, 503) and a.headers.get("retry-after") for a in refusals)
    assert all(a.json()["errcode"] == "M_UNKNOWN" for a in refusals)
    assert len(synapse_processes(config)) == 1


def test_a_wake_does_not_wait_for_the_workers_processes(sleepy_platform: RunningPlatform) -> None:
    """The wake lane: with every process of `c3 worker` stopped (as when all are busy with
    reconciles, sleep passes and provisioning), a sleeping tenant's request is still answered."""
    platform = sleepy_platform
    tenant = sleepy_tenant(platform)
    token = login(platform, tenant)
    wait_asleep(platform, tenant)
    # The sleep pass holds the tenant's lease until its stop has returned, a moment after the
    # process is gone: frozen then, it would keep the lease (and so the wake) until it expires.
    client, keys = redis_of(platform)
    lease = keys.tenant_lease(tenant["id"])
    poll(lambda: not client.exists(lease), timeout=30, what="the sleep pass to let go")
    main = poll(lambda: worker_main(platform), timeout=60, what="a running worker")
    frozen = [main, *main.children()]
    for process in frozen:
        process.suspend()  # SIGSTOP: it takes no task, whatever its queue holds
    try:
        whoami = httpx.get(
            f"{base(platform, tenant)}/_matrix/client/v3/account/whoami",
            headers={"Authorization": f"Bearer {token}"},
            timeout=90,
        )
        lane_log = (platform.data_dir / "logs" / "wake-lane.log").read_text(errors="replace")
        assert whoami.status_code == 200, f"{whoami.text}\nwake lane:\n{lane_log[-3000:]}"
        assert f"tenant {tenant['id']}: homeserver woken in" in lane_log
        assert tenant_of(platform, tenant["id"])["homeserver"]["state"] == "awake"
    finally:
        for process in frozen:
            process.resume()
