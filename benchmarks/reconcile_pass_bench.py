"""Reconcile-pass benchmark: how long one ``provisioner.reconciler.reconcile_all`` pass takes over
N active tenants whose homeservers sleep (and whose routes are right), the common case of a node
of mostly sleepers, and M deleted tenants whose teardown is done (they only accumulate): tenants
for whom the pass has nothing to repair.

One run, in this process (no platform services, no homeserver processes: a sleeper has none):

1. a fresh platform database (PostgreSQL through ``--database-url``, dropped at the end; else
   SQLite), a Redis namespace of its own (``C3_REDIS_URL``, default the local Redis);
2. ``--tenants`` active tenants, each with a homeserver record as the provisioner makes it
   (secrets encrypted, a port), marked asleep with its upstream recorded; ``--deleted``
   deleted tenants, deleted 60 days ago (past the archives' retention), no route, no process;
3. one pass that publishes the sleepers' routes and records the deleted tenants' archives as
   purged (not timed), then ``--passes`` timed passes; prints
   each, their median and the median per tenant, and the pass's counts (``{}``: nothing done).

Run it with ``PYTHONPATH`` pointing at another export of ``services`` (``git archive <commit>
services``) to time older code.

Usage (from the repository root)::

    PYTHONPATH=services:. .venv/bin/python benchmarks/reconcile_pass_bench.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/postgres --tenants 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta

from sqlalchemy import select

from benchmarks.harness import add_tenant, in_process_environment, stop_on_sigterm


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--deleted", type=int, default=0)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--database-url", help="PostgreSQL admin URL (else SQLite)")
    return parser.parse_args()


def main() -> int:
    stop_on_sigterm()
    args = parse_args()
    with in_process_environment(args.database_url, "fake", "reconcile-bench"):
        run(args)
    return 0


def run(args: argparse.Namespace) -> None:
    # Imported once the environment names this run's database, Redis and data directory.
    from platform_core.db import task_session
    from platform_core.migrate import upgrade
    from platform_core.models import Plan, TenantStatus, utcnow
    from platform_core.settings import get_settings
    from provisioner import steps
    from provisioner.backends.fake import FakeBackend
    from provisioner.reconciler import reconcile_all

    upgrade(os.environ["C3_DATABASE_URL"])
    settings = get_settings()
    ctx = steps.Context(settings, FakeBackend(settings.data_path))
    with task_session() as session:
        plan = session.scalars(select(Plan).where(Plan.is_default.is_(True))).one()
        for _ in range(args.tenants):
            tenant = add_tenant(session, plan.id, TenantStatus.ACTIVE, prefix="r")
            hs = steps.ensure_homeserver_record(session, ctx, tenant)
            hs.upstream_url = f"http://127.0.0.1:{hs.port}"
            hs.asleep_since = utcnow()
        for _ in range(args.deleted):
            long_ago = utcnow() - timedelta(days=60)
            add_tenant(session, plan.id, TenantStatus.DELETED, prefix="d", deleted_at=long_ago)
    first = reconcile_all(ctx)  # publishes every sleeper's route, purges the deleted ones'
    print(
        f"{args.tenants} sleeping tenants, {args.deleted} deleted; first pass {first}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    times = []
    for number in range(1, args.passes + 1):
        started = time.perf_counter()
        counts = reconcile_all(ctx)
        took = time.perf_counter() - started
        times.append(took)
        print(f"  pass {number}: {took * 1000:8.1f} ms  {counts}", flush=True)
    median = statistics.median(times)
    print(
        f"median pass {median * 1000:.1f} ms, "
        f"{median / max(1, args.tenants + args.deleted) * 1e6:.0f} us per tenant",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
