"""Sleeping homeservers at scale (issue 16): the sleep pass stops idle homeservers side by side,
each still under its own lease, and the maintenance window wakes sleepers in bounded waves —
never more than C3_SLEEP_MAINTENANCE_CONCURRENCY at once, each once per window, also across a
worker restart. Stand-in homeserver processes (the fake backend, under the local backend's
start/stop code) on a database and Redis namespace of each test alone."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from platform_core.celery import celery_app, usage_check_slices
from platform_core.db import _sync_sessionmaker, sync_engine, task_session
from platform_core.migrate import upgrade
from platform_core.models import Plan, Tenant, TenantStatus, utcnow
from platform_core.routes import Route, host_field
from platform_core.settings import Settings, get_settings
from provisioner import hibernation, repository, steps
from provisioner.backends.fake import FakeBackend
from provisioner.lease import Lease
from provisioner.usage_reconciliation import next_slice, reconcile_usage_all
from tests.helpers.environment import clear_namespace, fresh_database
from tests.helpers.factories import make_tenant

IDLE_S = 1


def _reset_engines() -> None:
    get_settings.cache_clear()
    sync_engine().dispose()
    sync_engine.cache_clear()
    _sync_sessionmaker.cache_clear()


@pytest.fixture
def own_platform(platform_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """This test's own platform database, Redis namespace and data directory; the default
    plan sleeps after IDLE_S."""
    celery_app().conf.task_default_queue  # noqa: B018 — pin Celery to the session's queue
    overrides = {
        "C3_REDIS_NAMESPACE": f"{platform_env['C3_REDIS_NAMESPACE']}-hb{uuid.uuid4().hex[:6]}",
        "C3_DATA_DIR": str(tmp_path / "data"),
    }
    with fresh_database(tmp_path / "db") as database_url:
        upgrade(database_url)
        overrides["C3_DATABASE_URL"] = database_url
        saved = {name: os.environ[name] for name in overrides}
        os.environ.update(overrides)
        _reset_engines()
        with task_session() as session:
            plan = session.scalars(select(Plan).where(Plan.is_default.is_(True))).one()
            plan.limits = {**(plan.limits or {}), "idle_after_seconds": IDLE_S}
        try:
            yield
        finally:
            os.environ.update(saved)
            _reset_engines()
            clear_namespace(platform_env["C3_REDIS_URL"], overrides["C3_REDIS_NAMESPACE"])


def settings_with(**changes: Any) -> Settings:
    return get_settings().model_copy(update=changes)


def new_tenant(ctx: steps.Context, *, running: bool, asleep: bool = False) -> str:
    """An active tenant with a homeserver record and rendered config: started or not, marked
    asleep or not; no proxy has seen a request for a long time."""
    tenant_id = make_tenant(TenantStatus.ACTIVE)
    with task_session() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        hs = steps.ensure_homeserver_record(session, ctx, tenant)
        target = steps.target_for(ctx, tenant, repository.get_plan(session, tenant.plan_id), hs)
        if asleep:
            hs.asleep_since = utcnow()
    ctx.backend.render(target)
    if running:
        steps.ensure_running(ctx, target)
    ctx.redis.hset(ctx.keys.homeserver_last_seen, str(tenant_id), time.time() - 3600)
    return str(tenant_id)


def is_asleep(tenant_id: str) -> bool:
    with task_session() as session:
        hs = repository.get_homeserver(session, uuid.UUID(tenant_id))
        assert hs is not None
        return hs.asleep_since is not None


def poll(check: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# The sleep pass -------------------------------------------------------------------------------


class WatchedStops(FakeBackend):
    """The fake backend, whose stops report whether their tenant's lease was held from their
    start to their end and how many ran at once; the first ``together`` stops wait (bounded)
    until that many run together, so a pass stopping one after another is caught."""

    def __init__(self, ctx_keys: Any, redis_client: Any, data_dir: Path, together: int) -> None:
        super().__init__(data_dir)
        self.keys, self.redis = ctx_keys, redis_client
        self.together = together
        self.broken: set[str] = set()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.all_together = threading.Event()
        self.lease_held: dict[str, tuple[bool, bool]] = {}

    def sleep(self, tenant_id: str) -> None:
        lease = self.keys.tenant_lease(tenant_id)
        held_at_start = bool(self.redis.exists(lease))
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            if self.running >= self.together:
                self.all_together.set()
        try:
            self.all_together.wait(timeout=30)
            if tenant_id in self.broken:
                raise RuntimeError("this homeserver cannot be stopped")
            super().sleep(tenant_id)
        finally:
            with self.lock:
                self.running -= 1
            self.lease_held[tenant_id] = (held_at_start, bool(self.redis.exists(lease)))


Watching = TypeVar("Watching", bound=FakeBackend)


def watched(
    settings: Settings, backend: Callable[..., Watching], **options: Any
) -> tuple[steps.Context, Watching]:
    """A context whose fake backend (``backend(keys, redis, data_dir, **options)``) watches
    the pass through the platform's keys and Redis; and that backend."""
    plain = steps.Context(settings, FakeBackend(settings.data_path))
    watching = backend(plain.keys, plain.redis, settings.data_path, **options)
    return steps.Context(settings, watching), watching


def test_the_sleep_pass_stops_idle_homeservers_side_by_side_each_under_its_lease(
    own_platform: None,
) -> None:
    # A longer flush interval than the default (1 s): the pass's grace (interval + 0.5 s) is
    # when the request below must show up, however loaded the machine.
    settings = settings_with(sleep_stop_concurrency=3, usage_flush_interval_s=3.0)
    ctx, backend = watched(settings, WatchedStops, together=3)
    tenants = [new_tenant(ctx, running=True) for _ in range(7)]
    busy, used, broken = tenants[0], tenants[1], tenants[2]
    backend.broken.add(broken)
    held = Lease(ctx.redis, ctx.keys.tenant_lease(busy))
    assert held.acquire()  # an operation is running on this one

    with task_session() as session:
        used_host = host_field(session.get(Tenant, uuid.UUID(used)).server_name)  # type: ignore[union-attr]

    def a_request_while_it_falls_asleep() -> None:
        """A proxy forwarded a request for ``used`` before it saw the asleep route: it shows
        up in last_seen during the pass's grace."""

        def asleep_route() -> bool:
            raw = ctx.redis.hget(ctx.keys.routes, used_host)
            return raw is not None and Route.from_json(raw).asleep

        poll(asleep_route, timeout=60, what="the asleep route")
        ctx.redis.hset(ctx.keys.homeserver_last_seen, used, time.time())

    client = threading.Thread(target=a_request_while_it_falls_asleep, daemon=True)
    client.start()
    try:
        counts = hibernation.sleep_idle(ctx)
    finally:
        held.release()
        client.join(timeout=60)
    try:
        assert counts == {"slept": 4, "woke_meanwhile": 1, "failed": 1, "skipped_busy": 1}
        slept = [t for t in tenants if t not in (busy, used, broken)]
        assert not [t for t in slept if ctx.backend.is_running(t)]
        assert all(is_asleep(t) for t in slept)
        # Side by side, never more than C3_SLEEP_STOP_CONCURRENCY at once.
        assert backend.all_together.is_set() and backend.most == 3
        # Every stop ran under its tenant's lease, from its start to its end (the failed one
        # too); every lease is released after the pass.
        assert backend.lease_held == {t: (True, True) for t in [*slept, broken]}
        assert not [t for t in tenants if ctx.redis.exists(ctx.keys.tenant_lease(t))]
        # The one a request reached is awake and running; the busy one was left alone.
        assert not is_asleep(used) and ctx.backend.is_running(used)
        assert not is_asleep(busy) and ctx.backend.is_running(busy)
        # The next pass puts the used one to sleep once idle again, without the others.
        ctx.redis.hset(ctx.keys.homeserver_last_seen, used, time.time() - 3600)
        backend.together = 1
        assert hibernation.sleep_idle(ctx) == {"slept": 2}
    finally:
        ctx.backend.stop_all()


class SlowMarks(FakeBackend):
    """The fake backend, whose check for due work takes ``mark_s`` (a homeserver's admin API
    under load) and whose stops record the TTL left on their tenant's lease."""

    def __init__(self, ctx_keys: Any, redis_client: Any, data_dir: Path, mark_s: float) -> None:
        super().__init__(data_dir)
        self.keys, self.redis, self.mark_s = ctx_keys, redis_client, mark_s
        self.ttl_ms_at_stop: dict[str, int] = {}

    def due_work(self, tenant_id: str) -> dict[str, int] | None:
        time.sleep(self.mark_s)  # the work being simulated, not a wait for another thread
        return super().due_work(tenant_id)

    def sleep(self, tenant_id: str) -> None:
        self.ttl_ms_at_stop[tenant_id] = int(self.redis.pttl(self.keys.tenant_lease(tenant_id)))
        super().sleep(tenant_id)


def test_a_worker_dying_mid_pass_frees_its_tenants_within_the_operations_lease_ttl(
    own_platform: None,
) -> None:
    # The pass's leases have the operations' short TTL, so a worker killed mid-pass blocks a
    # sleeper's wakes for at most that long (C3_WAKE_TIMEOUT_S outlasts it), not two minutes;
    # and marking many tenants one after another (here longer than the TTL itself) never lets
    # an earlier one's lease expire before its stop.
    settings = settings_with(operation_lease_ttl_s=1.5, sleep_stop_concurrency=2)
    ctx, backend = watched(settings, SlowMarks, mark_s=0.4)
    tenants = [new_tenant(ctx, running=True) for _ in range(6)]  # marking takes ~2.4 s
    try:
        assert hibernation.sleep_idle(ctx) == {"slept": 6}
        assert sorted(backend.ttl_ms_at_stop) == sorted(tenants)
        # Every stop ran under its lease (an expired key reads -2), which was the short one.
        assert all(0 < ttl <= 1500 for ttl in backend.ttl_ms_at_stop.values()), (
            backend.ttl_ms_at_stop
        )
        assert not [t for t in tenants if ctx.redis.exists(ctx.keys.tenant_lease(t))]
    finally:
        ctx.backend.stop_all()


class PortTakenOnce(FakeBackend):
    """The fake backend, whose first wake exits at once the way Synapse does when another
    program took a port of its pair between the platform's check and its bind."""

    def __init__(self, ctx_keys: Any, redis_client: Any, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.wakes = 0

    def wake(self, target: Any) -> None:
        self.wakes += 1
        if self.wakes > 1:
            super().wake(target)

    def log_tail(self, tenant_id: str) -> str:
        return "socketserver.py, in server_bind | OSError: [Errno 98] Address already in use"


def test_a_wake_whose_port_was_taken_as_the_homeserver_started_starts_it_again(
    own_platform: None,
) -> None:
    # Seen at 1,000 tenants: the wake failed, and its client waited out C3_WAKE_TIMEOUT_S
    # (20 s) for a 503 before its retry woke the tenant.
    ctx, backend = watched(get_settings(), PortTakenOnce)
    tenant = new_tenant(ctx, running=False, asleep=True)
    try:
        assert hibernation.wake(ctx, tenant) == "woken"
        assert backend.wakes == 2
        assert ctx.backend.is_running(tenant) and not is_asleep(tenant)
    finally:
        ctx.backend.stop_all()


def test_a_sleeper_whose_port_is_in_the_ephemeral_range_wakes_on_a_port_outside_it(
    own_platform: None,
) -> None:
    # Homeservers made before C3_HOMESERVER_PORTS took ports from the kernel's ephemeral range,
    # where any outgoing connection can take them as they sleep: each moves at its next wake.
    backend = FakeBackend(get_settings().data_path)
    ctx = steps.Context(get_settings(), backend)
    tenant = new_tenant(ctx, running=False, asleep=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        ephemeral = sock.getsockname()[1]
    with task_session() as session:
        hs = repository.get_homeserver(session, uuid.UUID(tenant))
        assert hs is not None
        hs.port = ephemeral
    try:
        assert hibernation.wake(ctx, tenant) == "woken"
        with task_session() as session:
            hs = repository.get_homeserver(session, uuid.UUID(tenant))
            assert hs is not None and hs.port is not None
            assert hs.port != ephemeral and hs.port in backend.ports
            assert hs.upstream_url == f"http://127.0.0.1:{hs.port}"
    finally:
        ctx.backend.stop_all()


# Usage checks ----------------------------------------------------------------------------------


class CountedUsage(FakeBackend):
    """The fake backend, whose homeservers report no usage and note whose usage was read."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.read: list[str] = []

    def usage_counts(self, tenant_id: str) -> dict[str, int] | None:
        self.read.append(tenant_id)
        return {"messages": 0, "media_bytes": 0}


def test_the_usage_check_leaves_out_sleepers_it_already_checked_asleep(own_platform: None) -> None:
    # At 1,000 tenants the check opened every homeserver's database every 5 minutes, most of
    # them asleep and unchanged since the check before.
    backend = CountedUsage(get_settings().data_path)
    ctx = steps.Context(get_settings(), backend)
    awake = new_tenant(ctx, running=False)
    sleeper = new_tenant(ctx, running=False, asleep=True)
    report = reconcile_usage_all(ctx)
    assert {awake, sleeper} <= set(backend.read) and "skipped_asleep" not in report
    with task_session() as session:  # it fell asleep an hour before that check
        hs = repository.get_homeserver(session, uuid.UUID(sleeper))
        assert hs is not None
        hs.asleep_since = utcnow() - timedelta(hours=1)
    backend.read.clear()
    report = reconcile_usage_all(ctx)
    assert awake in backend.read and sleeper not in backend.read
    assert report["skipped_asleep"] == 1
    with task_session() as session:  # woken, then asleep again: checked again
        hs = repository.get_homeserver(session, uuid.UUID(sleeper))
        assert hs is not None
        hs.asleep_since = utcnow()
    backend.read.clear()
    reconcile_usage_all(ctx)
    assert {awake, sleeper} <= set(backend.read)


def test_the_periodic_usage_check_takes_the_tenants_in_slices_each_once_per_interval(
    own_platform: None,
) -> None:
    # One pass over every tenant at once was a burst of the worker's CPU while homeservers
    # were waking; with the default 5-minute interval a pass every 30 s checks the next tenth,
    # so ten passes (the interval) check every tenant exactly once.
    settings = get_settings().model_copy(update={"usage_reconcile_interval_s": 300.0})
    backend = CountedUsage(settings.data_path)
    ctx = steps.Context(settings, backend)
    tenants = {new_tenant(ctx, running=False) for _ in range(12)}
    for _ in range(10):
        reconcile_usage_all(ctx, slice_no=next_slice(ctx))
    assert Counter(backend.read) == Counter({tenant: 1 for tenant in tenants})
    backend.read.clear()
    reconcile_usage_all(ctx, slice_no=next_slice(ctx))  # the next interval starts over
    assert set(backend.read) < tenants
    # A short interval is one pass on every tenant, as before.
    assert [usage_check_slices(s) for s in (2.0, 45.0, 300.0)] == [1, 2, 10]


# The maintenance window -----------------------------------------------------------------------


class Worker:
    """Stands in for the Celery workers: the maintenance wakes a pass sends are queued, and
    run (the real wake task's body, starting stand-in homeservers) when asked."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.queue: list[tuple[str, float]] = []

    def send(self, tenant_id: str, stay_awake_s: float) -> None:
        self.sent.append(tenant_id)
        self.queue.append((tenant_id, stay_awake_s))

    def run(self, ctx: steps.Context) -> list[str]:
        queued, self.queue = self.queue, []
        return [hibernation.wake(ctx, t, stay_awake_s=stay) for t, stay in queued]


def slots(ctx: steps.Context) -> int:
    return int(ctx.redis.hlen(ctx.keys.maintenance_slots))


def maintenance_settings(concurrency: int, stay_s: float) -> Settings:
    return settings_with(
        sleep_maintenance_concurrency=concurrency,
        sleep_maintenance_stay_s=stay_s,
        sleep_check_interval_s=1.0,
        wake_timeout_s=1.0,
    )


def test_the_maintenance_window_wakes_every_sleeper_once_never_more_than_the_bound(
    own_platform: None,
) -> None:
    settings = maintenance_settings(concurrency=3, stay_s=1.0)
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    sleepers = [new_tenant(ctx, running=False, asleep=True) for _ in range(8)]
    worker = Worker()
    try:
        assert hibernation.wake_for_maintenance(ctx, "w1", send=worker.send) == 3
        # A client wakes one after the window opened (and keeps using it): it needs no
        # maintenance wake.
        used = next(t for t in sleepers if t not in worker.sent)
        assert hibernation.wake(ctx, used) == "woken"
        most_awake = 0
        outcomes: Counter[str] = Counter()

        def window_done() -> bool:
            nonlocal most_awake
            ctx.redis.hset(ctx.keys.homeserver_last_seen, used, time.time())  # in use
            hibernation.wake_for_maintenance(ctx, "w1", send=worker.send)
            assert slots(ctx) <= 3
            outcomes.update(worker.run(ctx))
            awake = [t for t in sleepers if t != used and ctx.backend.is_running(t)]
            most_awake = max(most_awake, len(awake))
            ctx.redis.hset(ctx.keys.homeserver_last_seen, used, time.time())  # still in use
            hibernation.sleep_idle(ctx)
            return not worker.queue and slots(ctx) == 0 and len(set(worker.sent)) >= 7

        poll(window_done, timeout=180, what="the window to wake every sleeper")
        # Each sleeper once (the one a client woke: not at all), at most 3 up at once, and
        # the bound was used.
        assert sorted(worker.sent) == sorted(t for t in sleepers if t != used)
        assert most_awake == 3
        assert outcomes == {"woken": 7}
        # Each fell asleep again by the normal rule after its stay.
        poll(
            lambda: (
                hibernation.sleep_idle(ctx) is not None
                and all(is_asleep(t) for t in sleepers if t != used)
            ),
            timeout=60,
            what="the woken sleepers to sleep again",
        )
        # The window never opens again: another pass (beat's next, a redelivery) wakes none.
        assert hibernation.wake_for_maintenance(ctx, "w1", send=worker.send) == 0
    finally:
        ctx.backend.stop_all()


def test_a_slot_is_freed_when_a_client_uses_the_homeserver_or_its_wake_fails(
    own_platform: None,
) -> None:
    settings = maintenance_settings(concurrency=1, stay_s=600.0)
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    first, second, third = (new_tenant(ctx, running=False, asleep=True) for _ in range(3))
    worker = Worker()
    try:
        assert hibernation.wake_for_maintenance(ctx, "w1", send=worker.send) == 1
        assert worker.run(ctx) == ["woken"]
        (woken,) = worker.sent
        # Up for its stay (600 s): the bound holds the others back.
        assert hibernation.wake_for_maintenance(ctx, "w1", send=worker.send) == 0
        assert ctx.backend.is_running(woken) and slots(ctx) == 1
        # A client uses it: it is awake for the client now, not counted for maintenance.
        ctx.redis.hset(ctx.keys.homeserver_last_seen, woken, time.time())
        assert hibernation.wake_for_maintenance(ctx, "w1", send=worker.send) == 1
        assert ctx.backend.is_running(woken)
        # The next wake cannot take its tenant's lease (an operation runs): busy, and its slot
        # is freed at once rather than held for the stay.
        nxt = worker.sent[-1]
        held = Lease(ctx.redis, ctx.keys.tenant_lease(nxt))
        assert held.acquire()
        try:
            assert worker.run(ctx) == ["busy"]
        finally:
            held.release()
        assert slots(ctx) == 0
        assert hibernation.wake_for_maintenance(ctx, "w1", send=worker.send) == 1
        assert worker.run(ctx) == ["woken"]
        assert sorted(worker.sent) == sorted([first, second, third])
    finally:
        ctx.backend.stop_all()


def test_a_worker_restart_mid_window_resumes_it_without_waking_anyone_twice(
    own_platform: None,
) -> None:
    settings = maintenance_settings(concurrency=2, stay_s=1.0)
    before = steps.Context(settings, FakeBackend(settings.data_path))
    sleepers = [new_tenant(before, running=False, asleep=True) for _ in range(5)]
    worker = Worker()
    try:
        assert hibernation.wake_for_maintenance(before, "w1", send=worker.send) == 2
        # The worker dies before it acknowledged the pass: a new worker process (its own
        # connections and backend) gets it again, twice at once even. Nothing is sent again.
        after = steps.Context(settings, FakeBackend(settings.data_path))
        again = list[int]()
        passes = [
            threading.Thread(
                target=lambda: again.append(
                    hibernation.wake_for_maintenance(after, "w1", send=worker.send)
                )
            )
            for _ in range(2)
        ]
        for thread in passes:
            thread.start()
        for thread in passes:
            thread.join(timeout=60)
        assert again == [0, 0]
        # Its wakes run; one is redelivered too and finds the homeserver awake: it keeps the
        # slot (the homeserver is awake for maintenance all the same).
        assert worker.run(after) == ["woken", "woken"]
        assert hibernation.wake(after, worker.sent[0], stay_awake_s=1.0) == "already_awake"
        assert slots(after) == 2

        def window_done() -> bool:
            hibernation.wake_for_maintenance(after, "w1", send=worker.send)
            assert slots(after) <= 2
            worker.run(after)
            hibernation.sleep_idle(after)
            return not worker.queue and slots(after) == 0 and len(worker.sent) >= 5

        poll(window_done, timeout=180, what="the window to resume and finish")
        assert sorted(worker.sent) == sorted(sleepers)
    finally:
        before.backend.stop_all()


def test_the_daily_window_is_due_from_its_hour_to_midnight_and_passes_run_every_interval() -> None:
    at = lambda h, m: datetime(2026, 12, 4, h, m, tzinfo=UTC)  # noqa: E731
    assert hibernation._due_window(3, at(2, 59)) is None
    assert hibernation._due_window(3, at(3, 0)) == "2026-12-04"
    assert hibernation._due_window(3, at(23, 59)) == "2026-12-04"
    assert hibernation._due_window(None, at(12, 0)) is None
    entry = celery_app().conf.beat_schedule["wake-for-maintenance"]
    assert entry["schedule"] == get_settings().sleep_check_interval_s
