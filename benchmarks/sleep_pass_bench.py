"""Sleep-pass benchmark: how long one pass of ``provisioner.hibernation.sleep_idle`` takes to put
N idle homeservers to sleep, for each ``--concurrency`` (``C3_SLEEP_STOP_CONCURRENCY``).

One run, in this process (no platform services):

1. a fresh platform database (PostgreSQL through ``--database-url``, dropped at the end; else
   SQLite), a Redis namespace of its own (``C3_REDIS_URL``, default the local Redis), a
   temporary data directory; the default plan sleeps after 1 s;
2. ``--tenants`` active tenants, each with a homeserver rendered as the provisioner renders it:
   real Synapse (``--backend local``, SQLite per tenant) or the stand-in homeserver
   (``--backend fake``) whose stop also waits ``--stop-delay`` seconds (a stand-in for
   Synapse's own shutdown time: say so when quoting such numbers);
3. per round (each ``--concurrency``, ``--rounds`` times, interleaved): starts every homeserver
   and waits for ``/health`` and for no work due (a new Synapse's background updates), marks
   them idle for an hour, runs one sleep pass and times it,
   and each ``Backend.sleep`` (SIGTERM until the process is gone) inside it.

The pass includes its grace (``C3_USAGE_FLUSH_INTERVAL_S`` + 0.5 s, 1.5 s by default), in which
requests the proxies already forwarded can cancel a sleep. Run it with ``PYTHONPATH`` pointing
at another export of ``services`` (``git archive <commit> services``) to time older code: the
settings it does not know are ignored.

Usage (from the repository root)::

    PYTHONPATH=services:. .venv/bin/python benchmarks/sleep_pass_bench.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/postgres --tenants 16 \\
        --concurrency 1 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any

from sqlalchemy import select

from benchmarks.harness import add_tenant, in_process_environment, stop_on_sigterm


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backend", choices=["local", "fake"], default="local")
    parser.add_argument("--stop-delay", type=float, default=0.0, help="fake backend only")
    parser.add_argument("--database-url", help="PostgreSQL admin URL (else SQLite)")
    return parser.parse_args()


def main() -> int:
    stop_on_sigterm()
    args = parse_args()
    with in_process_environment(args.database_url, args.backend, "sleep-bench"):
        run(args)
    return 0


def run(args: argparse.Namespace) -> None:
    # Imported once the environment names this run's database, Redis and data directory.
    from platform_core.db import task_session
    from platform_core.migrate import upgrade
    from platform_core.models import Plan, Tenant, TenantStatus
    from platform_core.settings import get_settings
    from provisioner import hibernation, repository, steps
    from provisioner.backends.fake import FakeBackend
    from provisioner.backends.local import LocalBackend

    upgrade(os.environ["C3_DATABASE_URL"])
    settings = get_settings()
    stops: list[float] = []
    lock = threading.Lock()
    base = LocalBackend if args.backend == "local" else FakeBackend

    class TimedStops(base):  # type: ignore[valid-type,misc]
        def sleep(self, tenant_id: str) -> None:
            started = time.monotonic()
            super().sleep(tenant_id)
            if args.stop_delay:
                time.sleep(args.stop_delay)
            with lock:
                stops.append(time.monotonic() - started)

    backend = TimedStops(settings.data_path, python=settings.synapse_python)
    with task_session() as session:
        plan = session.scalars(select(Plan).where(Plan.is_default.is_(True))).one()
        plan.limits = {**(plan.limits or {}), "idle_after_seconds": 1}
        ids = []
        for _ in range(args.tenants):
            ids.append(add_tenant(session, plan.id, TenantStatus.ACTIVE, prefix="s").id)
    ctx = steps.Context(settings, backend)
    targets = []
    for tenant_id in ids:
        with task_session() as session:
            tenant = session.get(Tenant, tenant_id)
            assert tenant is not None
            hs = steps.ensure_homeserver_record(session, ctx, tenant)
            targets.append(
                steps.target_for(ctx, tenant, repository.get_plan(session, tenant.plan_id), hs)
            )
    for target in targets:
        backend.render(target)
    print(
        f"{args.tenants} tenants, backend {args.backend}"
        + (f" (+{args.stop_delay}s per stop)" if args.stop_delay else "")
        + f", load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    try:
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                one_round(ctx, settings, targets, ids, concurrency, stops, hibernation)
    finally:
        backend.stop_all()


def one_round(
    ctx: Any,
    settings: Any,
    targets: list[Any],
    ids: list[uuid.UUID],
    concurrency: int,
    stops: list[float],
    hibernation: Any,
) -> None:
    from platform_core.db import task_session
    from platform_core.errors import TemporaryError
    from provisioner import repository, steps

    with task_session() as session:
        for i, tenant_id in enumerate(ids):
            hs = repository.get_homeserver(session, tenant_id)
            tenant = repository.get_tenant(session, tenant_id)
            assert hs is not None and tenant is not None
            hs.asleep_since = None
            # As a wake does: a port another program took meanwhile is replaced.
            steps.ensure_port_usable(session, ctx, hs)
            plan = repository.get_plan(session, tenant.plan_id)
            targets[i] = steps.target_for(ctx, tenant, plan, hs)
            ctx.backend.render(targets[i])
    started = time.monotonic()
    for target in targets:
        ctx.backend.start(target)
    for i, target in enumerate(targets):
        for attempt in range(3):
            try:
                steps.wait_healthy(ctx, target)
                break
            except TemporaryError:
                # Ports come from the ephemeral range: on a busy machine a connection may take
                # one between the check and Synapse's bind. Another port, as a wake's retry.
                if attempt == 2:
                    raise
                with task_session() as session:
                    hs = repository.get_homeserver(session, ids[i])
                    tenant = repository.get_tenant(session, ids[i])
                    assert hs is not None and tenant is not None
                    hs.port = ctx.backend.allocate_port(repository.taken_ports(session))
                    plan = repository.get_plan(session, tenant.plan_id)
                    target = targets[i] = steps.target_for(ctx, tenant, plan, hs)
                ctx.backend.render(target)
                ctx.backend.start(target)
    up = time.monotonic() - started
    # A new Synapse runs its background updates in its first minutes, which keeps it awake
    # (hibernation: due work); an idle tenant's homeserver has none.
    deadline = time.monotonic() + 900
    while any((due := ctx.backend.due_work(str(t))) and any(due.values()) for t in ids):
        if time.monotonic() > deadline:
            raise SystemExit("homeservers still have work due after 900 s")
        time.sleep(1)
    ctx.redis.hset(ctx.keys.homeserver_last_seen, mapping={str(t): time.time() - 3600 for t in ids})
    stops.clear()
    run_ctx = steps.Context(settings.model_copy(update={"sleep_stop_concurrency": concurrency}))
    run_ctx._backend = ctx.backend
    began = time.monotonic()
    counts = hibernation.sleep_idle(run_ctx)
    took = time.monotonic() - began
    running = sum(ctx.backend.is_running(str(t)) for t in ids)
    if not stops:
        raise SystemExit(f"nothing was stopped: {counts}")
    print(
        f"concurrency {concurrency:>2}: pass {took:6.2f}s ({counts}); stops: median "
        f"{statistics.median(stops):.2f}s, max {max(stops):.2f}s, sum {sum(stops):.2f}s; "
        f"still running {running}; (all started in {up:.1f}s; load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
